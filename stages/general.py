"""Stage one: general distillation of a pretrained teacher into a small student on a raw corpus.

    tinydistill general configs/general_tinybert4_zh.yaml [key=value ...] [--resume] [--overwrite]

Three objectives:
  tinybert   (default; Jiao et al. 2020) intermediate-layer distillation: embeddings, hidden states and
             attention scores of mapped layers, through learnable projections when the widths differ.
  distilbert (Sanh et al. 2019) a masked-LM student learns on dynamically masked text from
             distilbert.soft_ce x KL(teacher || student) at temperature T over the masked positions,
             distilbert.mlm x the MLM loss against the original tokens, and distilbert.cosine x (1 - cos)
             between last hidden states. Teacher and student are masked LMs; the student is usually
             `student.init: teacher_layers` (alternate teacher layers). The cosine term needs equal
             widths: a student of another width is refused unless distilbert.cosine is 0.
  minilmv2   (Wang et al. 2021) the student's last layer learns the query-query, key-key and value-value
             self-attention relations of one teacher layer (default the last) through KL over
             minilmv2.relation_heads relation heads: no projections, any widths and head counts.

Output (`output_dir`): the student in `save_pretrained` format with the tokenizer (tinybert: also its
projections, `projections.safetensors`; distilbert: a masked LM, loadable as AutoModelForMaskedLM or
AutoModel; minilmv2: the encoder), `resolved_config.yaml`, `train_log.jsonl`, `checkpoints/`, and `tinydistill_run.json` written last.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from transformers import AutoModelForMaskedLM

from pipeline.config import write_resolved_config
from pipeline.data.corpus import open_training_corpus
from pipeline.data.masking import IGNORE_INDEX, masked_batches
from pipeline.data.prune_vocab import describe, id_lookup, save_tokenizer, student_batch, student_vocabulary
from pipeline.distill.capture import capture_attention_scores, capture_qkv
from pipeline.distill.intermediate import (
    StudentWithProjections,
    freeze_unreached,
    hidden_projection_layers,
    intermediate_layer_map,
    intermediate_loss_terms,
    probe_batch,
    scored_layers,
    teacher_features,
)
from pipeline.distill.losses import hidden_cosine, masked_lm_loss, soft_target_kl
from pipeline.distill.minilm import MiniLMv2Config, check_relation_shapes, relation_terms
from pipeline.distill.projections import Projections, build_projections
from pipeline.errors import ConfigError, ModelError
from pipeline.models.architectures import architecture_of
from pipeline.models.loading import (
    build_student,
    check_teacher_student_fit,
    count_parameters,
    load_masked_lm_teacher,
    load_model_config,
    load_teacher,
    load_tokenizer,
    teacher_identity,
)
from pipeline.schema import CorpusConfig, IntermediateLossConfig, MappingConfig, StudentConfig, TrainConfig
from pipeline.training.checkpoints import mark_finished, prepare_output_dir
from pipeline.training.runtime import TrainState, make_accelerator
from pipeline.training.train_loop import train_model


@dataclass(frozen=True)
class DistilBertLossConfig:
    """The distilbert objective: weights of its three terms (0 turns one off), the softmax temperature of
    the soft targets, and the share of tokens masked. Defaults are DistilBERT's (alpha_ce=5, alpha_mlm=2,
    alpha_cos=1, temperature 2, mlm_mask_prop 0.15); masks cover whole words unless whole_word_masking is off."""

    temperature: float = 2.0  # softmax temperature of the teacher's soft targets
    soft_ce: float = 5.0  # weight of the soft cross-entropy
    mlm: float = 2.0  # weight of the masked-LM loss on the gold tokens
    cosine: float = 1.0  # weight of the hidden-state cosine loss
    mlm_probability: float = 0.15  # share of real tokens masked
    whole_word_masking: bool = True  # mask whole words (jieba words, ## pieces) together

    def __post_init__(self):
        if self.temperature <= 0:
            raise ConfigError(f"distilbert.temperature: must be > 0, got {self.temperature}")
        for name in ("soft_ce", "mlm", "cosine"):
            if getattr(self, name) < 0:
                raise ConfigError(f"distilbert.{name}: weight must be >= 0, got {getattr(self, name)}")
        if self.soft_ce == self.mlm == self.cosine == 0:
            raise ConfigError("distilbert: every weight is 0, nothing would be learned")
        if not 0.0 < self.mlm_probability <= 1.0:
            raise ConfigError(f"distilbert.mlm_probability: must be in (0, 1], got {self.mlm_probability}")


@dataclass(frozen=True)
class GeneralConfig:
    teacher: str  # the pretrained teacher: a model folder or hub id (org/name@revision pins a revision)
    corpus: CorpusConfig  # the raw corpus (a prepared corpus folder, files, folders, globs or a hub id)
    output_dir: str  # where the student, projections, logs and checkpoints go
    # how the student is made (sizes, init, vocabulary)
    student: StudentConfig = field(default_factory=StudentConfig)
    # which teacher layer each student layer learns from
    mapping: MappingConfig = field(default_factory=MappingConfig)
    # weights and forms of the embedding, hidden and attention terms (objective tinybert)
    loss: IntermediateLossConfig = field(default_factory=IntermediateLossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)  # optimisation and runtime
    overwrite: bool = False  # replace a finished output_dir (--overwrite)
    # tinybert (layer-wise losses), distilbert (soft CE + MLM + cosine) or minilmv2 (relations)
    objective: Literal["tinybert", "distilbert", "minilmv2"] = "tinybert"
    # the distilbert objective's weights, temperature and masking
    distilbert: DistilBertLossConfig = field(default_factory=DistilBertLossConfig)
    # the minilmv2 objective's teacher layer, relation heads and weights
    minilmv2: MiniLMv2Config = field(default_factory=MiniLMv2Config)

    def __post_init__(self):
        self.train.corpus_only()
        # A section the objective ignores is a mistake worth hearing about, not a silent no-op.
        if self.objective != "tinybert":
            if self.mapping != MappingConfig():
                raise ConfigError(f"mapping: only used with objective tinybert ({self.objective} maps no layer list)")
            if self.loss != IntermediateLossConfig():
                raise ConfigError(f"loss: only used with objective tinybert; {self.objective}'s weights are under "
                                  f"{self.objective}")
        if self.objective != "distilbert" and self.distilbert != DistilBertLossConfig():
            raise ConfigError("distilbert: only used with objective distilbert (set objective: distilbert)")
        if self.objective != "minilmv2" and self.minilmv2 != MiniLMv2Config():
            raise ConfigError("minilmv2: only used with objective minilmv2 (set objective: minilmv2)")


def run_general(cfg: GeneralConfig) -> Path:
    """Distil `cfg.teacher` into a new student on `cfg.corpus` with `cfg.objective`; returns the output
    directory."""
    if cfg.objective == "distilbert":
        return _run_distilbert(cfg)
    if cfg.objective == "minilmv2":
        return _run_minilmv2(cfg)
    return _run_tinybert(cfg)


def _run_tinybert(cfg: GeneralConfig) -> Path:
    accelerator, train = make_accelerator(cfg.train, cfg.output_dir)
    # Everything that can be wrong with the inputs is checked before the teacher is loaded.
    teacher_config = load_model_config(cfg.teacher, "teacher")
    architecture_of(teacher_config, "teacher")  # layer-wise losses need an architecture tried that way
    tokenizer = load_tokenizer(cfg.teacher, "teacher tokenizer")
    student = build_student(cfg.student, teacher_config, cfg.teacher)
    architecture_of(student.config, "student")
    corpus, total_steps = open_training_corpus(cfg.corpus, tokenizer, accelerator, train, "teacher")
    vocab_map, student_tokenizer = _student_vocabulary(cfg, tokenizer, teacher_config, student, corpus)
    check_teacher_student_fit(teacher_config, student.config, cfg.loss.attention, cfg.loss.attention_heads,
                              cfg.corpus.max_seq_len, vocab_map)
    layer_map = intermediate_layer_map(cfg.mapping, cfg.loss, teacher_config.num_hidden_layers,
                                       student.config.num_hidden_layers)
    output_dir = Path(cfg.output_dir)
    if accelerator.is_main_process:
        prepare_output_dir(output_dir, cfg.overwrite, train.resume_from)
        write_resolved_config(cfg, output_dir)
    accelerator.wait_for_everyone()

    teacher = load_teacher(cfg.teacher, train.teacher_dtype).to(accelerator.device)
    previous = Projections.load(cfg.student.checkpoint) if cfg.student.init == "checkpoint" else None
    projections = build_projections(student.config.hidden_size, teacher_config.hidden_size,
                                    hidden_projection_layers(layer_map, cfg.loss), cfg.loss.projection, previous)
    model = StudentWithProjections(student, projections).to(accelerator.device)
    header = {
        "teacher": teacher_identity(cfg.teacher),
        "mapping (student->teacher)": layer_map.describe(),
        "teacher_params": count_parameters(teacher),
        "student_params": count_parameters(student),
        "projection_params": count_parameters(projections),
        "teacher_dtype": train.teacher_dtype,
        **describe(vocab_map, teacher_config.vocab_size),
        **corpus.describe(),
    }
    lookup = id_lookup(vocab_map, accelerator.device)
    teacher_layers, student_layers = scored_layers(layer_map, cfg.loss)
    with capture_attention_scores(teacher, teacher_layers) as teacher_captured, \
            capture_attention_scores(student, student_layers) as student_captured:

        def compute_terms(model, batch, progress):
            teacher_hidden, teacher_scores = teacher_features(teacher, batch, teacher_captured)
            projected = model(**student_batch(batch, lookup))
            return intermediate_loss_terms(projected, dict(student_captured), teacher_hidden, teacher_scores,
                                           layer_map, cfg.loss, batch["attention_mask"])

        probe = probe_batch(tokenizer, accelerator.device)
        frozen = freeze_unreached(model, lambda model: compute_terms(model, probe, 0.0)["loss"])
        header["frozen_params"] = sum(p.numel() for n, p in model.named_parameters() if n in frozen)
        model, state, log = train_model(
            accelerator, model,
            corpus.batches_from,
            compute_terms, train, output_dir, total_steps, "general distillation", header)
    log.event("skipped_lines", rank=accelerator.process_index, **corpus.skipped_lines())
    log.close()
    _save_student(accelerator, model, student_tokenizer, output_dir, state)
    return output_dir


def _run_distilbert(cfg: GeneralConfig) -> Path:
    accelerator, train = make_accelerator(cfg.train, cfg.output_dir)
    # Everything that can be wrong with the inputs is checked before the output directory is made.
    teacher_config = load_model_config(cfg.teacher, "teacher")
    tokenizer = load_tokenizer(cfg.teacher, "teacher tokenizer")
    if tokenizer.mask_token_id is None:
        raise ModelError(f"teacher tokenizer {cfg.teacher!r} has no mask token; objective distilbert needs one")
    corpus, total_steps = open_training_corpus(cfg.corpus, tokenizer, accelerator, train, "teacher")
    teacher = load_masked_lm_teacher(cfg.teacher, train.teacher_dtype)
    student = build_student(cfg.student, teacher_config, cfg.teacher, model_class=AutoModelForMaskedLM)
    vocab_map, student_tokenizer = _student_vocabulary(cfg, tokenizer, teacher_config, student, corpus)
    check_teacher_student_fit(teacher_config, student.config, 0.0, "average", cfg.corpus.max_seq_len, vocab_map)
    widths = (student.config.hidden_size, teacher_config.hidden_size)
    if cfg.distilbert.cosine > 0 and widths[0] != widths[1]:
        raise ConfigError(
            f"student.hidden_size: the distilbert cosine loss compares last hidden states, so the student's "
            f"width must equal the teacher's {widths[1]} (got {widths[0]}); use student.init: teacher_layers "
            "or set distilbert.cosine: 0"
        )
    output_dir = Path(cfg.output_dir)
    if accelerator.is_main_process:
        prepare_output_dir(output_dir, cfg.overwrite, train.resume_from)
        write_resolved_config(cfg, output_dir)
    accelerator.wait_for_everyone()

    teacher = teacher.to(accelerator.device)
    weights = cfg.distilbert
    lookup = id_lookup(vocab_map, accelerator.device)
    kept_ids = vocab_map.kept_ids.to(accelerator.device) if vocab_map else None

    def batches_from(state: TrainState):
        batches = corpus.batches_from(state)
        return masked_batches(batches, state.step, train.grad_accum, train.seed, accelerator.process_index,
                              tokenizer, weights.mlm_probability, weights.whole_word_masking)

    def compute_terms(model, batch, progress):
        labels = batch.pop("labels")
        needs_hidden = weights.cosine > 0
        student_out = model(**student_batch(batch, lookup), output_hidden_states=needs_hidden)
        # no_grad rather than inference_mode: the KL keeps teacher probabilities for backward.
        with torch.no_grad():
            teacher_out = teacher(**batch, output_hidden_states=needs_hidden)
        masked = labels != IGNORE_INDEX
        # A pruned student predicts over its own vocabulary: the teacher's distribution over those tokens
        # (renormalised by the softmax) and the labels in student ids.
        teacher_logits = teacher_out.logits if kept_ids is None else teacher_out.logits[..., kept_ids]
        if lookup is not None:
            labels = torch.where(masked, lookup[labels.clamp(min=0)], labels)
        terms = {}
        if weights.soft_ce > 0:
            terms["soft_ce"] = soft_target_kl(student_out.logits, teacher_logits, weights.temperature, masked)
        if weights.mlm > 0:
            terms["mlm"] = masked_lm_loss(student_out.logits, labels, IGNORE_INDEX)
        if needs_hidden:
            terms["cosine"] = hidden_cosine(student_out.hidden_states[-1], teacher_out.hidden_states[-1],
                                            batch["attention_mask"])
        terms["loss"] = sum(getattr(weights, name) * value for name, value in terms.items())
        return terms

    header = {
        "objective": "distilbert",
        "teacher": teacher_identity(cfg.teacher),
        "teacher_params": count_parameters(teacher),
        "student_params": count_parameters(student),
        "student_layers": student.config.num_hidden_layers,
        "temperature": weights.temperature,
        "weights (soft_ce, mlm, cosine)": [weights.soft_ce, weights.mlm, weights.cosine],
        "mlm_probability": weights.mlm_probability,
        "whole_word_masking": weights.whole_word_masking,
        **describe(vocab_map, teacher_config.vocab_size),
        **corpus.describe(),
    }
    model, state, log = train_model(accelerator, student, batches_from, compute_terms, train, output_dir,
                                    total_steps, "general distillation (distilbert)", header)
    log.event("skipped_lines", rank=accelerator.process_index, **corpus.skipped_lines())
    log.close()
    _save_model(accelerator, model, student_tokenizer, output_dir, state, "distilbert")
    return output_dir


def _run_minilmv2(cfg: GeneralConfig) -> Path:
    accelerator, train = make_accelerator(cfg.train, cfg.output_dir)
    # Everything that can be wrong with the inputs is checked before the output directory is made.
    teacher_config = load_model_config(cfg.teacher, "teacher")
    architecture_of(teacher_config, "teacher")
    tokenizer = load_tokenizer(cfg.teacher, "teacher tokenizer")
    student = build_student(cfg.student, teacher_config, cfg.teacher)
    architecture_of(student.config, "student")
    corpus, total_steps = open_training_corpus(cfg.corpus, tokenizer, accelerator, train, "teacher")
    vocab_map, student_tokenizer = _student_vocabulary(cfg, tokenizer, teacher_config, student, corpus)
    check_teacher_student_fit(teacher_config, student.config, 0.0, "average", cfg.corpus.max_seq_len, vocab_map)
    teacher_layer = check_relation_shapes(cfg.minilmv2, teacher_config, student.config)
    student_layer = student.config.num_hidden_layers
    output_dir = Path(cfg.output_dir)
    if accelerator.is_main_process:
        prepare_output_dir(output_dir, cfg.overwrite, train.resume_from)
        write_resolved_config(cfg, output_dir)
    accelerator.wait_for_everyone()

    teacher = load_teacher(cfg.teacher, train.teacher_dtype).to(accelerator.device)
    student.to(accelerator.device)
    header = {"objective": "minilmv2", "teacher": teacher_identity(cfg.teacher), "relations (student->teacher layer)": f"{student_layer}->{teacher_layer}",
              "relation_heads": cfg.minilmv2.relation_heads,
              "weights (qq, kk, vv)": [cfg.minilmv2.qq, cfg.minilmv2.kk, cfg.minilmv2.vv],
              "teacher_params": count_parameters(teacher), "student_params": count_parameters(student),
              **describe(vocab_map, teacher_config.vocab_size), **corpus.describe()}
    lookup = id_lookup(vocab_map, accelerator.device)
    with capture_qkv(teacher, [teacher_layer]) as teacher_qkv, capture_qkv(student, [student_layer]) as student_qkv:

        def compute_terms(model, batch, progress):
            with torch.no_grad():
                teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        token_type_ids=batch.get("token_type_ids"))
            model(**student_batch(batch, lookup))
            return relation_terms(student_qkv[student_layer], teacher_qkv[teacher_layer], batch["attention_mask"],
                                  cfg.minilmv2)

        probe = probe_batch(tokenizer, accelerator.device)
        frozen = freeze_unreached(student, lambda model: compute_terms(model, probe, 0.0)["loss"])
        header["frozen_params"] = sum(p.numel() for n, p in student.named_parameters() if n in frozen)
        model, state, log = train_model(accelerator, student, corpus.batches_from, compute_terms, train,
                                        output_dir, total_steps, "general distillation (minilmv2)", header)
    log.event("skipped_lines", rank=accelerator.process_index, **corpus.skipped_lines())
    log.close()
    _save_model(accelerator, model, student_tokenizer, output_dir, state, "minilmv2")
    return output_dir


def _student_vocabulary(cfg: GeneralConfig, tokenizer, teacher_config, student, corpus):
    """(VocabMap or None, the student's tokenizer); `student.vocab: prune` counts the whole corpus."""
    return student_vocabulary(cfg.student, tokenizer, cfg.teacher, teacher_config.vocab_size, student,
                              lambda: corpus.token_counts(tokenizer, teacher_config.vocab_size))


def _save_model(accelerator, model, tokenizer, output_dir: Path, state: TrainState, objective: str) -> None:
    """The student alone (no projections) with the tokenizer, then the finished marker."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        model.save_pretrained(output_dir)
        save_tokenizer(tokenizer, output_dir)
        mark_finished(output_dir, {"stage": "general", "objective": objective, "steps": state.step,
                                   "tokens_seen": state.tokens_seen})
    accelerator.wait_for_everyone()


def _save_student(accelerator, model, tokenizer, output_dir: Path, state: TrainState) -> None:
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        unwrapped = model
        unwrapped.student.save_pretrained(output_dir)
        save_tokenizer(tokenizer, output_dir)
        unwrapped.projections.save(output_dir)
        mark_finished(output_dir, {"stage": "general", "steps": state.step, "tokens_seen": state.tokens_seen})
    accelerator.wait_for_everyone()
