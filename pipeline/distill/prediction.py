"""Prediction-layer distillation (TinyBERT step 2, Hinton et al. 2015; Tang et al. 2019 for logits MSE).

Pure functions: the per-batch loss terms of a student's logits against a teacher's logits (or an
ensemble of teachers' logits, MT-DNN style) and/or gold labels, and the schedule of the hard-label weight.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from pipeline.distill.losses import (
    ensemble_targets,
    hard_cross_entropy,
    logits_mse,
    soft_cross_entropy,
    soft_cross_entropy_to_probs,
)
from pipeline.errors import ConfigError


@dataclass(frozen=True)
class PredictionLossConfig:
    """loss = soft term + hard_weight(t) * hard CE.

    kind: `soft_ce` (cross-entropy of the softened distributions at `temperature`, times T^2 when
    `scale_by_t2`; `scale_by_t2: false` at T=1 is TinyBERT's form) or `mse` (logits MSE, Tang et al.).
    hard_weight: alpha of the gold-label cross-entropy (0: off, as in TinyBERT); hard_schedule makes
    it `constant`, `linear_decay` (alpha -> 0) or `linear_increase` (0 -> alpha) over the steps.
    regression_target: MSE to the teacher's prediction (`teacher`) or to the gold score (`gold`,
    as TinyBERT does for STS-B).
    ensemble: how several teachers' outputs make one soft target (MT-DNN, Liu et al. 2019):
    `probabilities` averages the softened probabilities softmax(z_k/T); `logits` averages the raw
    logits z_k and softens the mean. `kind: mse` and regression always average logits (predictions).
    """

    # soft_ce (softened cross-entropy) or mse (logits MSE, Tang et al.)
    kind: Literal["soft_ce", "mse"] = "soft_ce"
    temperature: float = 1.0  # T of the softened distributions
    scale_by_t2: bool = True  # multiply the soft loss by T squared
    hard_weight: float = 0.0  # alpha of the gold-label cross-entropy (0: off)
    # alpha over the steps: constant, linear_decay (to 0) or linear_increase (from 0)
    hard_schedule: Literal["constant", "linear_decay", "linear_increase"] = "constant"
    # regression: MSE to the teacher's prediction or to the gold score
    regression_target: Literal["teacher", "gold"] = "teacher"
    # several teachers: average softened probabilities or raw logits
    ensemble: Literal["probabilities", "logits"] = "probabilities"

    def __post_init__(self):
        if self.temperature <= 0:
            raise ConfigError(f"prediction.loss.temperature: must be > 0, got {self.temperature}")
        if self.hard_weight < 0:
            raise ConfigError(f"prediction.loss.hard_weight: must be >= 0, got {self.hard_weight}")

    @property
    def needs_labels(self) -> bool:
        return self.hard_weight > 0 or self.regression_target == "gold"


def hard_weight_at(cfg: PredictionLossConfig, progress: float) -> float:
    """The hard-label weight when a fraction `progress` (0..1) of the steps is done."""
    if cfg.hard_schedule == "linear_decay":
        return cfg.hard_weight * (1.0 - progress)
    if cfg.hard_schedule == "linear_increase":
        return cfg.hard_weight * progress
    return cfg.hard_weight


def span_rows(logits: torch.Tensor, position_mask: torch.Tensor) -> torch.Tensor:
    """QA logits (B, L, 2) -> (2B, L): the start rows then the end rows, positions outside
    `position_mask` ([CLS] and the context) at the float minimum, so they get probability 0."""
    rows = torch.cat([logits[..., 0], logits[..., 1]], dim=0).float()
    allowed = torch.cat([position_mask, position_mask], dim=0).bool()
    return rows.masked_fill(~allowed, torch.finfo(torch.float32).min)


def prediction_terms(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | list[torch.Tensor] | None,
    labels: torch.Tensor | None,
    task_type: str,
    cfg: PredictionLossConfig,
    progress: float,
    token_mask: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Named loss terms and their weighted sum under "loss".

    Classification: logits (B, C); token tasks: (B, L, C) with `token_mask` (B, L) selecting non-pad
    tokens for the soft term (labels of -100 are skipped by the hard term); regression: (B, 1);
    extractive QA: (B, L, 2) start and end logits, `token_mask` the positions a span may use ([CLS] and
    the context), labels (B, 2) gold start and end: the terms are the classification terms over
    positions, averaged over the start and the end rows.
    `teacher_logits` is one teacher's logits or a list, one per teacher of an ensemble, all in the
    student's label order; a list of one is the single teacher.
    """
    if isinstance(teacher_logits, list) and len(teacher_logits) == 1:
        teacher_logits = teacher_logits[0]
    if task_type == "qa":  # a softmax over positions, for the start and for the end: rows of span_rows
        student_logits = span_rows(student_logits, token_mask)
        if teacher_logits is not None:
            teacher_logits = ([span_rows(t, token_mask) for t in teacher_logits] if isinstance(teacher_logits, list)
                              else span_rows(teacher_logits, token_mask))
        labels = None if labels is None else labels.t().reshape(-1)
        task_type, token_mask = "classification", None
    ensemble = isinstance(teacher_logits, list)
    terms: dict[str, torch.Tensor] = {}
    mask = token_mask if task_type == "token" else None
    if task_type == "regression":
        if cfg.regression_target == "gold":
            terms["mse"] = logits_mse(student_logits, labels.float().reshape(-1, 1))
        else:
            target = ensemble_targets(teacher_logits, 1.0, "logits") if ensemble else teacher_logits
            terms["mse"] = logits_mse(student_logits, target)
        terms["loss"] = terms["mse"]
        return terms
    if cfg.kind == "mse":
        target = ensemble_targets(teacher_logits, 1.0, "logits") if ensemble else teacher_logits
        terms["logits_mse"] = logits_mse(student_logits, target, mask)
    elif ensemble and cfg.ensemble == "probabilities":
        target = ensemble_targets(teacher_logits, cfg.temperature, "probabilities")
        terms["soft_ce"] = soft_cross_entropy_to_probs(student_logits, target, cfg.temperature, cfg.scale_by_t2, mask)
    else:
        target = ensemble_targets(teacher_logits, 1.0, "logits") if ensemble else teacher_logits
        terms["soft_ce"] = soft_cross_entropy(student_logits, target, cfg.temperature, cfg.scale_by_t2, mask)
    total = terms.get("soft_ce", terms.get("logits_mse"))
    weight = hard_weight_at(cfg, progress)
    if weight > 0:
        terms["hard_ce"] = hard_cross_entropy(student_logits, labels)
        total = total + weight * terms["hard_ce"]
    terms["loss"] = total
    return terms
