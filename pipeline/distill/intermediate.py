"""Intermediate-layer distillation (TinyBERT eqs. 3-5): embeddings, hidden states, attention scores.

Shared by stage one (general distillation) and stage two's first step. The student and its
projections form one module so that DDP synchronises both and the optimiser sees both; the teacher
stays outside, frozen.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import torch
from torch import nn

from pipeline.distill.layer_map import LayerMap, build_layer_map, middle_layer
from pipeline.distill.losses import attention_kl, attention_mse, average_heads, hidden_mse
from pipeline.distill.projections import Projections
from pipeline.errors import ConfigError
from pipeline.models.loading import forward_input_names
from pipeline.schema import IntermediateLossConfig, MappingConfig


class StudentWithProjections(nn.Module):
    """Runs the student and returns its hidden states already projected to the teacher's width:
    {0: W_e h_0} and {m: W_h,m h_m} for each mapped student layer m."""

    def __init__(self, student: nn.Module, projections: Projections):
        super().__init__()
        self.student = student
        self.projections = projections
        self.inputs = forward_input_names(student)

    def forward(self, input_ids, attention_mask, token_type_ids=None) -> dict[int, torch.Tensor]:
        given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        outputs = self.student(**{k: v for k, v in given.items() if k in self.inputs}, output_hidden_states=True)
        hidden = outputs.hidden_states
        projected = {0: self.projections.project_embeddings(hidden[0])}
        for layer in self.projections.student_layers:
            projected[layer] = self.projections.project_hidden(layer, hidden[layer])
        return projected


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


def freeze_unreached(model: nn.Module, loss_of: Callable[[nn.Module], torch.Tensor]) -> list[str]:
    """Stop gradients to every trainable parameter that no loss term reaches, and return their names.

    Which ones autograd says: `loss_of(model)` (the stage's loss on a probe batch, in eval mode, so no
    dropout draws) and the parameters it does not depend on. With a term off these are, e.g., W_h and
    the top mapped layer's value, output and FFN weights (attention only), the layers above the deepest
    mapped one (FitNets), or W_e. DDP fails on the step after a trainable parameter got no gradient, and
    frozen weights simply stay as they are.
    """
    trainable = [(name, param) for name, param in model.named_parameters() if param.requires_grad]
    was_training = model.training
    model.eval()
    try:
        loss = loss_of(model)
    finally:
        model.train(was_training)
    grads = torch.autograd.grad(loss, [param for _, param in trainable], allow_unused=True)
    frozen = []
    for (name, param), grad in zip(trainable, grads):
        if grad is None:
            param.requires_grad_(False)
            frozen.append(name)
    return frozen


def probe_batch(tokenizer, device) -> dict[str, torch.Tensor]:
    """A one-row batch of real token ids, one segment (RoBERTa-style models have a single token type)."""
    encoded = tokenizer("distillation probe", return_tensors="pt")
    batch = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"],
             "token_type_ids": torch.zeros_like(encoded["input_ids"])}
    return {name: value.to(device) for name, value in batch.items()}


def scored_layers(layer_map: LayerMap, loss: IntermediateLossConfig) -> tuple[list[int], list[int]]:
    """(teacher layers, student layers) whose attention scores a term needs: none when loss.attention is 0."""
    if loss.attention > 0 and layer_map.pairs:
        return layer_map.teacher_layers, layer_map.student_layers
    return [], []


def hidden_projection_layers(layer_map: LayerMap, loss: IntermediateLossConfig) -> list[int]:
    """The student layers that get a W_h: the mapped ones when the hidden term is on, else none."""
    return layer_map.student_layers if loss.hidden > 0 else []


@torch.no_grad()
def teacher_features(teacher: nn.Module, batch: dict[str, torch.Tensor], captured: dict[int, torch.Tensor]):
    """(hidden states tuple, {layer: scores}) of the frozen teacher for one batch.

    no_grad rather than inference_mode: the KL loss keeps teacher probabilities for backward, and
    autograd refuses to save inference tensors.
    """
    outputs = teacher(**{k: batch[k] for k in forward_input_names(teacher) if k in batch}, output_hidden_states=True)
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
        prepare = average_heads if loss.attention_heads == "average" else (lambda scores: scores)
        uses = Counter(s for s, _ in layer_map.pairs)  # a student layer mapped twice is read by two terms

        def attention_term(s: int, t: int) -> torch.Tensor:
            student, teacher = prepare(student_scores[s]), prepare(teacher_scores[t])
            if loss.attention_loss == "kl":
                return attention_kl(student, teacher, token_mask)
            return attention_mse(student, teacher, token_mask, reuse_student=uses[s] == 1)

        terms["attention"] = sum(attention_term(s, t) for s, t in layer_map.pairs)
    weights = {"embedding": loss.embedding, "hidden": loss.hidden, "attention": loss.attention}
    terms["loss"] = sum(weights[name] * value for name, value in terms.items())
    return terms
