"""What can be exported and how: the one place that knows the architectures, and the file conversions.

A model folder is one of
    sequence   a `*ForSequenceClassification` (a `task` or `finetune` output: students and teachers)
    token      a `*ForTokenClassification`
    encoder    a plain encoder (`*Model`, or a masked LM read without its head: a `general` student)
    bilstm     a `tinydistill bilstm` student
and becomes a module that takes the tokenizer's tensors as positional inputs and returns one tensor.

The graph is traced with the TorchScript exporter (`torch.onnx.export(..., dynamo=False)`). Both exporters
give the same logits on transformers 5 BERT with sdpa attention, padding masks and dynamic shapes; the
TorchScript one exports in a fraction of the time, writes one self-contained file (dynamo writes the
weights to a side file), its graph ran faster under ONNX Runtime (4L-312, batch 1: 3.5 vs 4.4 ms fp32,
1.8 vs 2.1 ms int8) and it exports the BiLSTM's `nn.LSTM` as one ONNX LSTM node.
"""

from __future__ import annotations

import logging
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pipeline.errors import ModelError
from pipeline.models.bilstm import BILSTM_CONFIG, BiLSTMGraph, is_bilstm_dir, load_bilstm
from pipeline.models.loading import count_parameters, load_model_config, load_pretrained, load_tokenizer
from pipeline.tasks.data import task_logits

SUPPORTED_MODEL_TYPES = ("bert",)  # exported and checked against PyTorch by tests/test_export.py
HEADS = {"ForSequenceClassification": "sequence", "ForTokenClassification": "token", "ForQuestionAnswering": "qa"}
ENCODER_SUFFIXES = ("Model", "ForMaskedLM", "ForPreTraining")
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
TASK_HEADS = {"classification": ("sequence", "bilstm"), "regression": ("sequence",), "token": ("token",),
              "qa": ("qa",)}
EXPORTER = "torchscript"


@dataclass
class ExportSource:
    """A loaded model ready to trace, with what an export folder needs to describe and reuse it."""

    module: nn.Module  # eval mode; positional `input_names` in, one tensor out
    head: str  # "sequence", "token", "qa" (start and end logits stacked: (B, L, 2)), "encoder" or "bilstm"
    architecture: str
    input_names: list[str]
    output_name: str
    tokenizer: object  # a Hugging Face tokenizer, or a BiLSTMVocab (called the same way)
    parameters: int
    max_length: int  # the longest input the model reads
    pair: bool  # a BiLSTM reading sentence pairs
    save_files: Callable[[Path], None]  # writes the tokenizer and the config (label map) into a folder
    labels: list[str] | None  # the output classes in id order (None: a plain encoder)

    @property
    def has_logits(self) -> bool:
        return self.head != "encoder"


class _OneTensor(nn.Module):
    """A Hugging Face model called with keyword inputs, returning one field of its output."""

    def __init__(self, model: nn.Module, input_names: list[str], output_name: str):
        super().__init__()
        self.model, self.input_names, self.output_name = model, input_names, output_name
        self.eval()  # a fresh module is in training mode, and `.train()` would switch dropout on inside

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        output = self.model(**dict(zip(self.input_names, inputs)))
        return task_logits(output) if self.output_name == "logits" else getattr(output, self.output_name)


