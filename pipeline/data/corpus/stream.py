"""A raw corpus read as a stream: nothing is prepared or held in memory, and resuming re-reads at most
one block.

The rows are cut into blocks of about `shuffle_buffer` lines that end at a document break (exactly that
many lines when `packing` is off, and at most 4x that when a document runs on; fewer lines when local
files are too small to give every reader about four blocks). Block b of epoch e
belongs to one of the world_size x num_workers partitions, (b + e) mod P, so every rank and DataLoader
worker tokenises only its own blocks, and the owners rotate each epoch. Inside a block the lines are
packed in document order, and the packed sequences (never the lines) are shuffled, seeded by
(seed, epoch, block). Files are shuffled per epoch too.

A position is (epoch, block, where the block starts in the source, sequences already used from it), so a
resumed run seeks to the block and re-reads that block alone: constant work, wherever the run stopped.
Each worker's stream is endless (epoch after epoch), so every rank steps as long as training needs.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from collections.abc import Iterator

import torch

from pipeline.data.corpus.packing import pack
from pipeline.data.corpus.sources import DatasetsSource, FileSource, Row, SkipCounter, open_source
from pipeline.errors import ConfigError, DataError
from pipeline.schema import CorpusConfig

LONG_DOCUMENT_FACTOR = 4  # a block is cut inside a document once it holds this many times its lines


def pad_batch(sequences: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad token-id lists into input_ids / attention_mask / token_type_ids tensors."""
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention_mask[row, : len(seq)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": torch.zeros_like(input_ids)}


def _seeded(*parts: int) -> random.Random:
    return random.Random("/".join(str(p) for p in parts))


class StreamingCorpus(torch.utils.data.IterableDataset):
    """One rank's share of a streamed corpus as full batches of `batch_size` sequences.

    Iterated directly or by a DataLoader (`batch_size=None`); each item is (batch, logical worker,
    that worker's position after the batch). `resume` is a position saved by `StreamReader`.
    """

    def __init__(self, cfg: CorpusConfig, tokenizer, rank: int, world_size: int, seed: int, batch_size: int):
        super().__init__()
        self.cfg, self.tokenizer = cfg, tokenizer
        self.rank, self.world_size, self.seed, self.batch_size = rank, world_size, seed, batch_size
        self.source = open_source(cfg)
        self.workers = max(1, cfg.num_workers)
        self.block_lines = self._block_lines()
        self.shuffle = cfg.shuffle_buffer > 1
        self.resume: dict = {}
        self.rows_tokenized = 0  # this process's count, for tests of the resume cost
        self._epoch_rows: Counter = Counter()

    @property
    def partitions(self) -> int:
        return self.world_size * self.workers

    def _block_lines(self) -> int:
        """`shuffle_buffer` lines, or fewer when local files hold too few lines to give every reader
        (rank x worker) about four blocks: a small corpus still reaches every reader. The line count is
        estimated from the files' sizes and the first MiB, so it costs no pass over the corpus."""
        wanted = max(1, self.cfg.shuffle_buffer)
        files = getattr(self.source, "files", None)
        if not files or not isinstance(self.source, FileSource):
            return wanted
        with open(files[0], "rb") as handle:
            sample = handle.read(1 << 20)
        bytes_per_line = len(sample) / max(1, sample.count(b"\n"))
        lines = sum(os.path.getsize(f) for f in files) / max(1.0, bytes_per_line)
        return max(1, min(wanted, int(lines // (4 * self.partitions))))

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        logical = ((info.id if info else 0) + self.resume.get("rotation", 0)) % self.workers
        position = self.resume.get("workers", {}).get(str(logical))
        batch: list[list[int]] = []
        for sequence, where in self.sequences(self.rank * self.workers + logical, position):
            batch.append(sequence)
            if len(batch) == self.batch_size:
                yield pad_batch(batch, self.tokenizer.pad_token_id), logical, where
                batch = []

    def sequences(self, partition: int, position: dict | None, epochs: int | None = None) -> Iterator:
        """(sequence, position after it) of one partition, endlessly (or for `epochs` epochs)."""
        epoch = position["epoch"] if position else 0
        first_block = position["block"] if position else 0
        start = position["start"] if position else None
        skip = position["used"] if position else 0
        skipped = Counter(position["skipped"]) if position else Counter()
        resumed_mid_epoch = position is not None
        while epochs is None or epoch < (position["epoch"] if position else 0) + epochs:
            produced = False
            for block, block_start, rows in self._owned_blocks(epoch, partition, first_block, start):
                counted_before = dict(skipped)
                sequences = list(pack(self._token_lines(rows, skipped), self.cfg.max_seq_len,
                                      self.tokenizer.cls_token_id, self.tokenizer.sep_token_id,
                                      "documents" if self.cfg.packing else "lines"))
                if self.shuffle:
                    _seeded(self.seed, epoch, block).shuffle(sequences)
                seen = dict(skipped)
                for used in range(skip, len(sequences)):
                    produced = True
                    yield sequences[used], {"epoch": epoch, "block": block, "start": block_start,
                                            "used": used + 1, "skipped": counted_before, "seen": seen}
                skip = 0
            if not produced and not resumed_mid_epoch:
                raise DataError(self._no_data_message(skipped, partition))
            epoch, first_block, start, resumed_mid_epoch = epoch + 1, 0, None, False

    def _no_data_message(self, skipped: Counter, partition: int) -> str:
        if not self._epoch_rows["text"]:
            counts = {k: v for k, v in sorted(self._epoch_rows.items()) if k not in ("text", "break")} or "none"
            return f"corpus {self.cfg.path} is empty: no usable text (skipped lines: {counts})"
        counts = dict(sorted(skipped.items())) or "none"
        return (f"corpus {self.cfg.path} gives rank {self.rank} reader {partition % self.workers} no data: "
                f"{self.partitions} readers "
                f"({self.world_size} processes x corpus.num_workers {self.workers}) share its blocks of "
                f"{self.block_lines} lines (skipped lines: {counts}); lower corpus.shuffle_buffer or "
                "corpus.num_workers, or use more text")

    def _file_order(self, epoch: int) -> list[int]:
        order = list(range(len(getattr(self.source, "files", [])) or 1))
        if self.shuffle:
            _seeded(self.seed, "files", epoch).shuffle(order)
        return order

    def _owned_blocks(self, epoch: int, partition: int, first_block: int, start) -> Iterator:
        """(block index, its start position, its rows) for this partition's blocks of one epoch; the
        others' rows are read (to find block boundaries) but not kept."""
        block, block_start, lines, rows = first_block, start, 0, []
        owned = (block + epoch) % self.partitions == partition
        limit = self.block_lines * (1 if not self.cfg.packing else LONG_DOCUMENT_FACTOR)
        self._epoch_rows = Counter()  # every row's kind, owned or not: tells an empty corpus from a short share
        for row, where in self.source.rows(self._file_order(epoch), start):
            self._epoch_rows[row.bad or ("text" if row.text else "break")] += 1
            if owned:
                rows.append(row)
            lines += not row.ends_document
            if lines and ((row.ends_document and lines >= self.block_lines) or lines >= limit):
                if owned:
                    yield block, block_start, rows
                block, lines, rows = block + 1, 0, []
                block_start = self.source.state() if isinstance(self.source, DatasetsSource) else where
                owned = (block + epoch) % self.partitions == partition
        if owned and lines:
            yield block, block_start, rows

    def _token_lines(self, rows: list[Row], skipped: Counter) -> Iterator[list[int] | None]:
        """Token ids per row (one batched tokenizer call per block), None at document breaks."""
        texts = [row.text for row in rows if row.text]
        self.rows_tokenized += len(texts)
        encoded = iter(self.tokenizer(texts, add_special_tokens=False, truncation=False)["input_ids"]
                       if texts else [])
        for row in rows:
            if row.bad:
                skipped[row.bad] += 1
            if row.ends_document:
                yield None
                continue
            ids = next(encoded)
            if not ids:
                skipped["no_tokens"] += 1
            yield ids


class StreamReader:
    """The training loop's view of a streamed corpus: `batches_from(state)` yields
    (epoch, index, batch, position) from DataLoader workers, position being what to save to resume."""

    def __init__(self, cfg: CorpusConfig, tokenizer, rank: int, world_size: int, seed: int, batch_size: int):
        self.corpus = StreamingCorpus(cfg, tokenizer, rank, world_size, seed, batch_size)
        self.cfg = cfg
        self._latest: dict = {}

    def skipped_lines(self) -> dict[str, int]:
        """Lines skipped so far by reason, over this rank's workers (those of resumed blocks included)."""
        counts = SkipCounter()
        for where in self._latest.values():
            counts.counts.update(where["seen"])
        return counts.as_dict()

    def check_has_data(self) -> str | None:
        """None when every partition of this rank yields a sequence within one epoch, else why not."""
        corpus = self.corpus
        for logical in range(corpus.workers):
            try:
                next(iter(corpus.sequences(corpus.rank * corpus.workers + logical, None, epochs=1)))
            except DataError as err:
                return str(err)
        return None

    def batches_from(self, position: dict | None, index: int) -> Iterator:
        corpus = self.corpus
        position = position or {"workers_count": corpus.workers, "block_lines": corpus.block_lines, "rotation": 0,
                                "workers": {}}
        if position["workers_count"] != corpus.workers:
            raise ConfigError(f"corpus.num_workers: the checkpoint was written with {position['workers_count']} "
                              f"workers, which decide the data order; resume with that many, not {corpus.workers}")
        if position["block_lines"] != corpus.block_lines:
            raise DataError(f"corpus {self.cfg.path}: the checkpoint read blocks of {position['block_lines']} lines, "
                            f"this run {corpus.block_lines} (corpus.shuffle_buffer or the files changed); resume "
                            "with the same corpus and settings")
        corpus.resume = position
        loader = torch.utils.data.DataLoader(
            corpus, batch_size=None, num_workers=self.cfg.num_workers,
            prefetch_factor=self.cfg.prefetch_batches if self.cfg.num_workers else None,
            pin_memory=torch.cuda.is_available(),
            # Its own generator: starting workers must not draw from the global RNG that a checkpoint
            # restores, or a resumed run's dropout would differ from an uninterrupted one's.
            generator=torch.Generator().manual_seed(corpus.seed),
        )
        workers, rotation = dict(position["workers"]), position["rotation"]
        self._latest = workers
        for consumed, (batch, logical, where) in enumerate(loader, start=1):
            workers[str(logical)] = where
            yield where["epoch"], index, batch, {"workers_count": corpus.workers, "block_lines": corpus.block_lines,
                                                 "rotation": (rotation + consumed) % corpus.workers,
                                                 "workers": dict(workers)}
            index += 1
