"""Record pre-softmax attention scores QK^T/sqrt(d), or queries, keys and values, of chosen layers.

transformers 5 runs BERT attention through `scaled_dot_product_attention`, which never materialises the
scores; `output_attentions=True` silently returns nothing under sdpa, and switching the model to
eager would slow every layer. Instead we register one attention function with transformers'
AttentionInterface. A layer whose scores we were asked for records QK^T/sqrt(d) (with autograd, so a
student learns through them, the scale applied to Q (L x d) rather than to the (L x L) scores). Where
sdpa is a fused kernel (GPU; CPU without dropout) the layer still attends through it, and the scores are
one extra matmul; in a CPU training pass with dropout, where sdpa would materialise the scores itself,
the layer attends with the recorded ones: scores -> masked softmax -> dropout -> @V, eager attention's
arithmetic. Every other layer runs the regular sdpa kernel. Outputs equal sdpa's up to float rounding.
A forward's k-th attention call is layer k, which also holds for ALBERT's one shared layer.

The losses exclude padding through the attention mask; in the eager path the recorded scores hold the
dtype's minimum at padded keys (the key bias, added in place), elsewhere they carry no mask.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar, Token

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from pipeline.errors import ModelError

CAPTURE_IMPLEMENTATION = "tinydistill_capture"
# The recorder of the model whose forward is running (teacher and student forwards never nest).
_ACTIVE_RECORDER: ContextVar[_LayerRecorder | None] = ContextVar("tinydistill_score_recorder", default=None)


def _recording_sdpa_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    recorder = _ACTIVE_RECORDER.get()
    layer = recorder.next_layer() if recorder is not None else None
    if layer is not None and layer in recorder.qkv_layers:
        recorder.qkv[layer] = (query, key, value)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    wants_scores = layer is not None and layer in recorder.score_layers
    # sdpa is one fused kernel on a GPU, and on a CPU without dropout (a frozen teacher, an eval pass):
    # there the scores cost one extra QK^T beside it. A CPU training pass with dropout runs sdpa's
    # unfused math path, so computing the scores once and attending with them saves that QK^T.
    fused = query.is_cuda or not (module.training and dropout > 0)
    if not wants_scores or fused or key.shape[1] != query.shape[1]:  # grouped-query layers: sdpa as well
        if wants_scores:
            recorder.scores[layer] = torch.matmul(query * scale, key.transpose(-1, -2))
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    scores = torch.matmul(query * scale, key.transpose(-1, -2))
    if attention_mask is None:
        masked = scores
    elif attention_mask.dtype == torch.bool and _keys_only(attention_mask):
        # in place: the matmul's backward does not need its output, and one (B, H, L, L) tensor fewer
        # is allocated (on CPU each large allocation is fresh pages, faulted in on first write)
        masked = scores = scores.add_(_key_bias(attention_mask, scores.dtype))
    elif attention_mask.dtype == torch.bool:
        masked = torch.where(attention_mask, scores, torch.finfo(scores.dtype).min)
    else:
        masked = scores + attention_mask
    recorder.scores[layer] = scores
    weights = nn.functional.softmax(masked, dim=-1, dtype=torch.float32).to(value.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), None


def _keys_only(mask: torch.Tensor) -> bool:
    """Whether a (B, 1, L, L) boolean mask is the same for every query (an encoder's key padding)."""
    return mask.dim() == 4 and bool((mask == mask[:, :, :1, :]).all())


def _key_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, 1, 1, L): 0 on real keys, the dtype's minimum on padded ones. Adding it broadcasts over the
    queries, one pass over the scores and none in backward, where `torch.where` reads the (L x L) mask
    both ways."""
    return torch.zeros(mask[:, :, :1, :].shape, dtype=dtype, device=mask.device).masked_fill_(
        ~mask[:, :, :1, :], torch.finfo(dtype).min)


# Registration is idempotent and only adds a name; models opt in through `capture_attention_scores`.
AttentionInterface.register(CAPTURE_IMPLEMENTATION, _recording_sdpa_attention)
AttentionMaskInterface.register(CAPTURE_IMPLEMENTATION, sdpa_mask)


class _LayerRecorder:
    """Counts a forward's attention calls: the k-th is layer k, in BERT-like encoders and in ALBERT, whose
    one shared layer runs once per depth."""

    def __init__(self, score_layers: set[int], qkv_layers: set[int], scores: dict, qkv: dict):
        self.score_layers, self.qkv_layers, self.scores, self.qkv, self.calls = score_layers, qkv_layers, scores, qkv, 0

    def next_layer(self) -> int:
        self.calls += 1
        return self.calls


@contextmanager
def capture_attention_scores(model: nn.Module, layers: Sequence[int]) -> Iterator[dict[int, torch.Tensor]]:
    """Within the block, every forward of `model` fills the yielded dict: layer (1-based) -> (B, H, L, L).

    The dict is overwritten by each forward. With no layers nothing changes in the model. On exit the
    model's attention implementation is restored and its hooks removed. A forward that makes another
    number of attention calls than the model has layers is refused (its scores would be misattributed).
    """
    with _capturing(model, layers, (), "attention") as (scores, _):
        yield scores


@contextmanager
def capture_qkv(model: nn.Module, layers: Sequence[int]) -> Iterator[dict[int, tuple[torch.Tensor, ...]]]:
    """Like `capture_attention_scores`, but records each chosen layer's (query, key, value), each
    (B, H, L, d), as its own projections made them (MiniLMv2's relations); every layer keeps sdpa."""
    with _capturing(model, (), layers, "queries, keys and values") as (_, qkv):
        yield qkv


@contextmanager
def _capturing(model: nn.Module, score_layers: Sequence[int], qkv_layers: Sequence[int], what: str):
    scores: dict[int, torch.Tensor] = {}
    qkv: dict[int, tuple[torch.Tensor, ...]] = {}
    if not score_layers and not qkv_layers:  # nothing to record (e.g. loss.attention 0): the model is untouched
        yield scores, qkv
        return
    depth = model.config.num_hidden_layers
    for layer in (*score_layers, *qkv_layers):
        if not 1 <= layer <= depth:
            raise ModelError(f"cannot capture {what} of layer {layer}: the model has {depth} layers")
    running: list[tuple[_LayerRecorder, Token]] = []

    def start(module, args):
        recorder = _LayerRecorder(set(score_layers), set(qkv_layers), scores, qkv)
        running.append((recorder, _ACTIVE_RECORDER.set(recorder)))

    def check(module, args, output):
        recorder = running[-1][0]
        if recorder.calls != depth:
            raise ModelError(
                f"{type(model).__name__}: {recorder.calls} attention calls went through transformers' "
                f"AttentionInterface for {depth} layers; its attention cannot be recorded"
            )

    def stop(module, args, output):
        _ACTIVE_RECORDER.reset(running.pop()[1])

    hooks = [model.register_forward_pre_hook(start), model.register_forward_hook(check),
             model.register_forward_hook(stop, always_call=True)]
    previous = model.config._attn_implementation
    model.set_attn_implementation(CAPTURE_IMPLEMENTATION)
    try:
        yield scores, qkv
    finally:
        for hook in hooks:
            hook.remove()
        model.set_attn_implementation(previous)
