"""Fine-tune a pretrained model on a task: the teacher for task distillation, when yours is only pretrained.
Extractive QA (`task.type: qa`) trains an `AutoModelForQuestionAnswering`: the cross-entropy of the gold
start and of the gold end over each window's [CLS] and context positions.

    tinydistill finetune configs/finetune_tnews_zh.yaml [key=value ...] [--resume] [--overwrite]

Output (`output_dir`): the best model on dev (or the last, without dev) in `save_pretrained` format,
with its label map (`id2label`/`label2id`) in config.json and the tokenizer; `metrics.json` (dev and
test scores of that model); `train_log.jsonl`; `checkpoints/`; `best/`; `tinydistill_run.json` last.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from pipeline.checkpoints import mark_finished, prepare_output_dir, write_json
from pipeline.config import write_resolved_config
from pipeline.losses import hard_cross_entropy, logits_mse
from pipeline.models import (
    count_parameters,
    forward_input_names,
    load_model_config,
    load_pretrained,
    load_tokenizer,
)
from pipeline.prediction import span_rows
from pipeline.runtime import make_accelerator
from pipeline.schema import TrainConfig
from pipeline.tasks import (
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
from pipeline.train_loop import BEST_DIR, dev_evaluation, train_on_task_data


@dataclass(frozen=True)
class FinetuneConfig:
    model: str
    task: TaskConfig
    output_dir: str
    train: TrainConfig = field(default_factory=TrainConfig)
    eval_every: int | None = None  # steps between dev evaluations; default once per epoch
    eval_batch_size: int = 64
    overwrite: bool = False

    def __post_init__(self):
        self.train.without_teacher()


def run_finetune(cfg: FinetuneConfig) -> Path:
    """Fine-tune `cfg.model` on `cfg.task`; returns the output directory."""
    accelerator, train = make_accelerator(cfg.train, cfg.output_dir)
    tokenizer = load_tokenizer(cfg.model, "model tokenizer")
    check_seq_len(cfg.task, load_model_config(cfg.model, "model"))
    raw = {"train": load_task_split(cfg.task, "train"),
           "dev": load_task_split(cfg.task, "dev") if cfg.task.dev else None,
           "test": load_task_split(cfg.task, "test") if cfg.task.test else None}
    label_names = label_names_from(cfg.task, raw["train"])
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

    evaluation = dev_evaluation(cfg.task, label_names, data["dev"], cfg.eval_batch_size, tokenizer.pad_token_id,
                                accelerator.device, cfg.eval_every, save_model)
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
        write_json(output_dir / "metrics.json", {"best_step": state.best_step, **metrics})
        mark_finished(output_dir, {"stage": "finetune", "steps": state.step, **metrics})
    accelerator.wait_for_everyone()
    return output_dir
