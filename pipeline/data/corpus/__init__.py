"""Raw corpora for stage one, `pretrain` and the DistilBERT objective.

`TrainingCorpus` reads a prepared corpus (`tinydistill prepare-corpus`; `corpus.path` holds its
manifest.json) by index, or streams any other corpus (`stream.py`). Either way it yields
(epoch, index, batch[, position]) from a training state's data position, without replaying the epoch.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from pipeline.data.corpus.prepared import PreparedCorpus, is_prepared_corpus
from pipeline.data.corpus.sources import open_source
from pipeline.data.corpus.stream import StreamReader, pad_batch
from pipeline.errors import ConfigError, DataError
from pipeline.schema import CorpusConfig, TrainConfig

COUNT_BATCH_LINES = 1_000  # lines per tokenizer call when counting a streamed corpus
SAMPLE_TEXTS = 200  # lines kept while counting, to check a pruned tokenizer against the teacher's
STREAM_ONLY = ("format", "text_column", "hub_config", "hub_split", "shuffle_buffer", "max_line_chars",
               "num_workers", "prefetch_batches")

__all__ = ["TrainingCorpus", "count_stream_tokens", "open_training_corpus", "pad_batch"]


def open_training_corpus(cfg: CorpusConfig, tokenizer, accelerator, train: TrainConfig,
                         role: str) -> tuple[TrainingCorpus, int]:
    """(this rank's corpus, the run's optimiser steps), every input problem raised on every rank."""
    corpus = TrainingCorpus(cfg, tokenizer, accelerator.process_index, accelerator.num_processes, train, role)
    total_steps = corpus.total_steps()
    corpus.check_every_rank_has_data(accelerator)
    return corpus, total_steps


class TrainingCorpus:
    """One rank's training data from `cfg`, tokenised with the teacher's (or model's) `tokenizer`."""

    def __init__(self, cfg: CorpusConfig, tokenizer, rank: int, world_size: int, train: TrainConfig, role: str):
        self.cfg, self.train = cfg, train
        self.prepared: PreparedCorpus | None = None
        self.stream: StreamReader | None = None
        if is_prepared_corpus(cfg.path):
            self.prepared = PreparedCorpus(cfg.path, rank, world_size, train.seed, train.batch_size)
            self._check_prepared(tokenizer, role)
        else:
            self.stream = StreamReader(cfg, tokenizer, rank, world_size, train.seed, train.batch_size)

    def _check_prepared(self, tokenizer, role: str) -> None:
        defaults = CorpusConfig(path=self.cfg.path)
        for name in STREAM_ONLY:
            if getattr(self.cfg, name) != getattr(defaults, name):
                raise ConfigError(f"corpus.{name}: only for streamed corpora; {self.cfg.path} is prepared "
                                  "(shuffled globally, read by index)")
        manifest = self.prepared.manifest
        if self.cfg.max_seq_len != manifest["max_seq_len"]:
            raise ConfigError(f"corpus.max_seq_len: {self.cfg.max_seq_len}, but {self.cfg.path} was prepared with "
                              f"sequences of {manifest['max_seq_len']}; set corpus.max_seq_len: {manifest['max_seq_len']}")
        if not self.cfg.packing and manifest["packing"] != "lines":
            raise ConfigError(f"corpus.packing: false, but {self.cfg.path} was prepared with packing "
                              f"{manifest['packing']!r}; prepare it with --packing lines")
        self.prepared.check_tokenizer(tokenizer, role)

    def total_steps(self) -> int:
        """Optimiser steps of the run: exact for a prepared corpus; train.max_steps for a stream."""
        train = self.train
        if self.stream is not None:
            if not train.max_steps:
                raise ConfigError(
                    f"train.max_steps: required for a streamed corpus ({self.cfg.path} has no known length); "
                    "set it, or run `tinydistill prepare-corpus` for exact epochs"
                )
            return train.max_steps
        accumulation = train.grad_accum or 1  # unset: the launcher's, already applied in a stage's `train`
        per_epoch = self.prepared.batches_per_epoch // accumulation
        if per_epoch == 0:
            raise DataError(
                f"corpus {self.cfg.path} holds {self.prepared.sequences} sequences, fewer than one step of "
                f"batch_size {train.batch_size} x {self.prepared.world_size} processes x grad_accum {accumulation}"
            )
        return train.max_steps or per_epoch * train.epochs

    def check_every_rank_has_data(self, accelerator) -> None:
        """Collective: every rank raises the same DataError when any rank has no data, instead of one
        rank failing while the others wait in all-reduce."""
        problem = self.stream.check_has_data() if self.stream is not None else None
        flags = accelerator.gather(torch.tensor([problem is not None], device=accelerator.device))
        if flags.any():
            accelerator.wait_for_everyone()  # every rank has the flags before any leaves the collective
        if problem:
            raise DataError(problem)
        short = [rank for rank, flag in enumerate(flags.tolist()) if flag]
        if short:
            raise DataError(f"corpus {self.cfg.path}: rank(s) {short} have no data (see their error)")

    def batches_from(self, state) -> Iterator[tuple]:
        """(epoch, index, batch) or, streamed, (epoch, index, batch, position) from `state`'s data position."""
        if self.prepared is not None:
            return self.prepared.batches_from(state.epoch, state.batches_in_epoch)
        return self.stream.batches_from(state.data_position, state.batches_in_epoch)

    def token_counts(self, tokenizer, vocab_size: int) -> tuple[torch.Tensor, list[str]]:
        """(how often each id occurs in the whole corpus, a few of its lines), for `student.vocab: prune`.

        A prepared corpus is counted from its rows (a bincount per shard); a stream is read once from the
        start and tokenised as training tokenises it, on every rank alike.
        """
        counts = torch.zeros(vocab_size, dtype=torch.long)
        if self.prepared is not None:
            for tokens, lengths in zip(self.prepared.tokens, self.prepared.lengths):
                for start in range(0, len(lengths), 65_536):
                    ids = torch.from_numpy(tokens[start:start + 65_536].astype("int64"))
                    real = torch.arange(ids.shape[1])[None, :] < torch.from_numpy(lengths[start:start + 65_536]
                                                                                  .astype("int64"))[:, None]
                    counts += torch.bincount(ids[real], minlength=vocab_size)
            return counts, []
        return count_stream_tokens(self.cfg, tokenizer, vocab_size)

    def skipped_lines(self) -> dict[str, int]:
        return self.prepared.manifest["skipped"] if self.prepared is not None else self.stream.skipped_lines()

    def describe(self) -> dict:
        if self.prepared is not None:
            manifest = self.prepared.manifest
            return {"corpus": "prepared", "sequences": manifest["sequences"], "tokens": manifest["tokens"],
                    "steps_per_epoch": self.prepared.batches_per_epoch // (self.train.grad_accum or 1)}
        return {"corpus": "streamed", "num_workers": self.cfg.num_workers, "packing": self.cfg.packing,
                "block_lines": self.stream.corpus.block_lines}


def count_stream_tokens(cfg: CorpusConfig, tokenizer, vocab_size: int) -> tuple[torch.Tensor, list[str]]:
    """(how often each id occurs in the texts of `cfg.path`, read once as a stream, a few of the texts)."""
    counts = torch.zeros(vocab_size, dtype=torch.long)
    sample: list[str] = []
    for texts in stream_text_batches(cfg):
        counts += _count_lines(tokenizer, texts, vocab_size)
        sample = sample or texts[:SAMPLE_TEXTS]
    return counts, sample


def stream_text_batches(cfg: CorpusConfig, lines: int = COUNT_BATCH_LINES) -> Iterator[list[str]]:
    """The non-empty, well-formed texts of `cfg.path`, read once from the start, `lines` at a time."""
    source = open_source(cfg)
    texts = []
    for row, _where in source.rows(list(range(len(getattr(source, "files", [])) or 1)), None):
        if row.text and not row.bad:
            texts.append(row.text)
        if len(texts) == lines:
            yield texts
            texts = []
    if texts:
        yield texts


def _count_lines(tokenizer, texts: list[str], vocab_size: int) -> torch.Tensor:
    ids = [i for row in tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False)["input_ids"] for i in row]
    return torch.bincount(torch.tensor(ids, dtype=torch.long), minlength=vocab_size)
