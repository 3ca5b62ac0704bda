"""Which teacher layer each student layer learns from.

Layers are numbered as in the TinyBERT paper: 0 is the embedding layer, 1..N the Transformer layers.
Uniform mapping (paper: g(m) = m * N / M): a 12-layer teacher and a 4-layer student give
1->3, 2->6, 3->9, 4->12, plus embeddings 0->0. Depths that do not divide are rounded half up
(12 -> 5 gives 2, 5, 7, 10, 12). Explicit lists may repeat a teacher layer (many-to-one) or a
student layer (one student layer against several teacher layers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pipeline.errors import ConfigError


def teacher_layer_for(student_layer: int, teacher_depth: int, student_depth: int) -> int:
    """Uniform mapping g(m) = round(m * N / M), rounding half up, never below layer 1."""
    return max(1, math.floor(student_layer * teacher_depth / student_depth + 0.5))


@dataclass(frozen=True)
class LayerMap:
    """(student layer, teacher layer) pairs for Transformer layers, and whether embeddings map 0->0."""

    pairs: tuple[tuple[int, int], ...]
    embeddings: bool = True

    @classmethod
    def uniform(cls, teacher_depth: int, student_depth: int, embeddings: bool = True) -> LayerMap:
        if teacher_depth < 1 or student_depth < 1:
            raise ConfigError(f"mapping: depths must be >= 1, got teacher {teacher_depth}, student {student_depth}")
        pairs = tuple(
            (m, teacher_layer_for(m, teacher_depth, student_depth)) for m in range(1, student_depth + 1)
        )
        return cls(pairs, embeddings)

    @classmethod
    def from_teacher_layers(cls, teacher_layers: list[int], embeddings: bool = True) -> LayerMap:
        """Student layer m (1-based) takes teacher_layers[m - 1]."""
        return cls(tuple((m, t) for m, t in enumerate(teacher_layers, start=1)), embeddings)

    def validate(self, teacher_depth: int, student_depth: int) -> LayerMap:
        """Check every pair against the models' real depths; returns self for chaining."""
        if not self.pairs and not self.embeddings:
            raise ConfigError("mapping: maps no layer at all (no pairs and embeddings off)")
        for student_layer, teacher_layer in self.pairs:
            if not 1 <= student_layer <= student_depth:
                raise ConfigError(
                    f"mapping: student layer {student_layer} is out of range: the student has "
                    f"{student_depth} layers (valid 1..{student_depth}; 0 is the embedding layer)"
                )
            if not 1 <= teacher_layer <= teacher_depth:
                raise ConfigError(
                    f"mapping: teacher layer {teacher_layer} is out of range: the teacher has "
                    f"{teacher_depth} layers (valid 1..{teacher_depth}; 0 is the embedding layer)"
                )
        return self

    @property
    def student_layers(self) -> list[int]:
        return sorted({s for s, _ in self.pairs})

    @property
    def teacher_layers(self) -> list[int]:
        return sorted({t for _, t in self.pairs})

    def describe(self) -> str:
        """One line for logs, e.g. 'emb 0->0, 1->3, 2->6, 3->9, 4->12' (student->teacher)."""
        parts = ["emb 0->0"] if self.embeddings else []
        parts += [f"{s}->{t}" for s, t in self.pairs]
        return ", ".join(parts)


def middle_layer(depth: int) -> int:
    """FitNets' guided (student) or hint (teacher) layer: the middle one, (depth + 1) // 2, 1-based
    (2 -> 1, 3 -> 2, 4 -> 2, 12 -> 6)."""
    return (depth + 1) // 2


def build_layer_map(
    teacher_depth: int,
    student_depth: int,
    teacher_layers: list[int] | None = None,
    pairs: list[tuple[int, int]] | None = None,
    embeddings: bool = True,
) -> LayerMap:
    """The mapping a config asks for (uniform unless a list is given), validated against real depths."""
    if teacher_layers is not None and pairs is not None:
        raise ConfigError("mapping: give either teacher_layers or pairs, not both")
    if teacher_layers is not None:
        if len(teacher_layers) != student_depth:
            raise ConfigError(
                f"mapping.teacher_layers: has {len(teacher_layers)} entries but the student has "
                f"{student_depth} layers (one teacher layer per student layer; use pairs for partial maps)"
            )
        layer_map = LayerMap.from_teacher_layers(list(teacher_layers), embeddings)
    elif pairs is not None:
        layer_map = LayerMap(tuple((int(s), int(t)) for s, t in pairs), embeddings)
    else:
        layer_map = LayerMap.uniform(teacher_depth, student_depth, embeddings)
    return layer_map.validate(teacher_depth, student_depth)
