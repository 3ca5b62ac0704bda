"""Intermediate-layer distillation (TinyBERT eqs. 3-5): embeddings, hidden states, attention scores.

Shared by stage one (general distillation) and stage two's first step. The student and its
projections form one module so that DDP synchronises both and the optimiser sees both; the teacher
stays outside, frozen.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.layer_map import LayerMap
from pipeline.losses import attention_kl, attention_mse, average_heads, hidden_mse
from pipeline.projections import Projections
from pipeline.schema import IntermediateLossConfig


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
