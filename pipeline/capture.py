"""Record pre-softmax attention scores QK^T/sqrt(d) for chosen layers, keeping sdpa for the attention.

transformers 5 runs BERT attention through `scaled_dot_product_attention`, which never materialises the
scores; `output_attentions=True` silently returns nothing under sdpa, and switching the model to
eager would slow every layer. Instead we register one attention function with transformers'
AttentionInterface. For a layer we were asked to watch it computes the scores with one extra matmul
and records them (with autograd, so a student learns through them); every layer, watched or not, then
runs the regular sdpa kernel for its output, so the model's outputs are unchanged.

The recorded scores carry no mask: padding is excluded by the losses through the attention mask.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from pipeline.errors import ModelError

CAPTURE_IMPLEMENTATION = "tinydistill_capture"
_RECORDER_ATTRIBUTE = "_tinydistill_score_recorder"


def _recording_sdpa_attention(module, query, key, value, attention_mask, scaling=None, **kwargs):
    record = getattr(module, _RECORDER_ATTRIBUTE, None)
    if record is not None:
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        record(torch.matmul(query, key.transpose(-1, -2)) * scale)
    return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)


# Registration is idempotent and only adds a name; models opt in through `capture_attention_scores`.
AttentionInterface.register(CAPTURE_IMPLEMENTATION, _recording_sdpa_attention)
AttentionMaskInterface.register(CAPTURE_IMPLEMENTATION, sdpa_mask)


def self_attention_modules(model: nn.Module) -> list[nn.Module]:
    """The self-attention module of each Transformer layer, in order (BERT-like encoders)."""
    base = getattr(model, "base_model", model)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if layers is None:
        raise ModelError(
            f"{type(model).__name__}: cannot find encoder.layer; attention capture supports BERT-like encoders"
        )
    found = []
    for index, layer in enumerate(layers, start=1):
        candidates = [m for m in layer.modules() if type(m).__name__.endswith("SelfAttention")]
        if not candidates:
            raise ModelError(f"{type(model).__name__}: layer {index} has no *SelfAttention module to capture")
        found.append(candidates[0])
    return found


@contextmanager
def capture_attention_scores(model: nn.Module, layers: Sequence[int]) -> Iterator[dict[int, torch.Tensor]]:
    """Within the block, every forward of `model` fills the yielded dict: layer (1-based) -> (B, H, L, L).

    The dict is overwritten by each forward. On exit the model's attention implementation and
    modules are restored.
    """
    scores: dict[int, torch.Tensor] = {}
    if not layers:  # nothing to record (e.g. loss.attention 0): the model keeps its own attention
        yield scores
        return
    modules = self_attention_modules(model)
    for layer in layers:
        if not 1 <= layer <= len(modules):
            raise ModelError(f"cannot capture attention of layer {layer}: the model has {len(modules)} layers")
    previous = model.config._attn_implementation
    for layer in set(layers):
        setattr(modules[layer - 1], _RECORDER_ATTRIBUTE, _make_recorder(scores, layer))
    model.set_attn_implementation(CAPTURE_IMPLEMENTATION)
    try:
        yield scores
    finally:
        for module in modules:
            if hasattr(module, _RECORDER_ATTRIBUTE):
                delattr(module, _RECORDER_ATTRIBUTE)
        model.set_attn_implementation(previous)


def _make_recorder(scores: dict[int, torch.Tensor], layer: int):
    def record(layer_scores: torch.Tensor) -> None:
        scores[layer] = layer_scores

    return record
