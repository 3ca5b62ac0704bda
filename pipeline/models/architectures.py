"""What differs between the encoder architectures tinydistill distils, in one place.

Intermediate-layer distillation needs an encoder whose attention runs through transformers'
AttentionInterface, one attention call per layer, so that `pipeline.distill.capture` can record the scores
while every layer keeps sdpa. Each architecture below was tried through stage one and stage two
(tests/test_architectures.py); the few facts that differ between them are fields of `Architecture`,
read through the small functions below, so no stage asks for a model type itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from transformers import PretrainedConfig

from pipeline.errors import ModelError


@dataclass(frozen=True)
class Architecture:
    # Where the per-layer weights live, for `student.init: teacher_layers`; None: the layers share one
    # set of weights (ALBERT), so there are no layers to pick.
    layers_prefix: str | None = "encoder.layer"
    # RoBERTa-style position ids start at padding_idx + 1, so that many positions are never usable.
    positions_after_padding: bool = False
    # The config key of the FFN width (DistilBERT names it hidden_dim) and of the dropout rates.
    intermediate_key: str = "intermediate_size"
    dropout_keys: tuple[str, ...] = ("hidden_dropout_prob", "attention_probs_dropout_prob")
    # ELECTRA factorises its embeddings (embedding_size, then a projection to hidden_size); a student
    # built from a config gets embeddings as wide as its layers, not the teacher's width plus a random map.
    embedding_size_is_hidden_size: bool = False


_ROBERTA = Architecture(positions_after_padding=True)
SUPPORTED: dict[str, Architecture] = {
    "bert": Architecture(),
    "ernie": Architecture(),
    "roberta": _ROBERTA,
    "xlm-roberta": _ROBERTA,
    "electra": Architecture(embedding_size_is_hidden_size=True),
    "albert": Architecture(layers_prefix=None),
    "distilbert": Architecture(layers_prefix="transformer.layer", intermediate_key="hidden_dim",
                               dropout_keys=("dropout", "attention_dropout")),
}


def architecture_of(config: PretrainedConfig, role: str) -> Architecture:
    """The architecture of `config`, or a one-line refusal that names it and says why."""
    model_type = getattr(config, "model_type", None)
    if model_type in SUPPORTED:
        return SUPPORTED[model_type]
    raise ModelError(
        f"{role} architecture {model_type!r} ({', '.join(config.architectures or []) or 'no class named'}) is "
        "not supported for layer-wise distillation: tinydistill records attention scores through "
        "transformers' AttentionInterface, one attention per layer, and distils only the encoders tried that "
        f"way ({', '.join(SUPPORTED)})"
    )


def usable_positions(config: PretrainedConfig) -> int | None:
    """How many token positions a model can embed: max_position_embeddings, less RoBERTa's offset."""
    limit = getattr(config, "max_position_embeddings", None)
    arch = SUPPORTED.get(getattr(config, "model_type", None), Architecture())
    if limit is None or not arch.positions_after_padding:
        return limit
    return limit - ((config.pad_token_id or 0) + 1)


def positions_note(config: PretrainedConfig) -> str:
    """The position limit in words, for an error: "max_position_embeddings 514 less 2 (...)"."""
    limit = config.max_position_embeddings
    offset = limit - usable_positions(config)
    if not offset:
        return f"max_position_embeddings {limit}"
    return (f"max_position_embeddings {limit} less {offset} ({config.model_type} position ids start after the "
            f"padding id {config.pad_token_id}, so at most {limit - offset} tokens fit)")


def student_sizes(config: PretrainedConfig, sizes: dict[str, int]) -> dict[str, int]:
    """The config keys to set for a student of `sizes` (hidden_size, intermediate_size, ...)."""
    arch = SUPPORTED.get(config.model_type, Architecture())
    keys = {(arch.intermediate_key if name == "intermediate_size" else name): value for name, value in sizes.items()}
    if arch.embedding_size_is_hidden_size and "hidden_size" in sizes:
        keys["embedding_size"] = sizes["hidden_size"]
    return keys


def dropout_keys(config: PretrainedConfig) -> tuple[str, ...]:
    return SUPPORTED.get(config.model_type, Architecture()).dropout_keys


def layer_pattern(config: PretrainedConfig, role: str) -> re.Pattern:
    """A regex whose group 1 is the 0-based layer number in a parameter name, for copying teacher layers."""
    prefix = architecture_of(config, role).layers_prefix
    if prefix is None:
        raise ModelError(
            f"student.init: teacher_layers copies per-layer weights, but a {config.model_type} {role} shares one "
            "set of weights across its layers; use student.init: config"
        )
    return re.compile(rf"(?:^|\.){re.escape(prefix)}\.(\d+)\.")
