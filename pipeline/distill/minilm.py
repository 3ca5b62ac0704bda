"""MiniLMv2 general distillation (Wang et al. 2021): self-attention relations of one teacher layer
taught to the student's last layer.

For each kind of vector (queries, keys, values) both sides' per-head vectors are concatenated and
re-split into R relation heads, and the student learns KL(teacher relation || student relation)
(`losses.relation_kl`). Nothing compares widths or head counts directly, so no projections are needed
and any teacher shape fits any student shape, as long as R divides both widths.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.distill.losses import relation_kl
from pipeline.errors import ConfigError

RELATIONS = ("qq", "kk", "vv")


@dataclass(frozen=True)
class MiniLMv2Config:
    """`teacher_layer`: the teacher layer whose relations are taught (default the last; the paper takes an
    upper-middle layer of large teachers); `relation_heads`: R; `qq`, `kk`, `vv`: the weight of each
    relation (equal by default; 0 turns one off)."""

    teacher_layer: int | None = None  # the teacher layer whose relations are taught (null: the last)
    relation_heads: int = 48  # R, the number of relation heads the Q/K/V vectors are split into
    qq: float = 1.0  # weight of the query-query relation
    kk: float = 1.0  # weight of the key-key relation
    vv: float = 1.0  # weight of the value-value relation

    def __post_init__(self):
        if self.relation_heads < 1:
            raise ConfigError(f"minilmv2.relation_heads: must be >= 1, got {self.relation_heads}")
        for name in RELATIONS:
            if getattr(self, name) < 0:
                raise ConfigError(f"minilmv2.{name}: weight must be >= 0, got {getattr(self, name)}")
        if not any(getattr(self, name) for name in RELATIONS):
            raise ConfigError("minilmv2: qq, kk and vv are all 0, nothing would be learned")


def check_relation_shapes(cfg: MiniLMv2Config, teacher_config, student_config) -> int:
    """The teacher layer (1-based) after checking it exists and that R divides both attention widths."""
    depth = teacher_config.num_hidden_layers
    layer = cfg.teacher_layer or depth
    if not 1 <= layer <= depth:
        raise ConfigError(f"minilmv2.teacher_layer: {layer} is out of range: the teacher has {depth} layers")
    for role, config in (("teacher", teacher_config), ("student", student_config)):
        width = config.hidden_size  # all heads' q/k/v concatenated: heads x head width = hidden size in BERT
        if width % cfg.relation_heads:
            divisors = [r for r in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
                        if teacher_config.hidden_size % r == 0 and student_config.hidden_size % r == 0]
            raise ConfigError(f"minilmv2.relation_heads: {cfg.relation_heads} does not divide the {role}'s width "
                              f"{width}; values dividing both widths: {divisors}")
    return layer


def relation_terms(student_qkv, teacher_qkv, token_mask: torch.Tensor, cfg: MiniLMv2Config) -> dict:
    """{"qq", "kk", "vv" (those with a weight), "loss": their weighted sum}."""
    terms = {name: relation_kl(s, t, token_mask, cfg.relation_heads)
             for name, s, t in zip(RELATIONS, student_qkv, teacher_qkv) if getattr(cfg, name) > 0}
    terms["loss"] = sum(getattr(cfg, name) * value for name, value in terms.items())
    return terms
