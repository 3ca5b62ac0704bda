"""Learnable projections from the student's width to the teacher's (TinyBERT's W_e and W_h).

One linear map for the embedding layer and one per mapped student layer (the paper's separate
matrices; TinyBERT's code shares a single `fit_dense`). They train with the student, are saved next
to it (`projections.safetensors` + `projections.json`) and are loaded back by stage two.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from pipeline.config import atomic_write_text
from pipeline.errors import ModelError

WEIGHTS_FILE = "projections.safetensors"
META_FILE = "projections.json"


class Projections(nn.Module):
    """W_e and W_h_m: student width -> teacher width. With `linear=False` they are identities."""

    def __init__(self, student_width: int, teacher_width: int, student_layers: list[int], linear: bool):
        super().__init__()
        if not linear and student_width != teacher_width:
            raise ModelError(
                f"student width {student_width} differs from teacher width {teacher_width}: "
                "projections are needed (set loss.projection: auto or linear)"
            )
        self.student_width = student_width
        self.teacher_width = teacher_width
        self.student_layers = list(student_layers)
        self.linear = linear
        self.embedding = self._make() if linear else nn.Identity()
        self.hidden = nn.ModuleDict({str(m): self._make() if linear else nn.Identity() for m in student_layers})

    def _make(self) -> nn.Linear:
        layer = nn.Linear(self.student_width, self.teacher_width)
        nn.init.normal_(layer.weight, std=0.02)
        nn.init.zeros_(layer.bias)
        return layer

    def project_embeddings(self, student_embeddings: torch.Tensor) -> torch.Tensor:
        return self.embedding(student_embeddings)

    def project_hidden(self, student_layer: int, hidden: torch.Tensor) -> torch.Tensor:
        return self.hidden[str(student_layer)](hidden)

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        meta = {
            "student_width": self.student_width,
            "teacher_width": self.teacher_width,
            "student_layers": self.student_layers,
            "linear": self.linear,
        }
        if self.linear:
            tmp = directory / f".{WEIGHTS_FILE}.tmp"
            save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, str(tmp))
            tmp.replace(directory / WEIGHTS_FILE)
        atomic_write_text(directory / META_FILE, json.dumps(meta, indent=2))

    @classmethod
    def load(cls, directory: str | Path) -> Projections | None:
        """The projections saved beside a student, or None when the directory has none."""
        directory = Path(directory)
        if not (directory / META_FILE).is_file():
            return None
        meta = json.loads((directory / META_FILE).read_text())
        projections = cls(meta["student_width"], meta["teacher_width"], meta["student_layers"], meta["linear"])
        if projections.linear:
            projections.load_state_dict(load_file(str(directory / WEIGHTS_FILE)))
        return projections


def build_projections(
    student_width: int, teacher_width: int, student_layers: list[int], mode: str, previous: Projections | None
) -> Projections:
    """Projections for a run: reuse `previous` (from the student's checkpoint) when its shapes fit."""
    linear = mode == "linear" or (mode == "auto" and student_width != teacher_width)
    fresh = Projections(student_width, teacher_width, student_layers, linear)
    if previous is None or not linear or not previous.linear:
        return fresh
    if (previous.student_width, previous.teacher_width) != (student_width, teacher_width):
        return fresh
    state = fresh.state_dict()
    for key, value in previous.state_dict().items():
        if key in state and state[key].shape == value.shape:
            state[key] = value
    fresh.load_state_dict(state)
    return fresh