def load_source(model_dir: str, task_type: str | None = None) -> ExportSource:
    """The model in `model_dir`, or a one-line `ModelError` saying why it cannot be exported (or, with
    `task_type`, why it cannot read that task's inputs), raised before any weights are read."""
    path = Path(model_dir)
    if is_bilstm_dir(path):
        _check_task(model_dir, "bilstm", task_type)
        return _bilstm_source(path)
    if not (path / "config.json").is_file():
        raise ModelError(f"{model_dir} is not a model folder (no config.json or {BILSTM_CONFIG})")
    config = load_model_config(model_dir, "model")
    architecture = (config.architectures or [f"{type(config).__name__.removesuffix('Config')}Model"])[0]
    head = next((kind for suffix, kind in HEADS.items() if architecture.endswith(suffix)), None)
    if head is None and architecture.endswith(ENCODER_SUFFIXES):
        head = "encoder"
    if config.model_type not in SUPPORTED_MODEL_TYPES or head is None:
        raise ModelError(
            f"{model_dir}: unsupported architecture {architecture} (model_type {config.model_type}); export "
            f"takes {', '.join(SUPPORTED_MODEL_TYPES)} models with a sequence classification, token "
            "classification or question-answering head, plain encoders and BiLSTM students")
    _check_task(model_dir, head, task_type)
    from transformers import (
        AutoModel,
        AutoModelForQuestionAnswering,
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
    )

    model_class = {"sequence": AutoModelForSequenceClassification, "token": AutoModelForTokenClassification,
                   "qa": AutoModelForQuestionAnswering, "encoder": AutoModel}[head]
    model = load_pretrained(model_class, model_dir, "model", dtype=torch.float32).eval()
    tokenizer = load_tokenizer(model_dir, "model tokenizer")
    input_names = [name for name in MODEL_INPUTS
                   if name in tokenizer.model_input_names or name in ("input_ids", "attention_mask")]
    output_name = "last_hidden_state" if head == "encoder" else "logits"

    def save_files(directory: Path) -> None:
        tokenizer.save_pretrained(directory)
        model.config.save_pretrained(directory)

    labels = None if head == "encoder" else [model.config.id2label[i] for i in range(model.config.num_labels)]
    return ExportSource(_OneTensor(model, input_names, output_name), head, architecture, input_names, output_name,
                        tokenizer, count_parameters(model), min(config.max_position_embeddings, 512), False,
                        save_files, labels)


def _check_task(model_dir: str, head: str, task_type: str | None) -> None:
    if task_type is not None and head != "encoder" and head not in TASK_HEADS[task_type]:
        raise ModelError(f"{model_dir} has a {head} head; it cannot read a {task_type} task's inputs")


def _bilstm_source(path: Path) -> ExportSource:
    model, vocab = load_bilstm(path)

    def save_files(directory: Path) -> None:
        vocab.save(directory)
        shutil.copyfile(path / BILSTM_CONFIG, directory / BILSTM_CONFIG)

    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    return ExportSource(BiLSTMGraph(model), "bilstm", "BiLSTMClassifier", list(MODEL_INPUTS), "logits", vocab,
                        count_parameters(model), model.config.max_len, model.config.pair, save_files, labels)


def export_onnx(source: ExportSource, example: dict[str, torch.Tensor], path: Path, opset: int) -> None:
    """Trace `source` on `example` (a padded batch) into `path`, batch and sequence axes dynamic."""
    dynamic = {name: {0: "batch", 1: "sequence"} for name in source.input_names}
    dynamic[source.output_name] = {0: "batch"} if source.head in ("sequence", "bilstm") else {0: "batch", 1: "sequence"}
    inputs = tuple(example[name] for name in source.input_names)
    with warnings.catch_warnings():  # tracer warnings about Python bools in transformers' mask code
        warnings.simplefilter("ignore")
        torch.onnx.export(source.module, inputs, str(path), input_names=source.input_names,
                          output_names=[source.output_name], dynamic_axes=dynamic, opset_version=opset,
                          dynamo=False, do_constant_folding=True)
    source.module.eval()


def quantize_int8(fp32_path: Path, path: Path, per_channel: bool) -> None:
    """Dynamic int8 quantisation: int8 weights (MatMul, Gather, LSTM), activations quantised at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantiser logs a pre-processing hint on the root logger every call
    try:
        quantize_dynamic(fp32_path, path, weight_type=QuantType.QInt8, per_channel=per_channel)
    finally:
        root.setLevel(level)


def convert_fp16(fp32_path: Path, path: Path) -> None:
    """fp16 weights and arithmetic; inputs and outputs stay as in the fp32 graph."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx.save(convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True), str(path))
