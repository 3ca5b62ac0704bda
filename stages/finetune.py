"""Fine-tune a pretrained model on a task: the teacher for task distillation, when yours is only pretrained.
Extractive QA (`task.type: qa`) trains an `AutoModelForQuestionAnswering`: the cross-entropy of the gold
start and of the gold end over each window's [CLS] and context positions.

    tinydistill finetune configs/finetune_tnews_zh.yaml [key=value ...] [--resume] [--overwrite]

Output (`output_dir`): the best model on dev (or the last, without dev) in `save_pretrained` format,
with its label map (`id2label`/`label2id`) in config.json and the tokenizer; `metrics.json` (dev and
test scores of that model, its step and epoch, and the epochs trained); `train_log.jsonl`;
`checkpoints/`; `best/`; `tinydistill_run.json` last.

With `early_stopping.patience`, training stops once the dev metric has not improved for that many
evaluations in a row (once per epoch, or every `eval_every` steps); `train.epochs` (or
`train.max_steps`) is the cap, and the learning-rate schedule is planned over the cap. With
`early_stopping.start_epoch`, patience counts only from the end of that epoch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from pipeline.config import write_resolved_config
from pipeline.distill.losses import hard_cross_entropy, logits_mse
from pipeline.distill.prediction import span_rows
from pipeline.errors import ConfigError
from pipeline.models.loading import (
    count_parameters,
    forward_input_names,
    load_model_config,
    load_pretrained,
    load_tokenizer,
)
from pipeline.schema import TrainConfig
from pipeline.tasks.data import (
    TaskConfig,
    check_seq_len,
    label_maps,
    label_names_from,
    load_task_split,
    model_class_for,
    score_splits,
    task_logits,
    tokenize_splits,
)
from pipeline.tasks.metrics import main_metric, metric_names
from pipeline.training.checkpoints import mark_finished, prepare_output_dir, write_json
from pipeline.training.runtime import make_accelerator
from pipeline.training.train_loop import BEST_DIR, dev_evaluation, planned_steps, train_on_task_data


@dataclass(frozen=True)
class EarlyStoppingConfig:
    """Fine-tune to the dev plateau: stop after `patience` dev evaluations in a row without a new best
    (null: train to the cap). `metric`: the dev metric that decides, and picks the saved model;
    default the task's main metric. `start_epoch`: patience counts only from the end of this epoch
    (Keras's `start_from_epoch`), so a score still on its floor is not taken for a plateau: NER's entity
    F1 sits at 0.0 while a model tags every token O, and 0.0 ties 0.0."""

    # dev evaluations in a row without a new best before stopping (null: train to the cap)
    patience: int | None = None
    # the dev metric that decides and picks the saved model (null: the task's main metric)
    metric: str | None = None
    # epochs of warm-up before patience starts to count (0: from the first evaluation)
    start_epoch: int = 0

    def __post_init__(self):
        if self.patience is not None and self.patience < 1:
            raise ConfigError(f"early_stopping.patience: must be >= 1, got {self.patience}")
        for name, value, unset in (("metric", self.metric, None), ("start_epoch", self.start_epoch, 0)):
            if value != unset and self.patience is None:
                raise ConfigError(f"early_stopping.{name}: only used with early_stopping.patience; set both or neither")
        if self.start_epoch < 0:
            raise ConfigError(f"early_stopping.start_epoch: must be >= 0, got {self.start_epoch}")


@dataclass(frozen=True)
class FinetuneConfig:
    model: str  # the pretrained model: a folder or hub id
    task: TaskConfig  # what the task is and where its data lives
    output_dir: str  # where the fine-tuned model (the task teacher), logs and checkpoints go
    train: TrainConfig = field(default_factory=TrainConfig)  # optimisation and runtime
    eval_every: int | None = None  # steps between dev evaluations; default once per epoch
    eval_batch_size: int = 64  # batch size of dev and test scoring
    # stop at the dev plateau
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    overwrite: bool = False  # replace a finished output_dir (--overwrite)

    def __post_init__(self):
        self.train.without_teacher()
        if self.early_stopping.patience is not None and not self.task.dev:
            raise ConfigError("early_stopping.patience: needs task.dev (the dev metric decides when to stop)")
        start, cap = self.early_stopping.start_epoch, self.train.epochs
        if start and self.train.max_steps is None and start >= cap:
            raise ConfigError(f"early_stopping.start_epoch: {start} leaves patience no epoch to count under "
                              f"train.epochs {cap}")


def run_finetune(cfg: FinetuneConfig) -> Path:
    """Fine-tune `cfg.model` on `cfg.task`; returns the output directory."""
    accelerator, train = make_accelerator(cfg.train, cfg.output_dir)
    tokenizer = load_tokenizer(cfg.model, "model tokenizer")
    check_seq_len(cfg.task, load_model_config(cfg.model, "model"))
    raw = {"train": load_task_split(cfg.task, "train"),
           "dev": load_task_split(cfg.task, "dev") if cfg.task.dev else None,
           "test": load_task_split(cfg.task, "test") if cfg.task.test else None}
    label_names = label_names_from(cfg.task, raw["train"])
    stopping_metric = _stopping_metric(cfg, label_names)
    data = tokenize_splits(cfg.task, tokenizer, label_names, raw)
    output_dir = Path(cfg.output_dir)
    if accelerator.is_main_process:
        prepare_output_dir(output_dir, cfg.overwrite, train.resume_from)
        write_resolved_config(cfg, output_dir)
    accelerator.wait_for_everyone()

    model = load_pretrained(model_class_for(cfg.task.type), cfg.model, "model", dtype=torch.float32,
                            **label_maps(label_names, cfg.task.type))
    task_type = cfg.task.type

    inputs = forward_input_names(model)

    def compute_terms(model, batch, progress):
        logits = task_logits(model(**{k: batch[k] for k in inputs}))
        if task_type == "qa":  # rows: every window's start, then its end; labels likewise
            loss = hard_cross_entropy(span_rows(logits, batch["position_mask"]), batch["labels"].t().reshape(-1))
        elif task_type == "regression":
            loss = logits_mse(logits, batch["labels"].float().reshape(-1, 1))
        else:
            loss = hard_cross_entropy(logits, batch["labels"])
        return {"loss": loss}

    def save_model(model, directory: Path) -> None:
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)

    _, per_epoch = planned_steps(len(data["train"]), train, accelerator.num_processes)
    evaluation = dev_evaluation(cfg.task, label_names, data["dev"], cfg.eval_batch_size, tokenizer.pad_token_id,
                                accelerator.device, cfg.eval_every, save_model, metric=stopping_metric,
                                patience=cfg.early_stopping.patience,
                                start_step=cfg.early_stopping.start_epoch * per_epoch)
    header = {"task": task_type, "labels": label_names, "train_rows": len(data["train"]),
              "parameters": count_parameters(model)}
    model, state = train_on_task_data(accelerator, model, data["train"], compute_terms, train, output_dir,
                                      tokenizer.pad_token_id, "fine-tuning", header, evaluation)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        final = model
        if evaluation is not None:
            final = load_pretrained(model_class_for(task_type), str(output_dir / BEST_DIR), "best model",
                                    dtype=torch.float32).to(accelerator.device)
        save_model(final, output_dir)
        metrics = score_splits(cfg.task, label_names, final, data, cfg.eval_batch_size, tokenizer.pad_token_id,
                               accelerator.device)
        epochs = _epochs_record(train, state, len(data["train"]), accelerator.num_processes)
        write_json(output_dir / "metrics.json", {"best_step": state.best_step, **epochs, **metrics})
        mark_finished(output_dir, {"stage": "finetune", "steps": state.step, **epochs, **metrics})
    accelerator.wait_for_everyone()
    return output_dir


def _stopping_metric(cfg: FinetuneConfig, label_names: list[str] | None) -> str | None:
    """The dev metric early stopping watches (None without early stopping), checked against the task's."""
    if cfg.early_stopping.patience is None:
        return None
    metric = cfg.early_stopping.metric or main_metric(cfg.task.type)
    known = metric_names(cfg.task.type, len(label_names) if label_names else None)
    if metric not in known:
        raise ConfigError(f"early_stopping.metric: {metric!r} is not a {cfg.task.type} metric here "
                          f"(one of: {', '.join(known)})")
    return metric


def _epochs_record(train: TrainConfig, state, train_rows: int, world_size: int) -> dict:
    """Epochs trained and the saved model's epoch (fractions when dev runs every `eval_every` steps)."""
    cap, per_epoch = planned_steps(train_rows, train, world_size)
    saved_step = state.best_step if state.best_metric is not None else state.step
    return {"epochs_used": round(state.step / per_epoch, 2), "best_epoch": round(saved_step / per_epoch, 2),
            "epochs_cap": round(cap / per_epoch, 2), "stopped_early": state.step < cap}
