"""Masked-language-model pretraining of a BERT, from scratch or continued from a saved model.

    tinydistill pretrain configs/pretrain_teacher_zh.yaml [key=value ...] [--resume] [--overwrite]

For the offline quickstart, where no pretrained Chinese BERT can be downloaded: `tinydistill build-vocab`
makes a character vocabulary, this stage trains a small teacher on the raw corpus, and fine-tuning
and the two distillation stages take it from there. Masking follows BERT (Devlin et al. 2019, sec. 3.1):
each real token is selected with probability `mlm_probability`; a selected token becomes [MASK] 80% of
the time, a random token 10%, itself 10%, and the model predicts the original at every selected
position. Special tokens and padding are never selected.

Output (`output_dir`): a `BertForMaskedLM` in `save_pretrained` format with the tokenizer,
`resolved_config.yaml`, `train_log.jsonl`, `checkpoints/`, and `tinydistill_run.json` written last.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForMaskedLM, BertConfig, PreTrainedModel

from pipeline.config import write_resolved_config
from pipeline.data.corpus import open_training_corpus
from pipeline.data.masking import IGNORE_INDEX, masked_accuracy, masked_batches
from pipeline.distill.losses import masked_lm_loss
from pipeline.errors import ConfigError, ModelError
from pipeline.models.loading import count_parameters, load_pretrained, load_tokenizer
from pipeline.schema import CorpusConfig, TrainConfig
from pipeline.training.checkpoints import mark_finished, prepare_output_dir
from pipeline.training.runtime import TrainState, make_accelerator
from pipeline.training.train_loop import train_model

ARCHITECTURE_KEYS = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads")


@dataclass(frozen=True)
class PretrainModelConfig:
    """The model to pretrain: a fresh BERT of the given sizes (vocabulary from the tokenizer), or
    `init_from` a saved model to continue pretraining (its architecture is used; leave the sizes out).
    `dropout` applies in both cases; `max_position_embeddings` only to a fresh model."""

    init_from: str | None = None  # a saved model to continue pretraining (its sizes are kept)
    num_hidden_layers: int | None = None  # layers of a fresh model
    hidden_size: int | None = None  # hidden width of a fresh model
    intermediate_size: int | None = None  # FFN width of a fresh model
    num_attention_heads: int | None = None  # attention heads of a fresh model
    max_position_embeddings: int = 512  # positions of a fresh model
    dropout: float = 0.1  # hidden and attention dropout

    def __post_init__(self):
        for name in ARCHITECTURE_KEYS:
            value = getattr(self, name)
            if self.init_from is None and value is None:
                raise ConfigError(f"model.{name}: required unless model.init_from is set")
            if self.init_from is not None and value is not None:
                raise ConfigError(f"model.{name}: not used with model.init_from (the saved model's size is kept)")
            if value is not None and value < 1:
                raise ConfigError(f"model.{name}: must be >= 1, got {value}")
        if self.max_position_embeddings < 8:
            raise ConfigError(f"model.max_position_embeddings: must be >= 8, got {self.max_position_embeddings}")
        if self.init_from is None and self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"model.hidden_size: {self.hidden_size} is not divisible by num_attention_heads "
                f"{self.num_attention_heads}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout: must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class PretrainConfig:
    tokenizer: str  # a saved tokenizer (a build-vocab output) or a model folder or hub id
    corpus: CorpusConfig  # the raw corpus to pretrain on
    output_dir: str  # where the model, logs and checkpoints go
    # the model to pretrain: fresh sizes, or init_from a saved one
    model: PretrainModelConfig = field(default_factory=PretrainModelConfig)
    # share of real tokens selected for the MLM loss (80% [MASK], 10% random, 10% kept)
    mlm_probability: float = 0.15
    whole_word_masking: bool = True  # mask jieba words / wordpiece words whole (Chinese-BERT-wwm)
    train: TrainConfig = field(default_factory=TrainConfig)  # optimisation and runtime
    overwrite: bool = False  # replace a finished output_dir (--overwrite)

    def __post_init__(self):
        self.train.corpus_only()
        self.train.without_teacher()
        if not 0.0 < self.mlm_probability <= 1.0:
            raise ConfigError(f"mlm_probability: must be in (0, 1], got {self.mlm_probability}")
        limit = self.model.max_position_embeddings
        if self.model.init_from is None and self.corpus.max_seq_len > limit:
            raise ConfigError(f"corpus.max_seq_len: {self.corpus.max_seq_len} exceeds model.max_position_embeddings "
                              f"{limit}")


def run_pretrain(cfg: PretrainConfig) -> Path:
    """Pretrain a masked LM on `cfg.corpus`; returns the output directory."""
    accelerator, train = make_accelerator(cfg.train, cfg.output_dir)
    # Everything that can be wrong with the inputs is checked before the output directory is made.
    tokenizer = load_tokenizer(cfg.tokenizer, "tokenizer")
    if tokenizer.mask_token_id is None:
        raise ModelError(f"tokenizer {cfg.tokenizer!r} has no mask token; masked-LM pretraining needs one")
    corpus, total_steps = open_training_corpus(cfg.corpus, tokenizer, accelerator, train, "tokenizer")
    model = build_masked_lm(cfg.model, len(tokenizer), cfg.corpus.max_seq_len)
    output_dir = Path(cfg.output_dir)
    if accelerator.is_main_process:
        prepare_output_dir(output_dir, cfg.overwrite, train.resume_from)
        write_resolved_config(cfg, output_dir)
    accelerator.wait_for_everyone()

    def batches_from(state: TrainState):
        batches = corpus.batches_from(state)
        return masked_batches(batches, state.step, train.grad_accum, train.seed, accelerator.process_index,
                              tokenizer, cfg.mlm_probability, cfg.whole_word_masking)

    def compute_terms(model, batch, progress):
        labels = batch.pop("labels")
        logits = model(**batch).logits
        loss = masked_lm_loss(logits, labels, IGNORE_INDEX)
        return {"loss": loss, "mlm_accuracy": masked_accuracy(logits.detach(), labels)}

    header = {"model_params": count_parameters(model), "vocab_size": len(tokenizer),
              "mlm_probability": cfg.mlm_probability, "whole_word_masking": cfg.whole_word_masking,
              **corpus.describe()}
    model, state, log = train_model(accelerator, model, batches_from, compute_terms, train, output_dir,
                                    total_steps, "mlm pretraining", header)
    log.event("skipped_lines", rank=accelerator.process_index, **corpus.skipped_lines())
    log.close()
    _save_model(accelerator, model, tokenizer, output_dir, state)
    return output_dir


def build_masked_lm(cfg: PretrainModelConfig, vocab_size: int, max_seq_len: int) -> PreTrainedModel:
    """A fresh BertForMaskedLM of the configured size, or the saved model, with sdpa attention, in float32."""
    dropout = {"hidden_dropout_prob": cfg.dropout, "attention_probs_dropout_prob": cfg.dropout}
    if cfg.init_from is None:
        config = BertConfig(vocab_size=vocab_size, max_position_embeddings=cfg.max_position_embeddings,
                            **{name: getattr(cfg, name) for name in ARCHITECTURE_KEYS}, **dropout)
        return AutoModelForMaskedLM.from_config(config, attn_implementation="sdpa")
    model = load_pretrained(AutoModelForMaskedLM, cfg.init_from, "model.init_from", dtype=torch.float32, **dropout)
    if model.config.vocab_size != vocab_size:
        raise ModelError(
            f"model.init_from: {cfg.init_from} has a vocabulary of {model.config.vocab_size} entries, "
            f"the tokenizer {vocab_size}; both must read the same token ids"
        )
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and max_seq_len > limit:
        raise ModelError(f"corpus.max_seq_len: {max_seq_len} exceeds the max_position_embeddings {limit} of "
                         f"{cfg.init_from}")
    return model.float()


def _save_model(accelerator, model, tokenizer, output_dir: Path, state: TrainState) -> None:
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        model.save_pretrained(output_dir)
        tokenizer.save_pretrained(output_dir)
        mark_finished(output_dir, {"stage": "pretrain", "steps": state.step, "tokens_seen": state.tokens_seen})
    accelerator.wait_for_everyone()
