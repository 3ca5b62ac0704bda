"""Record pre-softmax attention scores QK^T/sqrt(d) for chosen layers, keeping sdpa for the attention.

transformers 5 runs BERT attention through `scaled_dot_product_attention`, which never materialises the
scores; `output_attentions=True` silently returns nothing under sdpa, and switching the model to
eager would slow every layer. Instead we register one attention function with transformers'
AttentionInterface. For a layer we were asked to watch it computes the scores with one extra matmul
and records them (with autograd, so a student learns through them); every layer, watched or not, then
runs the regular sdpa kernel for its output, so the model's outputs are unchanged. A forward's k-th
attention call is layer k, which also holds for ALBERT's one shared layer.

The recorded scores carry no mask: padding is excluded by the losses through the attention mask.
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


def _recording_sdpa_attention(module, query, key, value, attention_mask, scaling=None, **kwargs):
    record = _ACTIVE_RECORDER.get()
    if record is not None:
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        record(lambda: torch.matmul(query, key.transpose(-1, -2)) * scale)
    return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)


# Registration is idempotent and only adds a name; models opt in through `capture_attention_scores`.
AttentionInterface.register(CAPTURE_IMPLEMENTATION, _recording_sdpa_attention)
AttentionMaskInterface.register(CAPTURE_IMPLEMENTATION, sdpa_mask)


class _LayerRecorder:
    """Counts a forward's attention calls: the k-th is layer k, in BERT-like encoders and in ALBERT, whose
    one shared layer runs once per depth. Scores are computed only for the watched layers."""

    def __init__(self, watched: set[int], scores: dict[int, torch.Tensor]):
        self.watched, self.scores, self.calls = watched, scores, 0

    def __call__(self, compute_scores) -> None:
        self.calls += 1
        if self.calls in self.watched:
            self.scores[self.calls] = compute_scores()


@contextmanager
def capture_attention_scores(model: nn.Module, layers: Sequence[int]) -> Iterator[dict[int, torch.Tensor]]:
    """Within the block, every forward of `model` fills the yielded dict: layer (1-based) -> (B, H, L, L).

    The dict is overwritten by each forward. With no layers nothing changes in the model. On exit the
    model's attention implementation is restored and its hooks removed. A forward that makes another
    number of attention calls than the model has layers is refused (its scores would be misattributed).
    """
    scores: dict[int, torch.Tensor] = {}
    if not layers:  # nothing to record (e.g. loss.attention 0): the model keeps its own attention
        yield scores
        return
    depth = model.config.num_hidden_layers
    for layer in layers:
        if not 1 <= layer <= depth:
            raise ModelError(f"cannot capture attention of layer {layer}: the model has {depth} layers")
    running: list[tuple[_LayerRecorder, Token]] = []

    def start(module, args):
        recorder = _LayerRecorder(set(layers), scores)
        running.append((recorder, _ACTIVE_RECORDER.set(recorder)))

    def check(module, args, output):
        recorder = running[-1][0]
        if recorder.calls != depth:
            raise ModelError(
                f"{type(model).__name__}: {recorder.calls} attention calls went through transformers' "
                f"AttentionInterface for {depth} layers; its attention scores cannot be recorded"
            )

    def stop(module, args, output):
        _ACTIVE_RECORDER.reset(running.pop()[1])

    hooks = [model.register_forward_pre_hook(start), model.register_forward_hook(check),
             model.register_forward_hook(stop, always_call=True)]
    previous = model.config._attn_implementation
    model.set_attn_implementation(CAPTURE_IMPLEMENTATION)
    try:
        yield scores
    finally:
        for hook in hooks:
            hook.remove()
        model.set_attn_implementation(previous)
