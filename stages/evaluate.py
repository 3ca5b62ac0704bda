"""Teacher against student on a task: scores, retention, size, CPU latency and training curves.

    tinydistill evaluate CONFIG [key=value ...] [--overwrite]    (CONFIG: like the `evaluate:` section of configs/quickstart.yaml)

Output (`output_dir`): `report.json`, `report.md` (the table it also prints), `training_curves.png`
(when the student's training logs are found and matplotlib is installed), `tinydistill_run.json`.
Scores are on `task.test` when it is set, else on `task.dev`; both are in report.json when both are set.
The student may be a `tinydistill bilstm` output (a directory with `bilstm_config.json`); each model reads
the texts through its own tokenizer, and latency is timed on the same texts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from pipeline.bilstm import is_bilstm_dir, load_bilstm
from pipeline.checkpoints import mark_finished, prepare_output_dir
from pipeline.config import write_resolved_config
from pipeline.errors import ConfigError, ModelError
from pipeline.metrics import main_metric
from pipeline.models import count_parameters, load_model_config, load_pretrained, load_tokenizer
from pipeline.report import (
    complete_report,
    format_report_table,
    latency_batches,
    measure_latency,
    plot_training_curves,
    write_report,
)
from pipeline.tasks import (
    TaskConfig,
    check_label_map,
    check_seq_len,
    label_names_from,
    load_task_split,
    model_class_for,
    predict_logits,
    score_predictions,
    tokenize_task,
)

TRAINING_LOGS = {  # where `tinydistill task` and `finetune` leave their logs, relative to the model
    "task step 1 (intermediate)": "intermediate/train_log.jsonl",
    "task step 2 (prediction)": "prediction/train_log.jsonl",
    "training": "train_log.jsonl",
}
CURVE_KEYS = ("loss", "hidden", "attention", "embedding", "soft_ce", "logits_mse", "hard_ce", "mse")


@dataclass(frozen=True)
class LatencyConfig:
    """CPU forward-pass latency per example, median over repeats, on the first examples of the split."""

    enabled: bool = True
    batch_sizes: list[int] = field(default_factory=lambda: [1, 32])
    threads: int | None = None  # torch threads while timing; null: torch's default
    min_seconds: float = 1.0  # time each batch size at least this long

    def __post_init__(self):
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ConfigError(f"latency.batch_sizes: need sizes >= 1, got {self.batch_sizes}")


@dataclass(frozen=True)
class EvaluateConfig:
    teacher: str
    student: str
    task: TaskConfig
    output_dir: str
    name: str | None = None  # the task's name in the report; default: the train file's stem
    batch_size: int = 64
    latency: LatencyConfig = field(default_factory=LatencyConfig)
    overwrite: bool = False


def run_evaluate(cfg: EvaluateConfig) -> str:
    """Score both models, time them, write the report; returns the Markdown table and the paths."""
    task = cfg.task
    if not task.dev and not task.test:
        raise ConfigError("task.dev / task.test: set at least one split to evaluate on")
    paths = {"teacher": cfg.teacher, "student": cfg.student}
    parts = {role: _model_parts(path, role, task.type) for role, path in paths.items()}
    check_seq_len(task, *(config for config, _, _ in parts.values()))
    label_names = label_names_from(task, load_task_split(task, "train")) if task.train else task.labels
    orders = {role: check_label_map(config, label_names, role) for role, (config, _, _) in parts.items()}
    if orders["teacher"] != orders["student"]:
        raise ModelError(f"teacher and student order their labels differently ({orders['teacher']} vs "
                         f"{orders['student']}); scores would not be comparable")
    label_names = orders["teacher"]
    splits = {split: load_task_split(task, split) for split in ("dev", "test") if getattr(task, split)}
    report_split = "test" if "test" in splits else "dev"
    # Each model reads the text through its own tokenizer (a BiLSTM student has its own vocabulary).
    data = {role: {split: tokenize_task(raw, tokenizer, task, label_names, split) for split, raw in splits.items()}
            for role, (_, tokenizer, _) in parts.items()}
    output_dir = Path(cfg.output_dir)
    prepare_output_dir(output_dir, cfg.overwrite, None)
    write_resolved_config(cfg, output_dir)

    device = torch.device("cpu")
    texts, pairs = _latency_texts(task, splits[report_split])
    models, split_scores = {}, {}
    for role, (_, tokenizer, load_model) in parts.items():
        model = load_model().to(device).eval()
        split_scores[role] = {
            split: score_predictions(task, label_names,
                                     predict_logits(model, rows, cfg.batch_size, tokenizer.pad_token_id, device), rows)
            for split, rows in data[role].items()
        }
        latency = {}
        if cfg.latency.enabled:
            batches = latency_batches(tokenizer, texts, pairs, task.max_seq_len, cfg.latency.batch_sizes)
            latency = measure_latency(model, batches, threads=cfg.latency.threads,
                                      min_seconds=cfg.latency.min_seconds)
        models[role] = {"path": paths[role], "metrics": split_scores[role][report_split],
                        "parameters": count_parameters(model), "latency": latency}
    report = complete_report({
        "task": {"name": cfg.name or Path(task.train or task.dev or "task").stem, "type": task.type,
                 "split": report_split, "rows": len(splits[report_split]), "labels": label_names},
        "main_metric": main_metric(task.type),
        "models": models,
        "splits": split_scores,
        "latency_setup": {"device": "cpu", "threads": cfg.latency.threads or torch.get_num_threads(),
                          "max_seq_len": task.max_seq_len},
    })
    json_path, markdown_path = write_report(report, output_dir)
    logs = {name: Path(cfg.student) / rel for name, rel in TRAINING_LOGS.items() if (Path(cfg.student) / rel).is_file()}
    plot = plot_training_curves(logs, output_dir / "training_curves.png", keys=CURVE_KEYS) if logs else None
    mark_finished(output_dir, {"stage": "evaluate", "retention_percent": report["retention_percent"],
                               "parameter_ratio": report["parameter_ratio"]})
    lines = [format_report_table(report), f"report: {markdown_path} and {json_path}"]
    if plot:
        lines.append(f"training curves: {plot}")
    return "\n".join(lines)


def _model_parts(path: str, role: str, task_type: str):
    """(config, tokenizer, load_model) of a saved model: a Hugging Face model, or a `tinydistill bilstm`
    student (its config and vocabulary play the same parts: label map, `pad_token_id`, tokenizer calls)."""
    if is_bilstm_dir(path):
        model, vocab = load_bilstm(path)
        if model.config.task_type != task_type:
            raise ModelError(f"{role} {path} is a BiLSTM for {model.config.task_type}, not {task_type}")
        return model.config, vocab, lambda: model
    config, tokenizer = load_model_config(path, role), load_tokenizer(path, f"{role} tokenizer")
    return config, tokenizer, lambda: load_pretrained(model_class_for(task_type), path, role, dtype=torch.float32)


def _latency_texts(task: TaskConfig, rows) -> tuple[list[str], list[str] | None]:
    """Raw texts of the first 64 examples (token tasks: their tokens joined back into text)."""
    head = rows.select(range(min(64, len(rows))))
    if task.type == "token":
        return ["".join(t) if all(len(w) == 1 for w in t) else " ".join(t) for t in head[task.tokens]], None
    return head[task.text], (head[task.text_pair] if task.text_pair else None)
