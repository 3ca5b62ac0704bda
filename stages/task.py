"""Stage two: task-specific distillation from a fine-tuned teacher (TinyBERT section 3.3).

    tinydistill task configs/task_reviews_zh.yaml [key=value ...] [--resume] [--overwrite]

Step 1 (intermediate): stage one's embedding, hidden and attention losses on the transfer set.
Step 2 (prediction): soft cross-entropy (or logits MSE) against the teacher's logits, optionally plus
gold-label CE; the teacher's logits come from an on-disk cache, so step 2 runs no teacher forward.
The best student on dev is the result.

Output (`output_dir`): the student in `save_pretrained` format (AutoModelForSequenceClassification /
AutoModelForTokenClassification, label map included) with the tokenizer and `metrics.json`;
`intermediate/` and `prediction/` hold each step's log, checkpoints and result; `tinydistill_run.json`
is written last.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from pipeline.capture import capture_attention_scores
from pipeline.checkpoints import FINISHED_MARKER, mark_finished, prepare_output_dir, write_json
from pipeline.config import write_resolved_config
from pipeline.errors import ConfigError
from pipeline.intermediate import (
    StudentWithProjections,
    freeze_outside_encoder,
    intermediate_loss_terms,
    teacher_features,
)
from pipeline.layer_map import build_layer_map
from pipeline.logits_cache import DEFAULT_CACHE_DIR, with_teacher_logits
from pipeline.metrics import main_metric
from pipeline.models import (
    build_student,
    check_teacher_student_fit,
    count_parameters,
    load_model_config,
    load_pretrained,
    load_teacher,
    load_tokenizer,
)
from pipeline.prediction import PredictionLossConfig, prediction_terms
from pipeline.projections import Projections, build_projections
from pipeline.runtime import make_accelerator
from pipeline.schema import IntermediateLossConfig, MappingConfig, StudentConfig, TrainConfig
from pipeline.tasks import (
    TaskConfig,
    check_label_map,
    check_seq_len,
    label_maps,
    label_names_from,
    load_task_split,
    load_transfer,
    model_class_for,
    predict_logits,
    score_predictions,
    score_splits,
    tokenize_splits,
    tokenize_task,
)
from pipeline.train_loop import BEST_DIR, Evaluation, train_on_task_data

INTERMEDIATE_DIR, PREDICTION_DIR = "intermediate", "prediction"


@dataclass(frozen=True)
class IntermediateStepConfig:
    """Step 1. TinyBERT: 10-20 epochs on the augmented set, lr 5e-5, constant (schedule: constant,
    warmup_ratio: 0)."""

    enabled: bool = True
    loss: IntermediateLossConfig = field(default_factory=IntermediateLossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass(frozen=True)
class PredictionStepConfig:
    """Step 2. TinyBERT: 3 epochs, lr from {1e-5, 2e-5, 3e-5}, warmup 0.1 then linear decay."""

    enabled: bool = True
    loss: PredictionLossConfig = field(default_factory=PredictionLossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval_every: int | None = None  # steps between dev evaluations; default once per epoch
    cache_teacher_logits: bool = True


@dataclass(frozen=True)
class TaskDistillConfig:
    """`transfer`: the transfer set (a `tinydistill augment` output folder, or any file with the task's
    columns); default: the task's train split. `cache_dir`: where teacher logits are kept across runs."""

    teacher: str
    task: TaskConfig
    output_dir: str
    student: StudentConfig = field(default_factory=StudentConfig)
    transfer: str | None = None
    mapping: MappingConfig = field(default_factory=MappingConfig)
    intermediate: IntermediateStepConfig = field(default_factory=IntermediateStepConfig)
    prediction: PredictionStepConfig = field(default_factory=PredictionStepConfig)
    cache_dir: str = str(DEFAULT_CACHE_DIR)
    eval_batch_size: int = 64
    resume_from: str | None = None
    overwrite: bool = False

    def __post_init__(self):
        if not self.intermediate.enabled and not self.prediction.enabled:
            raise ConfigError("intermediate.enabled and prediction.enabled are both false: nothing to do")


