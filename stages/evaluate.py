"""Teacher against student on a task, and the student's deployment artifacts: scores, retention, size,
CPU latency and training curves.

    tinydistill evaluate CONFIG [key=value ...] [--overwrite]    (CONFIG: like the `evaluate:` section of configs/quickstart.yaml)

Rows: teacher and student (PyTorch fp32) and, with `onnx_dir` (a `tinydistill export` folder of the
student), the student's ONNX fp32 graph and its int8 graph when the folder has one (ONNX Runtime, CPU); with
`ensemble` (two or more fine-tuned models, e.g. the teachers of an `ensemble_teachers` run), the
`ensemble` row scores their averaged probabilities at T = 1 (MT-DNN's ensemble teacher; regression:
the mean prediction). Its members read the same token ids; one ordering the same label names
differently has its logits put into the teacher's order. It is scored, not timed.
Output (`output_dir`): `report.json`, `report.md` (the table it also prints), `deployment.png` (score
against latency, marker area by size on disk) and `training_curves.png` (when the student's training logs
are found; both need matplotlib), `tinydistill_run.json`.
Scores are on `task.test` when it is set, else on `task.dev`; both are in report.json when both are set.
The student may be a `tinydistill bilstm` output (a directory with `bilstm_config.json`); each model reads
the texts through its own tokenizer.

Latency is timed twice at each batch size: model only (the batch already tokenized) and end to end from
text (tokenisation included, what a user times). All rows are timed in turns over `latency.rounds` rounds
(see `pipeline/shipping/latency.py`), so load on a shared machine lands on every row alike; the report gives the
median and the spread, and says when the spread is large.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pipeline.config import write_resolved_config
from pipeline.distill.losses import ensemble_targets
from pipeline.errors import ConfigError, ModelError
from pipeline.models.bilstm import is_bilstm_dir, load_bilstm, load_bilstm_config
from pipeline.models.loading import count_parameters, load_model_config, load_pretrained, load_tokenizer
from pipeline.shipping.latency import time_interleaved
from pipeline.shipping.report import (
    complete_report,
    format_report_table,
    latency_batches,
    plot_deployment,
    plot_training_curves,
    write_report,
)
from pipeline.tasks.data import (
    TaskConfig,
    check_label_map,
    check_seq_len,
    label_names_from,
    label_permutation,
    load_task_split,
    model_class_for,
    predict_logits,
    score_predictions,
    tokenize_task,
)
from pipeline.tasks.metrics import main_metric
from pipeline.training.checkpoints import mark_finished, prepare_output_dir

TRAINING_LOGS = {  # where `tinydistill task` and `finetune` leave their logs, relative to the model
    "task step 1 (intermediate)": "intermediate/train_log.jsonl",
    "task step 2 (prediction)": "prediction/train_log.jsonl",
    "training": "train_log.jsonl",
}
CURVE_KEYS = ("loss", "hidden", "attention", "embedding", "soft_ce", "logits_mse", "hard_ce", "mse")


@dataclass(frozen=True)
class LatencyConfig:
    """CPU latency per example at each batch size, on the first examples of the split: every row timed in
    turns over `rounds` rounds, `min_seconds` per row and batch size in all (at least one pass a round)."""

    enabled: bool = True  # time the models
    batch_sizes: list[int] = field(default_factory=lambda: [1, 32])  # the batch sizes timed
    threads: int | None = None  # torch and ONNX Runtime threads while timing; null: torch's default
    min_seconds: float = 1.0  # seconds per model and batch size in all
    rounds: int = 5  # rounds of timing every model in turns
    end_to_end: bool = True  # also time from text (tokenisation included)

    def __post_init__(self):
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ConfigError(f"latency.batch_sizes: need sizes >= 1, got {self.batch_sizes}")
        if self.rounds < 1:
            raise ConfigError(f"latency.rounds: must be >= 1, got {self.rounds}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"latency.threads: must be >= 1, got {self.threads}")


@dataclass(frozen=True)
class EvaluateConfig:
    teacher: str  # the fine-tuned teacher
    student: str  # the student (a task or bilstm output)
    task: TaskConfig  # the task whose test (else dev) split is scored
    output_dir: str  # where report.md, report.json and the plots go
    name: str | None = None  # the task's name in the report; default: the train file's stem
    onnx_dir: str | None = None  # a `tinydistill export` folder of the student: adds its ONNX rows
    ensemble: list[str] | None = None  # fine-tuned models whose averaged probabilities make the `ensemble` row
    batch_size: int = 64  # batch size of scoring
    latency: LatencyConfig = field(default_factory=LatencyConfig)  # how CPU latency is timed
    overwrite: bool = False  # replace a finished output_dir

    def __post_init__(self):
        if self.ensemble is not None and len(self.ensemble) < 2:
            raise ConfigError(f"ensemble: needs at least 2 models, got {len(self.ensemble)}")


@dataclass
class Artifact:
    """One row of the report: a model on disk, how it is run, and what it reads its text with."""

    path: str
    runtime: str  # "pytorch" or "onnxruntime"
    precision: str  # "fp32" or "int8"
    config: object  # what holds the label map (a model config, or a BiLSTM config)
    tokenizer: object
    load: Callable[[], object]  # the model: a torch module, or an OnnxModel (called the same way)
    size_mb: float
    parameters: int | None = None  # None: counted on the loaded model


def run_evaluate(cfg: EvaluateConfig) -> str:
    """Score every row, time them in turns, write the report; returns the Markdown table and the paths."""
    task = cfg.task
    if not task.dev and not task.test:
        raise ConfigError("task.dev / task.test: set at least one split to evaluate on")
    artifacts = {"teacher": _torch_artifact(cfg.teacher, "teacher", task.type),
                 "student": _torch_artifact(cfg.student, "student", task.type)}
    if cfg.onnx_dir:
        artifacts.update(_onnx_artifacts(cfg.onnx_dir, cfg.student, task.type,
                                         cfg.latency.threads or torch.get_num_threads()))
    check_seq_len(task, *(artifact.config for artifact in artifacts.values()))
    label_names = label_names_from(task, load_task_split(task, "train")) if task.train else task.labels
    orders = {role: check_label_map(artifact.config, label_names, role, task_type=task.type)
              for role, artifact in artifacts.items()}
    for role, order in orders.items():
        if order != orders["teacher"]:
            raise ModelError(f"teacher and {role} order their labels differently ({orders['teacher']} vs "
                             f"{order}); scores would not be comparable")
    label_names = orders["teacher"]
    members = _ensemble_members(cfg.ensemble, task, label_names) if cfg.ensemble else None
    splits = {split: load_task_split(task, split) for split in ("dev", "test") if getattr(task, split)}
    report_split = "test" if "test" in splits else "dev"
    # Each model reads the text through its own tokenizer (a BiLSTM student has its own vocabulary).
    data = {role: {split: tokenize_task(raw, artifact.tokenizer, task, label_names, split)
                   for split, raw in splits.items()} for role, artifact in artifacts.items()}
    output_dir = Path(cfg.output_dir)
    prepare_output_dir(output_dir, cfg.overwrite, None)
    write_resolved_config(cfg, output_dir)

    device = torch.device("cpu")
    loaded = {role: artifact.load().to(device).eval() for role, artifact in artifacts.items()}
    split_scores = {
        role: {split: score_predictions(task, label_names, predict_logits(
            loaded[role], rows, cfg.batch_size, artifacts[role].tokenizer.pad_token_id, device), rows)
               for split, rows in data[role].items()}
        for role in artifacts}
    if members:
        split_scores["ensemble"], ensemble_row = _score_ensemble(members, task, label_names, splits, cfg.batch_size,
                                                                 device)
    latency = _time_rows(cfg.latency, task, splits[report_split], artifacts, loaded) if cfg.latency.enabled else {}
    models = {role: {"path": artifact.path, "runtime": artifact.runtime, "precision": artifact.precision,
                     "metrics": split_scores[role][report_split], "size_mb": artifact.size_mb,
                     "parameters": artifact.parameters or count_parameters(loaded[role]),
                     **latency.get(role, {"latency": {}})}
              for role, artifact in artifacts.items()}
    if members:
        models["ensemble"] = {**ensemble_row, "metrics": split_scores["ensemble"][report_split], "latency": {}}
    report = complete_report({
        "task": {"name": cfg.name or Path(task.train or task.dev or "task").stem, "type": task.type,
                 "split": report_split, "rows": len(splits[report_split]), "labels": label_names},
        "main_metric": main_metric(task.type),
        "models": models,
        "splits": split_scores,
        "latency_setup": {"device": "cpu", "threads": cfg.latency.threads or torch.get_num_threads(),
                          "max_seq_len": task.max_seq_len, "rounds": cfg.latency.rounds,
                          "timing": "interleaved"},
    })
    json_path, markdown_path = write_report(report, output_dir)
    logs = {name: Path(cfg.student) / rel for name, rel in TRAINING_LOGS.items() if (Path(cfg.student) / rel).is_file()}
    curves = plot_training_curves(logs, output_dir / "training_curves.png", keys=CURVE_KEYS) if logs else None
    deployment = plot_deployment(report, output_dir / "deployment.png")
    mark_finished(output_dir, {"stage": "evaluate", "retention_percent": report["retention_percent"],
                               "parameter_ratio": report["parameter_ratio"]})
    lines = [format_report_table(report), f"report: {markdown_path} and {json_path}"]
    lines += [f"{what}: {plot}" for what, plot in (("training curves", curves), ("deployment plot", deployment))
              if plot]
    return "\n".join(lines)


def ensemble_predictions(member_logits: list[list[np.ndarray]], task_type: str) -> list[np.ndarray]:
    """Per example, the ensemble's output from each member's logits (`member_logits[k][i]`: member k,
    example i, (C,) or (L_i, C) for token tasks): (1/K) sum_k softmax(z_k) at T = 1, or for regression
    the mean prediction; extractive QA ((L_i, 2) per window): the log of the averaged start and end
    distributions over positions, which span decoding reads as logits. Its argmax is the ensemble's label,
    so `score_predictions` takes it as logits."""

    def combine(i: int) -> np.ndarray:
        rows = [torch.from_numpy(np.asarray(logits[i], dtype=np.float32)) for logits in member_logits]
        if task_type == "qa":  # per window (L, 2): softmax over positions, i.e. over the last axis of (2, L)
            return ensemble_targets([z.T for z in rows], 1.0, "probabilities").log().T.numpy()
        return ensemble_targets(rows, 1.0, "logits" if task_type == "regression" else "probabilities").numpy()

    return [combine(i) for i in range(len(member_logits[0]))]


def _ensemble_members(paths: list[str], task: TaskConfig, label_names: list[str] | None) -> list[tuple]:
    """(path, role, tokenizer, permutation into the teacher's label order) per member, checked before any
    scoring: label names (as for the teacher), sequence length, and one vocabulary for all."""
    members = []
    for index, path in enumerate(paths):
        role = f"ensemble[{index}]"
        config, tokenizer = load_model_config(path, role), load_tokenizer(path, f"{role} tokenizer")
        order = check_label_map(config, label_names, role, task_type=task.type)
        check_seq_len(task, config)
        if members and tokenizer.get_vocab() != members[0][2].get_vocab():
            raise ModelError(f"{role}: {path} has another vocabulary than ensemble[0] {paths[0]}; the members "
                             "must read the same token ids")
        members.append((path, role, tokenizer, label_permutation(order, label_names)))
    return members


def _score_ensemble(members: list[tuple], task: TaskConfig, label_names, splits: dict, batch_size: int,
                    device) -> tuple[dict, dict]:
    """({split: metrics} of the averaged probabilities, the report row's other fields); members are
    loaded one at a time."""
    tokenizer = members[0][2]
    data = {split: tokenize_task(raw, tokenizer, task, label_names, split) for split, raw in splits.items()}
    logits = {split: [] for split in data}
    parameters, size_mb = 0, 0.0
    for path, role, _, order in members:
        model = load_pretrained(model_class_for(task.type), path, role, dtype=torch.float32).to(device).eval()
        parameters, size_mb = parameters + count_parameters(model), size_mb + _weights_mb(Path(path))
        for split, rows in data.items():
            member = predict_logits(model, rows, batch_size, tokenizer.pad_token_id, device)
            logits[split].append(member if order is None else [z[..., order] for z in member])
        del model
    scores = {split: score_predictions(task, label_names, ensemble_predictions(logits[split], task.type), rows)
              for split, rows in data.items()}
    row = {"path": " + ".join(path for path, *_ in members), "runtime": "pytorch", "precision": "fp32",
           "members": [path for path, *_ in members], "size_mb": size_mb, "parameters": parameters}
    return scores, row


def _time_rows(cfg: LatencyConfig, task: TaskConfig, rows, artifacts: dict[str, Artifact], loaded: dict) -> dict:
    """{role: {"latency": table, "latency_end_to_end": table}}, every row timed in turns at each batch size."""
    texts, pairs = _latency_texts(task, rows)
    tables: dict[str, dict] = {role: {"latency": {}, **({"latency_end_to_end": {}} if cfg.end_to_end else {})}
                               for role in artifacts}
    previous_threads = torch.get_num_threads()
    try:
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        with torch.inference_mode():
            for size in sorted(cfg.batch_sizes):
                runners = {}
                for role, artifact in artifacts.items():
                    batch = latency_batches(artifact.tokenizer, texts, pairs, task.max_seq_len, (size,))[size]
                    runners[(role, "latency")] = _runner(loaded[role], batch)
                    if cfg.end_to_end:
                        runners[(role, "latency_end_to_end")] = _text_runner(loaded[role], artifact.tokenizer, texts,
                                                                              pairs, task.max_seq_len, size)
                timed = time_interleaved(runners, cfg.rounds, cfg.min_seconds / cfg.rounds)
                for (role, kind), result in timed.items():
                    tables[role][kind][size] = {"ms_per_batch": result["ms"], "ms_per_example": result["ms"] / size,
                                                "spread_percent": result["spread_percent"],
                                                "repeats": result["repeats"]}
    finally:
        torch.set_num_threads(previous_threads)
    return tables


def _runner(model, batch: dict) -> Callable[[], object]:
    return lambda: model(**batch)


def _text_runner(model, tokenizer, texts, pairs, max_seq_len: int, size: int) -> Callable[[], object]:
    return lambda: model(**latency_batches(tokenizer, texts, pairs, max_seq_len, (size,))[size])


def _torch_artifact(path: str, role: str, task_type: str) -> Artifact:
    """A saved model: a Hugging Face model, or a `tinydistill bilstm` student (its config and vocabulary
    play the same parts: label map, `pad_token_id`, tokenizer calls)."""
    if is_bilstm_dir(path):
        model, vocab = load_bilstm(path)
        if model.config.task_type != task_type:
            raise ModelError(f"{role} {path} is a BiLSTM for {model.config.task_type}, not {task_type}")
        return Artifact(path, "pytorch", "fp32", model.config, vocab, lambda: model, _weights_mb(Path(path)))
    config, tokenizer = load_model_config(path, role), load_tokenizer(path, f"{role} tokenizer")
    return Artifact(path, "pytorch", "fp32", config, tokenizer,
                    lambda: load_pretrained(model_class_for(task_type), path, role, dtype=torch.float32),
                    _weights_mb(Path(path)))


def _onnx_artifacts(export_dir: str, student: str, task_type: str, threads: int) -> dict[str, Artifact]:
    """The student's rows from a `tinydistill export` folder: ONNX fp32, and int8 when it was written."""
    from pipeline.shipping.export import ONNX_FILES
    from pipeline.shipping.export.graph import TASK_HEADS
    from pipeline.shipping.export.runtime import OnnxModel, read_export_info

    info = read_export_info(export_dir)
    source = Path(info["source"])
    if source.exists() and source.resolve() != Path(student).resolve():  # a moved source cannot be checked
        raise ModelError(f"onnx_dir: {export_dir} was exported from {source}, not from the student {student}")
    heads = TASK_HEADS[task_type]
    if info["head"] not in heads:
        raise ModelError(f"onnx_dir: {export_dir} holds a {info['head']} export; a {task_type} task needs one "
                         f"of: {', '.join(heads)}")
    root = Path(export_dir)
    if info["head"] == "bilstm":
        config, tokenizer = load_bilstm_config(root)
    else:
        config, tokenizer = load_model_config(export_dir, "onnx_dir"), load_tokenizer(export_dir, "onnx_dir tokenizer")
    artifacts = {}
    for role, precision in (("student onnx", "fp32"), ("student onnx int8", "int8")):
        path = root / ONNX_FILES[precision]
        if not path.is_file() and precision == "fp32":
            raise ModelError(f"onnx_dir: {export_dir} has no {path.name}")
        if path.is_file():
            artifacts[role] = Artifact(str(path), "onnxruntime", precision, config, tokenizer,
                                       lambda path=path: OnnxModel(path, threads), path.stat().st_size / 1e6,
                                       parameters=info["parameters"])
    return artifacts


def _weights_mb(directory: Path) -> float:
    """Size on disk of a saved model's weights (model*.safetensors or pytorch_model*.bin), in MB."""
    files = [*directory.glob("model*.safetensors"), *directory.glob("pytorch_model*.bin")]
    return sum(path.stat().st_size for path in files) / 1e6


def _latency_texts(task: TaskConfig, rows) -> tuple[list[str], list[str] | None]:
    """Raw texts of the first 64 examples (token tasks: their tokens joined back into text)."""
    head = rows.select(range(min(64, len(rows))))
    if task.type == "token":
        return ["".join(t) if all(len(w) == 1 for w in t) else " ".join(t) for t in head[task.tokens]], None
    if task.type == "qa":
        return head[task.question], head[task.context]
    return head[task.text], (head[task.text_pair] if task.text_pair else None)
