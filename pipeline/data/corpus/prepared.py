"""A prepared corpus: fixed-length token rows on disk, read by index.

Layout of a prepared directory (written by `tinydistill prepare-corpus`, joined by `merge-corpus`):
  manifest.json           tokenizer fingerprint, max_seq_len, packing, counts, skipped lines, shard files
  tokens-NNNNN.bin        uint16 (uint32 for vocabularies over 65,535) rows of max_seq_len ids, padded
  lengths-NNNNN.bin       uint16 real length of each row
Both are raw arrays (numpy memmaps), as nanoGPT and Megatron store theirs: a batch is a few reads.

Reading is random access: epoch e is a permutation of all rows seeded by (seed, e); its batches are
consecutive slices of world_size x batch_size rows, rank r taking the r-th batch_size of each. So the
ranks' data are disjoint, the union of their batches at a step is the one-process batch of the same
global size, the step count is known up front, and resuming is index arithmetic (nothing re-read).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from pipeline.errors import DataError

MANIFEST = "manifest.json"
FORMAT = "tinydistill.prepared_corpus"
VERSION = 1


def is_prepared_corpus(path: str | Path) -> bool:
    return (Path(path).expanduser() / MANIFEST).is_file()


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of what decides the ids: vocabulary, normalisation, pre-tokenisation, special tokens."""
    payload: dict = {"vocab": sorted(tokenizer.get_vocab().items(), key=lambda item: item[1]),
                     "special": [tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id,
                                 tokenizer.unk_token_id, tokenizer.mask_token_id]}
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        payload.update(normalizer=spec.get("normalizer"), pre_tokenizer=spec.get("pre_tokenizer"))
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode("utf-8"))
    return digest.hexdigest()[:16]


def read_manifest(path: str | Path) -> dict:
    file = Path(path).expanduser() / MANIFEST
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"{file}: not a readable prepared-corpus manifest ({err})") from None
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise DataError(f"{file}: not a tinydistill prepared corpus of version {VERSION}")
    return manifest


class PreparedCorpus:
    """One rank's view of a prepared corpus; `batches_from(state)` yields (epoch, index, batch)."""

    def __init__(self, path: str | Path, rank: int, world_size: int, seed: int, batch_size: int):
        self.path = Path(path).expanduser()
        self.manifest = read_manifest(self.path)
        self.rank, self.world_size, self.seed, self.batch_size = rank, world_size, seed, batch_size
        self.max_seq_len = self.manifest["max_seq_len"]
        self.pad_id = self.manifest["tokenizer"]["pad_id"]
        dtype = np.dtype(self.manifest["dtype"])
        self.tokens, self.lengths = [], []
        for shard in self.manifest["shards"]:
            n = shard["sequences"]
            self.tokens.append(np.memmap(self.path / shard["tokens_file"], dtype=dtype, mode="r",
                                         shape=(n, self.max_seq_len)))
            self.lengths.append(np.memmap(self.path / shard["lengths_file"], dtype=np.uint16, mode="r", shape=(n,)))
        self.starts = np.cumsum([0] + [s["sequences"] for s in self.manifest["shards"]])
        self.sequences = int(self.starts[-1])
        self.rows_read = 0  # for tests: the rows a resume or an epoch actually touched
        self._permutation: tuple[int, torch.Tensor] | None = None

    def check_tokenizer(self, tokenizer, role: str) -> None:
        expected = self.manifest["tokenizer"]
        if tokenizer_fingerprint(tokenizer) != expected["fingerprint"]:
            raise DataError(
                f"corpus {self.path} was prepared with the tokenizer of {expected['name_or_path']!r} "
                f"(fingerprint {expected['fingerprint']}), not the {role}'s; run prepare-corpus again with "
                "--tokenizer set to it"
            )

    @property
    def batches_per_epoch(self) -> int:
        return self.sequences // (self.batch_size * self.world_size)

    def permutation(self, epoch: int) -> torch.Tensor:
        if self._permutation is None or self._permutation[0] != epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._permutation = (epoch, torch.randperm(self.sequences, generator=generator))
        return self._permutation[1]

    def batch(self, epoch: int, index: int) -> dict[str, torch.Tensor]:
        first = (index * self.world_size + self.rank) * self.batch_size
        rows = self.permutation(epoch)[first : first + self.batch_size].numpy()
        shard_of = np.searchsorted(self.starts, rows, side="right") - 1
        ids = np.empty((len(rows), self.max_seq_len), dtype=np.int64)
        lengths = np.empty(len(rows), dtype=np.int64)
        for shard in np.unique(shard_of):
            where = shard_of == shard
            local = rows[where] - self.starts[shard]
            ids[where] = self.tokens[shard][local]
            lengths[where] = self.lengths[shard][local]
        self.rows_read += len(rows)
        width = int(lengths.max())
        input_ids = torch.from_numpy(ids[:, :width])
        attention_mask = (torch.arange(width)[None, :] < torch.from_numpy(lengths)[:, None]).long()
        return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": torch.zeros_like(input_ids)}

    def batches_from(self, epoch: int, index: int) -> Iterator[tuple[int, int, dict]]:
        """(epoch, index in epoch, batch) forever from a data position: O(1) to start anywhere."""
        while True:
            for i in range(index, self.batches_per_epoch):
                yield epoch, i, self.batch(epoch, i)
            epoch, index = epoch + 1, 0