def run_task(cfg: TaskDistillConfig) -> Path:
    """Distil the fine-tuned `cfg.teacher` into a student for `cfg.task`; returns the output directory."""
    accelerator = make_accelerator(cfg.prediction.train if cfg.prediction.enabled else cfg.intermediate.train,
                                   cfg.output_dir)
    # Inputs are checked before anything is written: models, label maps, columns, sequence lengths.
    teacher_config = load_model_config(cfg.teacher, "teacher")
    tokenizer = load_tokenizer(cfg.teacher, "teacher tokenizer")
    task = cfg.task
    raw_train = load_task_split(task, "train")
    label_names = check_label_map(teacher_config, label_names_from(task, raw_train), "teacher")
    raw_transfer = (load_transfer(task, cfg.transfer, need_labels=cfg.prediction.loss.needs_labels)
                    if cfg.transfer else raw_train)
    check_seq_len(task, teacher_config)
    student_model_class = model_class_for(task.type)
    student = build_student(cfg.student, teacher_config, cfg.teacher, model_class=student_model_class,
                            **label_maps(label_names))
    check_teacher_student_fit(teacher_config, student.config, cfg.intermediate.loss.attention,
                              cfg.intermediate.loss.attention_heads, task.max_seq_len)
    layer_map = build_layer_map(teacher_config.num_hidden_layers, student.config.num_hidden_layers,
                                cfg.mapping.teacher_layers, cfg.mapping.pairs, cfg.mapping.embeddings)
    needs_labels = cfg.prediction.enabled and cfg.prediction.loss.needs_labels
    transfer = tokenize_task(raw_transfer, tokenizer, task, label_names, "transfer", need_labels=needs_labels)
    data = tokenize_splits(task, tokenizer, label_names, {
        "dev": load_task_split(task, "dev") if task.dev else None,
        "test": load_task_split(task, "test") if task.test else None,
    })

    output_dir = Path(cfg.output_dir)
    if accelerator.is_main_process:
        _prepare(output_dir, cfg)
        write_resolved_config(cfg, output_dir)
    accelerator.wait_for_everyone()
    teacher = load_teacher(cfg.teacher, cfg.prediction.train.teacher_dtype, student_model_class)
    teacher.to(accelerator.device)
    pad_id = tokenizer.pad_token_id

    if cfg.intermediate.enabled:
        step_dir = output_dir / INTERMEDIATE_DIR
        if not (step_dir / FINISHED_MARKER).is_file():
            _intermediate_step(accelerator, cfg, teacher, student, layer_map, transfer, step_dir, tokenizer)
        student = load_pretrained(student_model_class, str(step_dir), "step-1 student", dtype=torch.float32)

    if cfg.prediction.enabled:
        step_dir = output_dir / PREDICTION_DIR
        if not (step_dir / FINISHED_MARKER).is_file():
            _prediction_step(accelerator, cfg, teacher, student, transfer, data, label_names, step_dir, tokenizer)
        student = load_pretrained(student_model_class, str(step_dir), "step-2 student", dtype=torch.float32)

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        student.save_pretrained(output_dir)
        tokenizer.save_pretrained(output_dir)
        metrics = score_splits(task, label_names, student.to(accelerator.device), data, cfg.eval_batch_size, pad_id,
                               accelerator.device)
        write_json(output_dir / "metrics.json", metrics)
        mark_finished(output_dir, {"stage": "task", "student_params": count_parameters(student),
                                   "teacher_params": count_parameters(teacher), **metrics})
    accelerator.wait_for_everyone()
    return output_dir


