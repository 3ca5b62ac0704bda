"""Record pre-softmax attention scores QK^T/sqrt(d) for chosen layers, keeping sdpa for the attention.

transformers 5 runs BERT attention through `scaled_dot_product_attention`, which never materialises the
scores; `output_attentions=True` silently returns nothing under sdpa, and switching the model to
eager would slow every layer. Instead we register one attention function with transformers'
AttentionInterface. A layer we were asked to watch computes its scores once, records them (with
autograd, so a student learns through them) and attends with them: scores -> masked softmax -> dropout
-> @V, eager attention's arithmetic. Every other layer runs the regular sdpa kernel. Outputs equal
sdpa's up to float rounding.

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
_QKV_RECORDER_ATTRIBUTE = "_tinydistill_qkv_recorder"


def _recording_sdpa_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    record_qkv = getattr(module, _QKV_RECORDER_ATTRIBUTE, None)
    if record_qkv is not None:
        record_qkv(query, key, value)
    record = getattr(module, _RECORDER_ATTRIBUTE, None)
    if record is None or key.shape[1] != query.shape[1]:  # unwatched (or grouped-query) layers: plain sdpa
        if record is not None:
            record(torch.matmul(query, key.transpose(-1, -2)) * _scale(query, scaling))
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    # A watched layer computes its scores once and attends with them (eager attention), instead of sdpa
    # plus a second QK^T: one (B, H, L, L) matmul fewer, and the scale is applied to Q (L x d), not to
    # the (L x L) scores.
    scores = torch.matmul(query * _scale(query, scaling), key.transpose(-1, -2))
    record(scores)
    if attention_mask is None:
        masked = scores
    elif attention_mask.dtype == torch.bool:
        masked = torch.where(attention_mask, scores, torch.finfo(scores.dtype).min)
    else:
        masked = scores + attention_mask
    weights = nn.functional.softmax(masked, dim=-1, dtype=torch.float32).to(value.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), None


def _scale(query: torch.Tensor, scaling: float | None) -> float:
    return scaling if scaling is not None else query.shape[-1] ** -0.5


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
    with _recording(model, layers, _RECORDER_ATTRIBUTE, "attention") as found:
        yield found


@contextmanager
def capture_qkv(model: nn.Module, layers: Sequence[int]) -> Iterator[dict[int, tuple[torch.Tensor, ...]]]:
    """Like `capture_attention_scores`, but records each chosen layer's (query, key, value), each
    (B, H, L, d), as its own projections made them (MiniLMv2's relations); those layers keep sdpa."""
    with _recording(model, layers, _QKV_RECORDER_ATTRIBUTE, "queries, keys and values") as found:
        yield found


@contextmanager
def _recording(model: nn.Module, layers: Sequence[int], attribute: str, what: str):
    modules = self_attention_modules(model)
    found: dict[int, object] = {}
    for layer in layers:
        if not 1 <= layer <= len(modules):
            raise ModelError(f"cannot capture {what} of layer {layer}: the model has {len(modules)} layers")
    previous = model.config._attn_implementation
    for layer in set(layers):
        setattr(modules[layer - 1], attribute, _make_recorder(found, layer))
    model.set_attn_implementation(CAPTURE_IMPLEMENTATION)
    try:
        yield found
    finally:
        for module in modules:
            if hasattr(module, attribute):
                delattr(module, attribute)
        if not any(hasattr(m, a) for m in modules for a in (_RECORDER_ATTRIBUTE, _QKV_RECORDER_ATTRIBUTE)):
            model.set_attn_implementation(previous)


def _make_recorder(found: dict, layer: int):
    def record(*tensors: torch.Tensor) -> None:
        found[layer] = tensors[0] if len(tensors) == 1 else tensors

    return record
