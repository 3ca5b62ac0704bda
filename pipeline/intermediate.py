"""Intermediate-layer distillation (TinyBERT eqs. 3-5): embeddings, hidden states, attention scores.

Shared by stage one (general distillation) and stage two's first step. The student and its
projections form one module so that DDP synchronises both and the optimiser sees both; the teacher
stays outside, frozen.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from pipeline.errors import ConfigError
from pipeline.layer_map import LayerMap, build_layer_map, middle_layer
from pipeline.losses import attention_kl, attention_mse, average_heads, hidden_mse
from pipeline.projections import Projections
from pipeline.schema import IntermediateLossConfig, MappingConfig


class StudentWithProjections(nn.Module):
    """Runs the student and returns its hidden states already projected to the teacher's width:
    {0: W_e h_0} and {m: W_h,m h_m} for each mapped student layer m."""

    def __init__(self, student: nn.Module, projections: Projections):
        super().__init__()
        self.student = student
        self.projections = projections

    def forward(self, input_ids, attention_mask, token_type_ids=None) -> dict[int, torch.Tensor]:
        outputs = self.student(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
            output_hidden_states=True,
        )
        hidden = outputs.hidden_states
        projected = {0: self.projections.project_embeddings(hidden[0])}
        for layer in self.projections.student_layers:
            projected[layer] = self.projections.project_hidden(layer, hidden[layer])
        return projected


def freeze_outside_encoder(model: nn.Module) -> list[str]:
    """Stop gradients to parameters the intermediate losses never reach (pooler, task heads), so DDP
    does not wait for them. Returns the frozen names."""
    frozen = []
    for name, param in model.named_parameters():
        dotted = f".{name}"
        if ".embeddings." not in dotted and ".encoder." not in dotted:
            param.requires_grad_(False)
            frozen.append(name)
    return frozen


def intermediate_layer_map(mapping: MappingConfig, loss: IntermediateLossConfig, teacher_depth: int,
                           student_depth: int) -> LayerMap:
    """The layer map of the intermediate losses, validated against the real depths: `mapping` as
    configured, or under `loss.preset: fitnets` one guided pair without embeddings (the student's
    middle layer against the teacher's, unless `mapping.pairs` holds the one pair to use)."""
    if loss.preset != "fitnets":
        return build_layer_map(teacher_depth, student_depth, mapping.teacher_layers, mapping.pairs,
                               mapping.embeddings)
    if mapping.teacher_layers is not None:
        raise ConfigError("mapping.teacher_layers: loss.preset fitnets guides one layer pair; "
                          "give mapping.pairs: [[student, teacher]] or no mapping")
    if mapping.pairs is not None and len(mapping.pairs) != 1:
        raise ConfigError(f"mapping.pairs: loss.preset fitnets guides one layer pair, got {len(mapping.pairs)}")
    pairs = mapping.pairs or [(middle_layer(student_depth), middle_layer(teacher_depth))]
    return build_layer_map(teacher_depth, student_depth, None, pairs, embeddings=False)


def freeze_unreached(model: StudentWithProjections, layer_map: LayerMap, loss: IntermediateLossConfig) -> list[str]:
    """Stop gradients to what no intermediate term reaches: student layers above the deepest mapped
    one (FitNets trains only up to its guided layer) and W_e when the embedding term is off. Their
    weights stay as they are, and DDP does not wait for gradients that never come. Returns the names."""
    deepest = max(layer_map.student_layers, default=0)
    frozen = []
    for name, param in model.named_parameters():
        layer = re.search(r"(?:^|\.)encoder\.layer\.(\d+)\.", name)  # 0-based: student layer m is m - 1
        above = layer is not None and int(layer.group(1)) >= deepest
        no_embedding_term = name.startswith("projections.embedding.") and not (loss.embedding > 0 and
                                                                            layer_map.embeddings)
        if param.requires_grad and (above or no_embedding_term):
            param.requires_grad_(False)
            frozen.append(name)
    return frozen


@torch.no_grad()
def teacher_features(teacher: nn.Module, batch: dict[str, torch.Tensor], captured: dict[int, torch.Tensor]):
    """(hidden states tuple, {layer: scores}) of the frozen teacher for one batch.

    no_grad rather than inference_mode: the KL loss keeps teacher probabilities for backward, and
    autograd refuses to save inference tensors.
    """
    outputs = teacher(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
        token_type_ids=batch.get("token_type_ids"), output_hidden_states=True,
    )
    return outputs.hidden_states, dict(captured)


def intermediate_loss_terms(
    student_projected: dict[int, torch.Tensor],
    student_scores: dict[int, torch.Tensor],
    teacher_hidden: tuple[torch.Tensor, ...],
    teacher_scores: dict[int, torch.Tensor],
    layer_map: LayerMap,
    loss: IntermediateLossConfig,
    token_mask: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Each weighted term by name plus their weighted sum under "loss".

    Layer terms are summed over mapped pairs, as in TinyBERT (L_model = sum_m L_layer(m, g(m))).
    """
    terms: dict[str, torch.Tensor] = {}
    if loss.embedding > 0 and layer_map.embeddings:
        terms["embedding"] = hidden_mse(student_projected[0], teacher_hidden[0], token_mask)
    if loss.hidden > 0 and layer_map.pairs:
        terms["hidden"] = sum(
            hidden_mse(student_projected[s], teacher_hidden[t], token_mask) for s, t in layer_map.pairs
        )
    if loss.attention > 0 and layer_map.pairs:
        attention_fn = attention_kl if loss.attention_loss == "kl" else attention_mse
        prepare = average_heads if loss.attention_heads == "average" else (lambda scores: scores)
        terms["attention"] = sum(
            attention_fn(prepare(student_scores[s]), prepare(teacher_scores[t]), token_mask)
            for s, t in layer_map.pairs
        )
    weights = {"embedding": loss.embedding, "hidden": loss.hidden, "attention": loss.attention}
    terms["loss"] = sum(weights[name] * value for name, value in terms.items())
    return terms