def _intermediate_step(accelerator, cfg: TaskDistillConfig, teacher, student, layer_map, transfer, step_dir: Path,
                       tokenizer) -> None:
    train = _with_resume(cfg.intermediate.train, cfg.resume_from)
    if accelerator.is_main_process:
        prepare_output_dir(step_dir, False, train.resume_from)
    accelerator.wait_for_everyone()
    previous = Projections.load(cfg.student.checkpoint) if cfg.student.init == "checkpoint" else None
    projections = build_projections(student.config.hidden_size, teacher.config.hidden_size,
                                    layer_map.student_layers, cfg.intermediate.loss.projection, previous)
    freeze_outside_encoder(student)
    model = StudentWithProjections(student, projections)
    header = {"step": "1/2 intermediate", "mapping (student->teacher)": layer_map.describe(),
              "transfer_rows": len(transfer), "student_params": count_parameters(student)}
    with capture_attention_scores(teacher, layer_map.teacher_layers) as teacher_captured, \
            capture_attention_scores(student, layer_map.student_layers) as student_captured:

        def compute_terms(model, batch, progress):
            teacher_hidden, teacher_scores = teacher_features(teacher, batch, teacher_captured)
            projected = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                              token_type_ids=batch["token_type_ids"])
            return intermediate_loss_terms(projected, dict(student_captured), teacher_hidden, teacher_scores,
                                           layer_map, cfg.intermediate.loss, batch["attention_mask"])

        model, state = train_on_task_data(accelerator, model, transfer, compute_terms, train, step_dir,
                                          tokenizer.pad_token_id, "task distillation 1/2 (intermediate)", header)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        model.student.requires_grad_(True)
        model.student.save_pretrained(step_dir)
        tokenizer.save_pretrained(step_dir)
        model.projections.save(step_dir)
        mark_finished(step_dir, {"stage": "task/intermediate", "steps": state.step})
    accelerator.wait_for_everyone()


def _prediction_step(accelerator, cfg: TaskDistillConfig, teacher, student, transfer, data, label_names,
                     step_dir: Path, tokenizer) -> None:
    step = cfg.prediction
    train = _with_resume(step.train, cfg.resume_from)
    if accelerator.is_main_process:
        prepare_output_dir(step_dir, False, train.resume_from)
    accelerator.wait_for_everyone()
    pad_id = tokenizer.pad_token_id
    task_type = cfg.task.type
    live_teacher = None
    if step.cache_teacher_logits:
        transfer, _ = with_teacher_logits(accelerator, transfer, teacher, cfg.teacher, cfg.cache_dir,
                                              cfg.eval_batch_size, pad_id, log=tqdm.write)
    else:
        live_teacher = teacher
    student.requires_grad_(True)

    def compute_terms(model, batch, progress):
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
        student_logits = model(**inputs).logits
        if live_teacher is not None:
            with torch.no_grad():
                teacher_logits = live_teacher(**inputs).logits.float()
        else:
            teacher_logits = batch["teacher_logits"]
        return prediction_terms(student_logits, teacher_logits, batch.get("labels"), task_type, step.loss,
                                progress, batch["attention_mask"])

    def save_model(model, directory: Path) -> None:
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)

    evaluation = None
    if data["dev"] is not None:
        evaluation = Evaluation(
            evaluate=lambda m: score_predictions(
                cfg.task, label_names, predict_logits(m, data["dev"], cfg.eval_batch_size, pad_id, accelerator.device),
                data["dev"]),
            metric=main_metric(task_type), every=step.eval_every, save_best=save_model,
        )
    header = {"step": "2/2 prediction", "loss": step.loss.kind if task_type != "regression" else "mse",
              "temperature": step.loss.temperature, "teacher_logits": "cached" if live_teacher is None else "live",
              "transfer_rows": len(transfer)}
    model, state = train_on_task_data(accelerator, student, transfer, compute_terms, train, step_dir, pad_id,
                                      "task distillation 2/2 (prediction)", header, evaluation)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        final = model
        if evaluation is not None:
            final = load_pretrained(type(model), str(step_dir / BEST_DIR), "best student", dtype=torch.float32)
        save_model(final, step_dir)
        mark_finished(step_dir, {"stage": "task/prediction", "steps": state.step, "best_step": state.best_step,
                                 "best_dev": state.best_metric})
    accelerator.wait_for_everyone()


def _with_resume(train: TrainConfig, resume_from: str | None) -> TrainConfig:
    return train if train.resume_from is not None or resume_from is None else replace(train, resume_from=resume_from)


def _prepare(output_dir: Path, cfg: TaskDistillConfig) -> None:
    """The run directory: refuse to clobber finished or unfinished runs unless asked."""
    started = any((output_dir / step).exists() for step in (INTERMEDIATE_DIR, PREDICTION_DIR))
    finished = (output_dir / FINISHED_MARKER).is_file()
    if started and not finished and cfg.resume_from is None and not cfg.overwrite:
        raise ConfigError(
            f"output_dir: {output_dir} holds an unfinished task distillation; pass --resume to continue it "
            "or --overwrite to start again"
        )
    prepare_output_dir(output_dir, cfg.overwrite, cfg.resume_from)
