"""Where corpus rows come from: local files read by byte offset, or a datasets stream.

Every source yields rows in reading order, each with the position to resume *after* it, so a reader
can stop anywhere and start again there without re-reading what came before:
  text     one sentence per line, a blank line (and every file's end) ends a document
  jsonl    one record per line, each record one document (`text_column`)
  csv, parquet, hub   rows through `datasets` streaming, each row one document; the position is the
           stream's own `state_dict()`
Bad rows (invalid UTF-8, over-long, unparsable JSON, a missing column) are kept as rows with a reason,
so the reader can count them; they are never fatal.
"""

from __future__ import annotations

import glob
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import DataError
from pipeline.models.hub import split_revision
from pipeline.schema import CorpusConfig

TEXT_SUFFIXES = {".txt": "text", ".text": "text", ".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv",
                 ".tsv": "csv", ".parquet": "parquet"}


@dataclass(frozen=True)
class Row:
    """One input line; `bad` names why a line is skipped ("" if not). A row without text (a blank or bad
    line, or the break after a record or at a file's end) ends the document."""

    text: str
    bad: str = ""

    @property
    def ends_document(self) -> bool:
        return not self.text


BREAK = Row("")


def resolve_corpus_files(cfg: CorpusConfig) -> tuple[str, list[str]]:
    """(format, files) for a local corpus, or ("hub", []) for a datasets hub id. Raises DataError."""
    if cfg.format == "hub":
        return "hub", []
    path = Path(cfg.path).expanduser()
    if path.is_dir():
        files = sorted(str(p) for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
    elif any(ch in cfg.path for ch in "*?["):
        files = sorted(glob.glob(str(path), recursive=True))
    elif path.is_file():
        files = [str(path)]
    elif cfg.format == "auto" and not cfg.path.startswith((".", "/", "~")) and cfg.path.count("/") <= 1:
        return "hub", []
    else:
        raise DataError(f"corpus path not found: {cfg.path}")
    if not files:
        raise DataError(f"corpus {cfg.path} has no readable files (.txt, .jsonl, .csv, .tsv, .parquet)")
    fmt = cfg.format
    if fmt == "auto":
        kinds = {TEXT_SUFFIXES.get(Path(f).suffix.lower(), "text") for f in files}
        if len(kinds) > 1:
            raise DataError(f"corpus {cfg.path} mixes formats {sorted(kinds)}; set corpus.format")
        fmt = kinds.pop()
    return fmt, files


def decode_line(raw: bytes, max_chars: int) -> Row:
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        return Row("", "invalid_utf8")
    if len(text) > max_chars:
        return Row("", "too_long")
    return Row(text, "" if text else "empty")


def clean_value(value, max_chars: int) -> Row:
    if not isinstance(value, str):
        return Row("", "not_text")
    text = value.strip()
    if len(text) > max_chars:
        return Row("", "too_long")
    return Row(text, "" if text else "empty")


def _jsonl_row(raw: bytes, text_column: str, max_chars: int) -> Row:
    line = decode_line(raw, max_chars * 4)
    if line.bad:
        return line
    try:
        record = json.loads(line.text)
    except json.JSONDecodeError:
        return Row("", "invalid_json")
    if not isinstance(record, dict) or text_column not in record:
        return Row("", "missing_column")
    return clean_value(record[text_column], max_chars)


class FileSource:
    """Text or JSONL files, read by byte offset. A position is {"file": i, "offset": bytes} into the
    file order the reader was given."""

    def __init__(self, fmt: str, files: list[str], text_column: str, max_line_chars: int):
        self.fmt, self.files, self.text_column, self.max_line_chars = fmt, files, text_column, max_line_chars

    def rows(self, order: list[int], position: dict | None) -> Iterator[tuple[Row, dict]]:
        start_file, offset = (position["file"], position["offset"]) if position else (0, 0)
        for k in range(start_file, len(order)):
            with open(self.files[order[k]], "rb") as handle:
                handle.seek(offset if k == start_file else 0)
                for raw in iter(handle.readline, b""):
                    where = {"file": k, "offset": handle.tell()}
                    if self.fmt == "text":
                        yield decode_line(raw, self.max_line_chars), where
                    else:
                        yield _jsonl_row(raw, self.text_column, self.max_line_chars), where
                        yield BREAK, where  # a record is a document
            yield BREAK, {"file": k + 1, "offset": 0}  # a file always ends a document


class DatasetsSource:
    """CSV, parquet or a hub dataset through `datasets` streaming; each row is one document. A position is
    the stream's `state_dict()`, taken only where the reader asks (`state`), since taking it costs a copy."""

    def __init__(self, cfg: CorpusConfig, fmt: str, files: list[str]):
        self.cfg, self.fmt, self.files = cfg, fmt, files
        self._stream = None

    def open(self):
        from datasets import load_dataset

        cfg = self.cfg
        try:
            if self.fmt == "hub":
                hub_id, revision = split_revision(cfg.path)
                stream = load_dataset(hub_id, cfg.hub_config, split=cfg.hub_split, streaming=True,
                                      revision=revision)
            else:
                delimiter = {"delimiter": "\t"} if self.files[0].endswith(".tsv") else {}
                stream = load_dataset(self.fmt, data_files=self.files, split="train", streaming=True, **delimiter)
        except Exception as err:  # noqa: BLE001 - datasets raises many types for a bad id or file; one line
            raise DataError(f"cannot open corpus {cfg.path}: {str(err).strip().splitlines()[0]}") from None
        columns = stream.column_names
        if columns is None:  # streamed csv/parquet: the columns are known only once a row is read
            first = next(iter(stream), None)
            columns = list(first) if first is not None else [cfg.text_column]
        if cfg.text_column not in columns:
            raise DataError(f"corpus {cfg.path} has no column {cfg.text_column!r} (columns: {', '.join(columns)})")
        return stream

    def rows(self, order: list[int], position: dict | None) -> Iterator[tuple[Row, dict | None]]:
        stream = self.open()
        if position:
            stream.load_state_dict(position)
        self._stream = stream
        for record in stream:
            yield clean_value(record[self.cfg.text_column], self.cfg.max_line_chars), None
            yield BREAK, None

    def state(self) -> dict:
        return self._stream.state_dict()


def open_source(cfg: CorpusConfig) -> FileSource | DatasetsSource:
    fmt, files = resolve_corpus_files(cfg)
    if fmt in ("text", "jsonl"):
        return FileSource(fmt, files, cfg.text_column, cfg.max_line_chars)
    return DatasetsSource(cfg, fmt, files)


@dataclass
class SkipCounter:
    """How many input rows were skipped, by reason."""

    counts: Counter = field(default_factory=Counter)

    def add(self, reason: str) -> None:
        self.counts[reason] += 1

    def as_dict(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))
