"""Stage one: general distillation of a pretrained teacher into a small student on a raw corpus.

    tinydistill general configs/general_tinybert4_zh.yaml [key=value ...] [--resume] [--overwrite]

Output (`output_dir`): the student in `save_pretrained` format with the tokenizer, its projections
(`projections.safetensors`), `resolved_config.yaml`, `train_log.jsonl`, `checkpoints/`, and
`tinydistill_run.json` written last.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipeline.capture import capture_attention_scores
from pipeline.checkpoints import mark_finished, prepare_output_dir
from pipeline.config import write_resolved_config
from pipeline.data import TokenizedCorpus
from pipeline.intermediate import (
    StudentWithProjections,
    freeze_outside_encoder,
    freeze_unreached,
    intermediate_layer_map,
    intermediate_loss_terms,
    teacher_features,
)
from pipeline.models import (
    build_student,
    check_teacher_student_fit,
    count_parameters,
    load_model_config,
    load_teacher,
    load_tokenizer,
)
from pipeline.projections import Projections, build_projections
from pipeline.runtime import TrainState, make_accelerator, resumable_batches, steps_from_corpus
from pipeline.schema import CorpusConfig, IntermediateLossConfig, MappingConfig, StudentConfig, TrainConfig
from pipeline.train_loop import train_model


@dataclass(frozen=True)
class GeneralConfig:
    teacher: str
    corpus: CorpusConfig
    output_dir: str
    student: StudentConfig = field(default_factory=StudentConfig)
    mapping: MappingConfig = field(default_factory=MappingConfig)
    loss: IntermediateLossConfig = field(default_factory=IntermediateLossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    overwrite: bool = False


def run_general(cfg: GeneralConfig) -> Path:
    """Distil `cfg.teacher` into a new student on `cfg.corpus`; returns the output directory."""
    accelerator = make_accelerator(cfg.train, cfg.output_dir)
    # Everything that can be wrong with the inputs is checked before the teacher is loaded.
    teacher_config = load_model_config(cfg.teacher, "teacher")
    tokenizer = load_tokenizer(cfg.teacher, "teacher tokenizer")
    corpus = TokenizedCorpus(cfg.corpus, tokenizer, accelerator.process_index, accelerator.num_processes,
                             cfg.train.seed)
    student = build_student(cfg.student, teacher_config, cfg.teacher)
    check_teacher_student_fit(teacher_config, student.config, cfg.loss.attention, cfg.loss.attention_heads,
                              cfg.corpus.max_seq_len)
    layer_map = intermediate_layer_map(cfg.mapping, cfg.loss, teacher_config.num_hidden_layers,
                                       student.config.num_hidden_layers)
    output_dir = Path(cfg.output_dir)
    if accelerator.is_main_process:
        prepare_output_dir(output_dir, cfg.overwrite, cfg.train.resume_from)
        write_resolved_config(cfg, output_dir)
    accelerator.wait_for_everyone()

    total_steps = cfg.train.max_steps or steps_from_corpus(corpus, cfg.train, accelerator)

    teacher = load_teacher(cfg.teacher, cfg.train.teacher_dtype).to(accelerator.device)
    previous = Projections.load(cfg.student.checkpoint) if cfg.student.init == "checkpoint" else None
    projections = build_projections(student.config.hidden_size, teacher_config.hidden_size,
                                    layer_map.student_layers, cfg.loss.projection, previous)
    freeze_outside_encoder(student)
    model = StudentWithProjections(student, projections)
    freeze_unreached(model, layer_map, cfg.loss)
    header = {
        "mapping (student->teacher)": layer_map.describe(),
        "teacher_params": count_parameters(teacher),
        "student_params": count_parameters(student),
        "projection_params": count_parameters(projections),
    }
    with capture_attention_scores(teacher, layer_map.teacher_layers) as teacher_captured, \
            capture_attention_scores(student, layer_map.student_layers) as student_captured:

        def compute_terms(model, batch, progress):
            teacher_hidden, teacher_scores = teacher_features(teacher, batch, teacher_captured)
            projected = model(**batch)
            return intermediate_loss_terms(projected, dict(student_captured), teacher_hidden, teacher_scores,
                                           layer_map, cfg.loss, batch["attention_mask"])

        model, state, log = train_model(
            accelerator, model,
            lambda state: resumable_batches(corpus, state, cfg.train.batch_size, tokenizer.pad_token_id),
            compute_terms, cfg.train, output_dir, total_steps, "general distillation", header)
    log.event("skipped_lines", rank=accelerator.process_index, **corpus.skipped.as_dict())
    log.close()
    _save_student(accelerator, model, tokenizer, output_dir, state)
    return output_dir


def _save_student(accelerator, model, tokenizer, output_dir: Path, state: TrainState) -> None:
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        unwrapped = model
        unwrapped.student.save_pretrained(output_dir)
        tokenizer.save_pretrained(output_dir)
        unwrapped.projections.save(output_dir)
        mark_finished(output_dir, {"stage": "general", "steps": state.step, "tokens_seen": state.tokens_seen})
    accelerator.wait_for_everyone()
