"""Running an exported file: an ONNX Runtime session behind the call the task code makes on a PyTorch model."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.errors import ModelError
from pipeline.shipping.export import EXPORT_INFO, require_onnxruntime


@dataclass
class OnnxOutput:
    logits: torch.Tensor


class OnnxModel:
    """`model(input_ids=..., attention_mask=..., token_type_ids=...).logits`, as `predict_logits` and the
    latency timers call a PyTorch model, answered by an ONNX Runtime CPU session. Inputs the graph does not
    take are ignored; a missing `token_type_ids` is zeros."""

    training = False

    def __init__(self, path: str | Path, threads: int | None = None):
        require_onnxruntime()
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise ModelError(f"ONNX file not found: {path}")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # no warnings about unused initializers on every load
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.path = path
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names = [node.name for node in self.session.get_inputs()]
        self.output_name = self.session.get_outputs()[0].name

    def run(self, batch: dict) -> torch.Tensor:
        """The graph's one output for a batch of tensors (or arrays), as a float32 tensor."""
        ids = batch["input_ids"]
        feed = {name: _int64(batch[name] if name in batch else torch.zeros_like(torch.as_tensor(ids)))
                for name in self.input_names}
        return torch.from_numpy(self.session.run([self.output_name], feed)[0]).float()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> OnnxOutput:
        """The PyTorch-style signature, which `forward_input_names` reads to choose the batch keys."""
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        return OnnxOutput(self.run({k: v for k, v in batch.items() if v is not None}))

    def __call__(self, **batch) -> OnnxOutput:
        return self.forward(**{k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch})

    def eval(self) -> OnnxModel:
        return self

    def to(self, _device) -> OnnxModel:
        return self


def read_export_info(export_dir: str | Path) -> dict:
    """`export.json` of an export folder, or a one-line error when the folder is not one."""
    path = Path(export_dir) / EXPORT_INFO
    if not path.is_file():
        raise ModelError(f"{export_dir} is not a tinydistill export (no {EXPORT_INFO}); make one with "
                         "tinydistill export MODEL_DIR OUTPUT_DIR")
    return json.loads(path.read_text(encoding="utf-8"))


def _int64(value) -> np.ndarray:
    array = value.cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    return array.astype(np.int64, copy=False)
