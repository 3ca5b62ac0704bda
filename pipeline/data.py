"""Raw corpora as streams: read, shard per rank, shuffle, tokenise on the fly, pack or truncate.

Nothing holds the corpus in memory. Each rank reads its own share through `split_dataset_by_node`
(whole files when the file count divides the world size, else every world_size-th line), tokenises
lazily and yields fixed-size batches. Bad lines (empty, invalid UTF-8, over-long, unparsable JSON)
are skipped and counted, never fatal.
"""

from __future__ import annotations

import glob
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from datasets import IterableDataset, load_dataset
from datasets.distributed import split_dataset_by_node

from pipeline.errors import DataError
from pipeline.hub import split_revision
from pipeline.schema import CorpusConfig

TEXT_SUFFIXES = {".txt": "text", ".text": "text", ".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv",
                 ".tsv": "csv", ".parquet": "parquet"}
DOCUMENT_BREAK = ""  # what a blank line becomes: the end of a document


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


def _text_lines(paths: list[str], max_line_chars: int) -> Iterator[dict]:
    for path in paths:
        with open(path, "rb") as handle:
            for raw in handle:
                yield _decode_line(raw, max_line_chars)
        yield {"text": DOCUMENT_BREAK, "bad": ""}  # a file always ends a document


def _decode_line(raw: bytes, max_line_chars: int) -> dict:
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        return {"text": DOCUMENT_BREAK, "bad": "invalid_utf8"}
    if len(text) > max_line_chars:
        return {"text": DOCUMENT_BREAK, "bad": "too_long"}
    return {"text": text, "bad": "" if text else "empty"}


def _jsonl_records(paths: list[str], text_column: str, max_line_chars: int) -> Iterator[dict]:
    for path in paths:
        with open(path, "rb") as handle:
            for raw in handle:
                line = _decode_line(raw, max_line_chars * 4)
                if line["bad"]:
                    yield line
                    continue
                try:
                    record = json.loads(line["text"])
                except json.JSONDecodeError:
                    yield {"text": DOCUMENT_BREAK, "bad": "invalid_json"}
                    continue
                if not isinstance(record, dict) or text_column not in record:
                    yield {"text": DOCUMENT_BREAK, "bad": "missing_column"}
                    continue
                yield _clean_value(record[text_column], max_line_chars)


def _clean_value(value, max_line_chars: int) -> dict:
    if not isinstance(value, str):
        return {"text": DOCUMENT_BREAK, "bad": "not_text"}
    text = value.strip()
    if len(text) > max_line_chars:
        return {"text": DOCUMENT_BREAK, "bad": "too_long"}
    return {"text": text, "bad": "" if text else "empty"}


def open_corpus(cfg: CorpusConfig) -> IterableDataset:
    """The corpus as a streaming dataset of {"text", "bad"} rows; `bad` names why a row is skipped."""
    fmt, files = resolve_corpus_files(cfg)
    if fmt == "text":
        return IterableDataset.from_generator(
            _text_lines, gen_kwargs={"paths": files, "max_line_chars": cfg.max_line_chars}
        )
    if fmt == "jsonl":
        return IterableDataset.from_generator(
            _jsonl_records,
            gen_kwargs={"paths": files, "text_column": cfg.text_column, "max_line_chars": cfg.max_line_chars},
        )
    try:
        if fmt == "hub":
            hub_id, revision = split_revision(cfg.path)
            stream = load_dataset(hub_id, cfg.hub_config, split=cfg.hub_split, streaming=True, revision=revision)
        else:
            delimiter = {"delimiter": "\t"} if files[0].endswith(".tsv") else {}
            stream = load_dataset(fmt, data_files=files, split="train", streaming=True, **delimiter)
    except Exception as err:  # noqa: BLE001 - datasets raises many types for a bad id or file; one line
        raise DataError(f"cannot open corpus {cfg.path}: {str(err).strip().splitlines()[0]}") from None
    columns = stream.column_names
    if columns is None:  # streamed csv/parquet: the columns are known only once a row is read
        first = next(iter(stream), None)
        columns = list(first) if first is not None else [cfg.text_column]
    if cfg.text_column not in columns:
        raise DataError(f"corpus {cfg.path} has no column {cfg.text_column!r} (columns: {', '.join(columns)})")
    limit = cfg.max_line_chars
    return stream.map(lambda row: _clean_value(row[cfg.text_column], limit), remove_columns=columns)


@dataclass
class SkipCounter:
    """How many input rows were skipped, by reason."""

    counts: Counter = field(default_factory=Counter)

    def add(self, reason: str) -> None:
        self.counts[reason] += 1

    def as_dict(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))


class TokenizedCorpus(torch.utils.data.IterableDataset):
    """One rank's share of the corpus as token-id sequences of at most max_seq_len (with [CLS]/[SEP]).

    With packing, consecutive lines of a document fill each sequence; a document break flushes it.
    Without packing, each line becomes one truncated sequence. `epoch` reseeds the shuffle buffer so
    all ranks see the same global order and every epoch a new one.
    """

    def __init__(self, cfg: CorpusConfig, tokenizer, rank: int = 0, world_size: int = 1, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.epoch = 0
        self.skipped = SkipCounter()
        self.stream = open_corpus(cfg)

    def _rank_stream(self) -> IterableDataset:
        stream = self.stream
        if self.cfg.shuffle_buffer > 1:
            stream = stream.shuffle(seed=self.seed, buffer_size=self.cfg.shuffle_buffer)
        stream.set_epoch(self.epoch)
        if self.world_size > 1:
            stream = split_dataset_by_node(stream, rank=self.rank, world_size=self.world_size)
        return stream

    def __iter__(self) -> Iterator[list[int]]:
        body = self.cfg.max_seq_len - 2
        cls_id, sep_id = self.tokenizer.cls_token_id, self.tokenizer.sep_token_id
        pending: list[int] = []
        for row in self._rank_stream():
            if row["bad"]:
                self.skipped.add(row["bad"])
            text = row["text"]
            if not text:
                if pending:
                    yield [cls_id, *pending, sep_id]
                    pending = []
                continue
            ids = self.tokenizer(text, add_special_tokens=False, truncation=False)["input_ids"]
            if not ids:
                self.skipped.add("no_tokens")
                continue
            if not self.cfg.packing:
                yield [cls_id, *ids[:body], sep_id]
                continue
            pending.extend(ids)
            while len(pending) >= body:
                yield [cls_id, *pending[:body], sep_id]
                pending = pending[body:]
        if pending:
            yield [cls_id, *pending, sep_id]


def pad_batch(sequences: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad token-id lists into input_ids / attention_mask / token_type_ids tensors."""
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention_mask[row, : len(seq)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": torch.zeros_like(input_ids)}


def corpus_batches(corpus: TokenizedCorpus, batch_size: int, pad_id: int) -> Iterator[dict[str, torch.Tensor]]:
    """Full batches of one epoch (the last partial batch is dropped, so every rank steps in lockstep)."""
    batch: list[list[int]] = []
    for sequence in corpus:
        batch.append(sequence)
        if len(batch) == batch_size:
            yield pad_batch(batch, pad_id)
            batch = []
