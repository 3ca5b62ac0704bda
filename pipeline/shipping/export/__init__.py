"""ONNX export of tinydistill models, int8/fp16 conversion, and ONNX Runtime inference.

An export folder (what `tinydistill export` writes, all at once: it is built under a temp name and renamed):

    model.onnx          fp32 graph; inputs (batch, sequence) int64, output `logits` (or `last_hidden_state`)
    model.int8.onnx     dynamic int8 quantisation of model.onnx (with --int8)
    model.fp16.onnx     fp16 weights and activations, fp32 inputs and outputs (with --fp16)
    export.json         the source, head, inputs, labels, exporter, parameter count, validation figures per file
    tokenizer files     the source's tokenizer (a BiLSTM: vocab.txt and bilstm_config.json)
    config.json         the source's model config, with its label map (Hugging Face models)

`graph` knows the architectures (the one place that does), `runtime` runs an exported file, `validate`
compares an exported file with the PyTorch model it came from.
"""

from __future__ import annotations

from pipeline.errors import ConfigError

EXPORT_INFO = "export.json"
ONNX_FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx", "fp16": "model.fp16.onnx"}


def require_onnxruntime() -> None:
    """A one-line error when the optional `export` extra is not installed."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise ConfigError("ONNX export and inference need the export extra: pip install 'tinydistill[export]'") from None
