"""Teacher-vs-student report: task metrics, size, latency and training curves, as JSON and Markdown.

The report dict (what `write_report` takes; `complete_report` fills in the derived fields):

    {
      "task": {"name": "chnsenticorp", "type": "classification", ...},   # free-form beyond these two
      "main_metric": "accuracy",                # a key of every model's "metrics" (metrics.main_metric)
      "models": {                               # "teacher" and "student" required; rows in this order,
        "teacher": {                            # teacher first; any further model is a row too
          "path": "runs/teacher",
          "metrics": {"accuracy": 0.95, "macro_f1": 0.94},          # name -> float
          "parameters": 102267648,                                  # count_parameters(model)
          "latency": {1: {"ms_per_batch": 12.0, "ms_per_example": 12.0, "repeats": 84},
                      32: {...}},                                   # measure_latency(...); may be {}
          # optional: "size_mb" (weights on disk), "runtime", "precision", and "latency_end_to_end"
          # (timed from text); a latency entry may hold "spread_percent" (interquartile range / median)
        },
        "student": {...same keys...},
      },
      "latency_setup": {"device": "cpu", "threads": 4, "max_seq_len": 128},  # optional, free-form
      # derived, always recomputed from "models" by complete_report (given values are replaced):
      "retention_percent": 97.9,     # student / teacher main metric x 100; None if the teacher scores 0
      "parameter_ratio": 7.5,        # teacher parameters / student parameters ("x smaller")
      "speedup": {1: 6.1, 32: 9.4},  # teacher / student ms_per_example, batch sizes both were timed at
    }

In report.json the batch-size keys are strings (JSON has no integer keys); every function here
accepts either.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch

from pipeline.config import atomic_write_text
from pipeline.errors import DataError
from pipeline.training.checkpoints import write_json

LatencyTable = dict[int, dict[str, float]]
NOISY_SPREAD_PERCENT = 25.0  # a latency spread above this is called out in report.md


def latency_batches(tokenizer, texts: Sequence[str], text_pairs: Sequence[str] | None, max_seq_len: int,
                    batch_sizes: Iterable[int] = (1, 32)) -> dict[int, dict[str, torch.Tensor]]:
    """One tokenized batch per batch size, built from the first `bs` texts (cycling when there are fewer).

    Each batch is padded to its own longest sequence (truncated at `max_seq_len`), as a serving
    system batching real requests would, so batch 1 carries no padding. Time teacher and student on
    the same batches so they see identical shapes.
    """
    if not texts:
        raise ValueError("latency_batches: no texts to build batches from")
    if text_pairs is not None and len(text_pairs) != len(texts):
        raise ValueError(f"latency_batches: {len(texts)} texts but {len(text_pairs)} text pairs")
    batches = {}
    for size in batch_sizes:
        if size < 1:
            raise ValueError(f"latency_batches: batch size must be >= 1, got {size}")
        picked = [i % len(texts) for i in range(size)]
        encoded = tokenizer(
            [texts[i] for i in picked], [text_pairs[i] for i in picked] if text_pairs is not None else None,
            padding="longest", truncation=True, max_length=max_seq_len, return_tensors="pt",
        )
        batches[size] = dict(encoded)
    return batches


def measure_latency(model: torch.nn.Module, batches_by_size: Mapping[int, Mapping[str, torch.Tensor]],
                    warmup: int = 2, min_repeats: int = 5, min_seconds: float = 1.0,
                    threads: int | None = None) -> LatencyTable:
    """Median forward-pass time per batch size: {bs: {"ms_per_batch", "ms_per_example", "repeats"}}.

    The model runs in eval mode under `torch.inference_mode()`; after `warmup` untimed passes, each
    batch is timed with `time.perf_counter` until there are at least `min_repeats` timings and
    `min_seconds` have passed. The median resists the odd slow pass (GC, a busy core).
    `threads` sets `torch.set_num_threads` for the measurement; the previous count and the model's
    train/eval mode are restored afterwards. Batches must already be on the model's device; on CUDA
    each timing waits for the GPU to finish.
    """
    if not batches_by_size:
        raise ValueError("measure_latency: no batches given")
    if warmup < 0 or min_repeats < 1 or min_seconds < 0:
        raise ValueError(f"measure_latency: need warmup >= 0, min_repeats >= 1, min_seconds >= 0; "
                         f"got {warmup}, {min_repeats}, {min_seconds}")
    if threads is not None and threads < 1:
        raise ValueError(f"measure_latency: threads must be >= 1, got {threads}")
    for size, batch in batches_by_size.items():
        for name, tensor in batch.items():
            if tensor.shape[0] != size:
                raise ValueError(f"measure_latency: batch {size} holds {name} with {tensor.shape[0]} rows")
    previous_threads, was_training = torch.get_num_threads(), model.training
    model.eval()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        with torch.inference_mode():
            return {int(size): _time_forward(model, batches_by_size[size], int(size), warmup, min_repeats,
                                             min_seconds)
                    for size in sorted(batches_by_size)}
    finally:
        torch.set_num_threads(previous_threads)
        model.train(was_training)


def _time_forward(model, batch, size: int, warmup: int, min_repeats: int, min_seconds: float) -> dict:
    on_cuda = any(tensor.is_cuda for tensor in batch.values())

    def forward() -> None:
        model(**batch)
        if on_cuda:
            torch.cuda.synchronize()

    for _ in range(warmup):
        forward()
    timings = []
    started = time.perf_counter()
    while len(timings) < min_repeats or time.perf_counter() - started < min_seconds:
        tick = time.perf_counter()
        forward()
        timings.append(time.perf_counter() - tick)
    ms_per_batch = statistics.median(timings) * 1000.0
    return {"ms_per_batch": ms_per_batch, "ms_per_example": ms_per_batch / size, "repeats": len(timings)}


def speedup(teacher_latency: Mapping, student_latency: Mapping) -> dict[int, float]:
    """Teacher ms/example over student ms/example, for each batch size both were timed at."""
    teacher, student = _by_batch_size(teacher_latency), _by_batch_size(student_latency)
    result = {}
    for size in sorted(teacher.keys() & student.keys()):
        student_ms = student[size]["ms_per_example"]
        if student_ms <= 0:
            raise ValueError(f"speedup: student latency at batch {size} is {student_ms} ms")
        result[size] = teacher[size]["ms_per_example"] / student_ms
    return result


def complete_report(report: Mapping) -> dict:
    """A copy of `report` with integer batch-size keys and the derived fields recomputed."""
    models = report.get("models")
    if not isinstance(models, Mapping) or "teacher" not in models or "student" not in models:
        raise ValueError("report: 'models' must hold a 'teacher' and a 'student'")
    main = report.get("main_metric")
    for name, model in models.items():
        for key in ("metrics", "parameters"):
            if key not in model:
                raise ValueError(f"report: models.{name} lacks {key!r}")
        if main not in model["metrics"]:
            raise ValueError(f"report: main_metric {main!r} is not in models.{name}.metrics")
        if model["parameters"] <= 0:
            raise ValueError(f"report: models.{name}.parameters must be > 0, got {model['parameters']}")
    models = {name: {**model, "latency": _by_batch_size(model.get("latency", {})),
                     **({"latency_end_to_end": _by_batch_size(model["latency_end_to_end"])}
                        if "latency_end_to_end" in model else {})}
              for name, model in models.items()}
    teacher, student = models["teacher"], models["student"]
    return {**report, "models": models,
            "retention_percent": _retention(student["metrics"][main], teacher["metrics"][main]),
            "parameter_ratio": teacher["parameters"] / student["parameters"],
            "speedup": speedup(teacher["latency"], student["latency"])}


def format_report_table(report: Mapping) -> str:
    """The Markdown table: one row per model (teacher first), each relative column against the teacher.

    Columns: model, the main metric then the other metrics, retention %, parameters (M), compression
    (teacher params / model params), size on disk (MB, when any row has it), ms/example at each timed
    batch size (model only), speed-up at each size, and end-to-end ms/example (when timed).
    """
    report = complete_report(report)
    main, models = report["main_metric"], report["models"]
    teacher = models["teacher"]
    metric_names = [main] + [key for model in models.values() for key in model["metrics"] if key != main]
    metric_names = list(dict.fromkeys(metric_names))
    sizes = sorted({size for model in models.values() for size in model["latency"]})
    e2e_sizes = sorted({size for model in models.values() for size in model.get("latency_end_to_end", {})})
    with_size = any("size_mb" in model for model in models.values())
    header = (["Model", *metric_names, "Retention %", "Params (M)", "Compression"] + ["Size (MB)"] * with_size
              + [f"ms/example @{size}" for size in sizes] + [f"Speed-up @{size}" for size in sizes]
              + [f"end-to-end ms/example @{size}" for size in e2e_sizes])
    rows = []
    for name in ["teacher", *[n for n in models if n != "teacher"]]:
        model = models[name]
        retention = _retention(model["metrics"][main], teacher["metrics"][main])
        speed = speedup(teacher["latency"], model["latency"])
        end_to_end = model.get("latency_end_to_end", {})
        rows.append(
            [name, *[_number(model["metrics"].get(key), ".4f") for key in metric_names],
             _number(retention, ".1f"), _number(model["parameters"] / 1e6, ".2f"),
             _number(teacher["parameters"] / model["parameters"], ".2f", "x")]
            + [_number(model.get("size_mb"), ".2f")] * with_size
            + [_number(model["latency"].get(size, {}).get("ms_per_example"), ".3f") for size in sizes]
            + [_number(speed.get(size), ".2f", "x") for size in sizes]
            + [_number(end_to_end.get(size, {}).get("ms_per_example"), ".3f") for size in e2e_sizes]
        )
    align = ["---"] + ["---:"] * (len(header) - 1)
    return "\n".join("| " + " | ".join(cells) + " |" for cells in [header, align, *rows]) + "\n"


def write_report(report: Mapping, output_dir: str | Path) -> tuple[Path, Path]:
    """Write `report.json` (the completed report dict) and `report.md`; returns both paths."""
    report = complete_report(report)
    output_dir = Path(output_dir)
    json_path, markdown_path = output_dir / "report.json", output_dir / "report.md"
    write_json(json_path, report)
    atomic_write_text(markdown_path, _markdown(report))
    return json_path, markdown_path


def _markdown(report: dict) -> str:
    task = report.get("task", {})
    lines = [f"# Distillation report: {task.get('name', 'unnamed task')}", "",
             f"Task type: {task.get('type', 'unknown')}. Main metric: `{report['main_metric']}`.", "",
             format_report_table(report),
             ("Retention = model / teacher main metric x 100. Compression = teacher parameters / model "
              "parameters. Speed-up = teacher / model ms per example at the same batch size (median of "
              "timed forward passes, the batch already tokenized). Size = the weights on disk. End-to-end "
              "= from raw text: tokenisation and forward pass.")]
    if report.get("latency_setup"):
        setup = ", ".join(f"{key}={value}" for key, value in report["latency_setup"].items())
        lines += ["", f"Latency setup: {setup}."]
    noisy = noisy_latencies(report)
    if noisy:
        lines += ["", f"Latency spread (interquartile range / median) above {NOISY_SPREAD_PERCENT:.0f}%: "
                  + ", ".join(noisy) + ". The machine was busy while timing; rerun on a quiet machine before "
                  "quoting these figures."]
    lines += ["", "Models:"] + [f"- {name}: `{model.get('path', '?')}`" for name, model in report["models"].items()]
    return "\n".join(lines) + "\n"


def noisy_latencies(report: Mapping) -> list[str]:
    """"model @batch (kind): spread%" for every timing whose spread is above NOISY_SPREAD_PERCENT."""
    found = []
    for name, model in report["models"].items():
        for kind, label in (("latency", "model only"), ("latency_end_to_end", "end to end")):
            for size, row in _by_batch_size(model.get(kind, {})).items():
                if row.get("spread_percent", 0.0) > NOISY_SPREAD_PERCENT:
                    found.append(f"{name} @{size} ({label}): {row['spread_percent']:.0f}%")
    return found


def plot_deployment(report: Mapping, output_png: str | Path) -> Path | None:
    """Score against model-only latency at the smallest timed batch size, one point per row, its area by
    size on disk. None when no row was timed or matplotlib is not installed."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    report = complete_report(report)
    sizes = sorted({size for model in report["models"].values() for size in model["latency"]})
    if not sizes:
        return None
    size, main = sizes[0], report["main_metric"]
    figure = Figure(figsize=(6.5, 4.2), layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    for name, model in report["models"].items():
        if size not in model["latency"]:
            continue
        x, y, mb = model["latency"][size]["ms_per_example"], model["metrics"][main], model.get("size_mb") or 0.0
        ax.scatter([x], [y], s=40 + 400 * math.sqrt(mb / max(1.0, _largest_size(report))), alpha=0.6)
        ax.annotate(f"{name} ({mb:.1f} MB)", (x, y), textcoords="offset points", xytext=(6, 6), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel(f"ms per example at batch {size} (model only, log scale)")
    ax.set_ylabel(main)
    ax.set_title("score vs latency; marker area: size on disk")
    ax.grid(alpha=0.3)
    return _save_png_atomically(figure, Path(output_png))


def _largest_size(report: Mapping) -> float:
    return max((model.get("size_mb") or 0.0) for model in report["models"].values())


def read_logged_steps(path: str | Path) -> list[dict]:
    """The logging-step records of a `train_log.jsonl`: objects with a numeric "step" and no "event".

    Blank lines, event lines (run header, skipped-lines notices) and lines that do not parse (the
    last line of a run killed mid-write) are skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"training log {path} does not exist")
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "event" not in record and _is_number(record.get("step")):
            records.append(record)
    return records


def plot_training_curves(logs: Mapping[str, str | Path], output_png: str | Path,
                         keys: tuple[str, ...] = ("loss",)) -> Path | None:
    """One subplot per training log, one line per key in `keys` (e.g. "loss", "hidden", "dev_accuracy").

    Logs or keys with no logged values are left out. Returns the PNG path, or None when nothing was
    plotted or when matplotlib (the optional `report` extra) is not installed. The PNG is written
    to a temp name and renamed.
    """
    try:  # pyplot is avoided: the Agg canvas needs no display and changes no global backend
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    curves_by_log = {}
    for name, path in logs.items():
        records = read_logged_steps(path)
        curves = {key: [(r["step"], float(r[key])) for r in records if _is_number(r.get(key))] for key in keys}
        curves = {key: points for key, points in curves.items() if points}
        if curves:
            curves_by_log[name] = curves
    if not curves_by_log:
        return None
    figure = Figure(figsize=(7, 2.8 * len(curves_by_log)), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(curves_by_log), 1, squeeze=False)[:, 0]
    for ax, (name, curves) in zip(axes, curves_by_log.items()):
        values = []
        for key, points in curves.items():
            steps, ys = zip(*points)
            ax.plot(steps, ys, label=key, marker="." if len(points) <= 30 else None)
            values += [y for y in ys if math.isfinite(y)]
        # distillation losses fall by orders of magnitude; on a linear axis only the first drop shows
        if values and min(values) > 0 and max(values) / min(values) >= 100:
            ax.set_yscale("log")
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend()
    return _save_png_atomically(figure, Path(output_png))


def _save_png_atomically(figure, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            figure.savefig(handle, format="png", dpi=100)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def _by_batch_size(latency: Mapping) -> LatencyTable:
    return {int(size): dict(row) for size, row in latency.items()}


def _retention(score: float, teacher_score: float) -> float | None:
    return score / teacher_score * 100.0 if teacher_score else None


def _number(value: float | None, spec: str, suffix: str = "") -> str:
    return "–" if value is None else f"{value:{spec}}{suffix}"


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
