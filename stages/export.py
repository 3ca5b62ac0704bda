"""Ship a model: ONNX export, optional int8 (and fp16) versions, each checked against PyTorch.

    tinydistill export MODEL_DIR OUTPUT_DIR [--int8] [--fp16] [--opset N] [--task-config YAML] [--overwrite]

MODEL_DIR: a `task`, `finetune` or `general` output (a teacher works too) or a `tinydistill bilstm` student.
The folder layout is in `pipeline/shipping/export/__init__.py`. Every file is run on the same padded batches as the
PyTorch model (the task's dev split with `task`, else generated text): an fp32 graph that differs by more
than `tolerance` is refused and nothing is written; int8 and fp16 are reported as measured. int8 is
quantised per tensor and per channel, and the file whose argmax agrees more often (then: smaller max
difference) is kept; export.json holds both candidates' figures.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import write_resolved_config
from pipeline.errors import ConfigError, ModelError
from pipeline.shipping.export import EXPORT_INFO, ONNX_FILES, require_onnxruntime
from pipeline.shipping.export.graph import EXPORTER, convert_fp16, export_onnx, load_source, quantize_int8
from pipeline.shipping.export.runtime import OnnxModel
from pipeline.shipping.export.validate import (
    compare,
    generated_rows,
    padded_batches,
    reference_outputs,
    task_rows,
    tracing_batch,
)
from pipeline.tasks.data import TaskConfig
from pipeline.training.checkpoints import FINISHED_MARKER, mark_finished, write_json

MIN_OPSET, MAX_OPSET = 14, 20  # sdpa needs 14; 20 is the TorchScript exporter's newest


@dataclass(frozen=True)
class ExportConfig:
    model: str  # the model folder to export (a task, finetune, general or bilstm output)
    output_dir: str  # where the ONNX files go
    int8: bool = False  # also write model.int8.onnx (dynamic int8 quantisation)
    fp16: bool = False  # also write model.fp16.onnx
    opset: int = 17  # the ONNX opset
    task: TaskConfig | None = None  # validate on its dev split (else test); none: generated text
    validation_rows: int = 256  # dev rows each ONNX file is checked on against PyTorch
    validation_batch_size: int = 32  # batch size of that check
    tolerance: float = 1e-3  # the largest max abs output difference allowed for the fp32 graph
    seed: int = 0  # of the generated validation text
    overwrite: bool = False  # replace an existing output_dir

    def __post_init__(self):
        if not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise ConfigError(f"opset: must be in [{MIN_OPSET}, {MAX_OPSET}], got {self.opset}")
        if self.tolerance <= 0:
            raise ConfigError(f"tolerance: must be > 0, got {self.tolerance}")
        for name in ("validation_rows", "validation_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")


def run_export(cfg: ExportConfig) -> str:
    """Export, convert, validate and write the folder in one rename; returns a summary of the files."""
    require_onnxruntime()
    output = Path(cfg.output_dir)
    _check_output(output, cfg.overwrite)
    source = load_source(cfg.model, cfg.task.type if cfg.task else None)
    if cfg.task is not None:
        rows, inputs = task_rows(source, cfg.task, cfg.validation_rows)
    else:
        rows, inputs = generated_rows(source, cfg.validation_rows, cfg.seed)
    batches = padded_batches(rows, cfg.validation_batch_size, source.tokenizer.pad_token_id)
    references = reference_outputs(source, batches)

    building = output.parent / f".{output.name}.{os.getpid()}.tmp"
    if building.exists():  # left by a run of this process id that was killed
        shutil.rmtree(building)
    building.mkdir(parents=True)
    try:
        files = _write_graphs(cfg, source, rows, batches, references, building)
        source.save_files(building)
        write_json(building / EXPORT_INFO, {
            "source": str(Path(cfg.model).resolve()), "head": source.head, "architecture": source.architecture,
            "inputs": source.input_names, "output": source.output_name, "labels": source.labels,
            "parameters": source.parameters,
            "exporter": EXPORTER, "opset": cfg.opset, "validation": {"inputs": inputs, "tolerance": cfg.tolerance},
            "files": files,
        })
        write_resolved_config(cfg, building)
        mark_finished(building, {"stage": "export", "files": sorted(files)})
        if output.exists():
            shutil.rmtree(output)
        os.replace(building, output)
    finally:
        if building.exists():
            shutil.rmtree(building)
    lines = [f"exported {cfg.model} ({source.architecture}) to {output}; checked on {inputs}:"]
    for name, figures in files.items():
        agreement = figures["argmax_agreement"]
        lines.append(f"  {name}: {figures['size_mb']:.2f} MB, max abs diff {figures['max_abs_diff']:.2e}"
                     + ("" if agreement is None else f", argmax agreement {100 * agreement:.2f}%"))
    return "\n".join(lines)


def _check_output(output: Path, overwrite: bool) -> None:
    if not output.exists():
        return
    if not overwrite:
        raise ConfigError(f"output {output} already exists; pass --overwrite (overwrite: true) to replace it")
    made_here = (output / EXPORT_INFO).is_file() or (output / FINISHED_MARKER).is_file()
    if not output.is_dir() or (any(output.iterdir()) and not made_here):
        raise ConfigError(f"output {output} exists and is not a tinydistill export; refusing to replace it")


def _write_graphs(cfg: ExportConfig, source, rows, batches, references, directory: Path) -> dict[str, dict]:
    """The ONNX files and their figures: {file name: {"size_mb", "max_abs_diff", "argmax_agreement", ...}}."""
    fp32 = directory / ONNX_FILES["fp32"]
    export_onnx(source, tracing_batch(rows, source.tokenizer.pad_token_id), fp32, cfg.opset)
    files = {fp32.name: _measure(source, references, fp32, batches)}
    if files[fp32.name]["max_abs_diff"] > cfg.tolerance:
        raise ModelError(f"the ONNX graph differs from PyTorch by {files[fp32.name]['max_abs_diff']:.3g} "
                         f"(tolerance {cfg.tolerance:g}); nothing was written")
    if cfg.int8:
        candidates = {}
        for per_channel in (False, True):
            path = directory / f".int8-{'per-channel' if per_channel else 'per-tensor'}.onnx"
            quantize_int8(fp32, path, per_channel)
            candidates[per_channel] = (path, _measure(source, references, path, batches))
        best = max(candidates, key=lambda k: (candidates[k][1]["argmax_agreement"] or 0,
                                              -candidates[k][1]["max_abs_diff"]))
        path, figures = candidates[best]
        os.replace(path, directory / ONNX_FILES["int8"])
        candidates[not best][0].unlink()
        files[ONNX_FILES["int8"]] = {**figures, "per_channel": best,
                                     "candidates": {("per_channel" if k else "per_tensor"): v[1]
                                                    for k, v in candidates.items()}}
    if cfg.fp16:
        convert_fp16(fp32, directory / ONNX_FILES["fp16"])
        files[ONNX_FILES["fp16"]] = _measure(source, references, directory / ONNX_FILES["fp16"], batches)
    return files


def _measure(source, references, path: Path, batches) -> dict:
    return {"size_mb": path.stat().st_size / 1e6, **compare(source, references, OnnxModel(path), batches)}
