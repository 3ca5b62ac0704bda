"""Downstream task data: the `task` config section, label maps, tokenisation, batching and prediction.

Shared by `finetune` (teacher fine-tuning), `task` (task distillation) and `evaluate`. Task types:
  classification  one sentence, or a sentence pair when `text_pair` is set (labels: names or ids)
  regression      STS-B style, one float per example (`num_labels` 1)
  token           NER/POS: `tokens` (a list of words or characters) and `tags` (one per token); labels
                  are put on the first sub-token of each word, the others get -100 and are not scored.
  qa              extractive QA (SQuAD, CMRC 2018, DRCD): `context`, `question` and `answers` (`text` and
                  `answer_start` lists; empty for an unanswerable question, SQuAD v2); each example is cut
                  into question + context windows (see pipeline/tasks/qa.py) and scored as EM / F1.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from pipeline.data.dataset_files import map_cache_file
from pipeline.errors import ConfigError, DataError, ModelError

IGNORE_INDEX = -100
DEFAULT_LABEL_PREFIX = "LABEL_"  # transformers' names for an unnamed label map


@dataclass(frozen=True)
class TaskConfig:
    """What the task is and where its data lives.

    Splits are files (`train: data/train.jsonl`), or split names inside `dataset` (a hub id or a
    `save_to_disk` folder: `dataset: clue`, `name: tnews`, `train: train`, `dev: validation`).
    `labels` fixes the label order; by default it is the sorted label values of the train split.

    Extractive QA (`type: qa`) reads `context`, `question` and `answers`; windows of `max_seq_len`
    tokens overlap by `doc_stride` tokens (default max_seq_len // 4); a span is at most
    `max_answer_len` tokens, chosen among the `n_best` best starts and ends; `null_threshold` (SQuAD
    v2 and sets with unanswerable questions) predicts no answer when the [CLS] score beats the best
    span's by more than it (null: always a span, SQuAD v1); `language` picks the metric (`zh`: CMRC
    2018's character-level EM/F1, `en`: SQuAD's; `auto`: from the contexts).
    """

    # classification (single or pair), regression, token (NER-style tags) or qa (extractive)
    type: Literal["classification", "regression", "token", "qa"] = "classification"
    train: str | None = None  # the train split: a file, or a split name inside dataset
    dev: str | None = None  # the dev split (used for model selection)
    test: str | None = None  # the test split (scored once at the end)
    dataset: str | None = None  # a hub id or save_to_disk folder holding the splits
    name: str | None = None  # the hub dataset's configuration, e.g. tnews
    # the file format; auto: from the extension
    format: Literal["auto", "csv", "tsv", "json", "parquet", "disk", "hub"] = "auto"
    text: str | None = "text"  # the text column
    text_pair: str | None = None  # the second text of a pair task
    label: str = "label"  # the label column
    tokens: str = "tokens"  # token tasks: the token-list column
    tags: str = "tags"  # token tasks: the tag-list column
    labels: list[str] | None = None  # the label order (null: sorted values of the train split)
    max_seq_len: int = 128  # tokens per example, special tokens included
    context: str = "context"  # qa: the context column
    question: str = "question"  # qa: the question column
    answers: str = "answers"  # qa: the answers column (SQuAD layout)
    doc_stride: int | None = None  # qa: overlap of context windows in tokens (null: max_seq_len // 4)
    max_answer_len: int | None = None  # qa: the longest span in tokens
    n_best: int | None = None  # qa: best starts and ends searched
    # qa: predict no answer when the [CLS] score beats the best span's by more (null: always a span)
    null_threshold: float | None = None
    # qa: zh (CMRC 2018 character metrics) or en (SQuAD's); auto: from the contexts
    language: Literal["auto", "zh", "en"] | None = None

    def __post_init__(self):
        if self.max_seq_len < 8:
            raise ConfigError(f"task.max_seq_len: must be >= 8, got {self.max_seq_len}")
        self._check_qa_fields()
        if self.type not in ("token", "qa") and not self.text:
            raise ConfigError(f"task.text: the text column is required for {self.type} tasks")
        if self.type == "regression" and self.labels is not None:
            raise ConfigError("task.labels: regression has no label names")
        if self.labels is not None and len(set(self.labels)) != len(self.labels):
            raise ConfigError(f"task.labels: names must be unique, got {self.labels}")

    def _check_qa_fields(self) -> None:
        qa_fields = {"doc_stride": self.max_seq_len // 4, "max_answer_len": 30, "n_best": 20, "language": "auto"}
        if self.type != "qa":
            for name in (*qa_fields, "null_threshold"):
                if getattr(self, name) is not None:
                    raise ConfigError(f"task.{name}: only used when task.type is qa")
            return
        if self.labels is not None:
            raise ConfigError("task.labels: extractive QA has no label names (answers are spans)")
        for name, default in qa_fields.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, default)
        for name in ("doc_stride", "max_answer_len", "n_best"):
            if getattr(self, name) < 1:
                raise ConfigError(f"task.{name}: must be >= 1, got {getattr(self, name)}")
        if self.doc_stride >= self.max_seq_len:
            raise ConfigError(f"task.doc_stride: {self.doc_stride} must be smaller than task.max_seq_len "
                              f"{self.max_seq_len} (it is the overlap between windows)")

    @property
    def columns(self) -> dict[str, str | None]:
        if self.type == "token":
            return {"tokens": self.tokens, "tags": self.tags}
        if self.type == "qa":
            return {"context": self.context, "question": self.question, "answers": self.answers}
        return {"text": self.text, "text_pair": self.text_pair, "label": self.label}

    @property
    def label_column(self) -> str:
        return {"token": self.tags, "qa": self.answers}.get(self.type, self.label)


def load_task_split(cfg: TaskConfig, split: str, need_labels: bool = True):
    """One split as a `datasets.Dataset`, with the configured columns checked (one-line errors)."""
    from pipeline.data.dataset_files import load_input

    where = getattr(cfg, split)
    if where is None:
        raise ConfigError(f"task.{split}: not set")
    source, split_name = (cfg.dataset, where) if cfg.dataset else (where, "train")
    try:
        dataset = load_input(source, cfg.format, split_name, cfg.name)  # the standard HF_DATASETS_CACHE
    except DataError as err:  # name the task key, not the loader's generic one
        message = str(err)
        for generic in ("input.path: ", "input.format: ", "input.split: "):
            message = message.replace(generic, f"task.{split}: ")
        raise DataError(message) from None
    for key, column in cfg.columns.items():
        if column is None or (key in ("label", "tags", "answers") and not need_labels):
            continue
        if column not in dataset.column_names:
            raise DataError(
                f"task.{key}: column {column!r} is not in the {split} split {where} "
                f"(columns: {', '.join(dataset.column_names)})"
            )
    if len(dataset) == 0:
        raise DataError(f"task.{split}: {where} has no examples")
    return dataset


def load_transfer(cfg: TaskConfig, transfer: str, need_labels: bool = False):
    """The transfer set: a `tinydistill augment` output folder (its `dataset/` or `transfer.jsonl`), or any
    file with the task's columns."""
    path = Path(transfer)
    if (path / "dataset").is_dir():
        source = str(path / "dataset")
    elif (path / "transfer.jsonl").is_file():
        source = str(path / "transfer.jsonl")
    elif path.exists():
        source = str(path)
    else:
        raise DataError(f"transfer: not found: {transfer}")
    return load_task_split(replace(cfg, dataset=None, format="auto", train=source), "train", need_labels=need_labels)


def label_names_from(cfg: TaskConfig, train_dataset) -> list[str] | None:
    """The label order: `task.labels`, or the sorted values of the train split (numbers numerically);
    None for regression and extractive QA, which have no label names."""
    if cfg.type in ("regression", "qa"):
        return None
    if cfg.labels is not None:
        return list(cfg.labels)
    names = class_names(train_dataset, cfg.label_column)
    if names is not None:  # a ClassLabel column (hub datasets): its own names, in its own order
        return names
    column = train_dataset[cfg.label_column]
    values = {v for seq in column for v in seq} if cfg.type == "token" else set(column)
    if None in values:
        raise DataError(f"task.train: column {cfg.label_column!r} has empty labels")
    if all(isinstance(v, (int, np.integer)) for v in values):
        return [str(v) for v in sorted(values)]
    names = sorted(str(v) for v in values)
    if cfg.type == "token" and "O" in names:  # the outside tag first, then B-/I- pairs by type
        names.remove("O")
        names = ["O", *sorted(names, key=lambda t: (t[2:], t[:1]))]
    return names


def class_names(dataset, column: str) -> list[str] | None:
    """The names of a `ClassLabel` column (or a sequence of them), else None."""
    feature = dataset.features.get(column)
    feature = getattr(feature, "feature", feature)  # Sequence(ClassLabel) -> ClassLabel
    if isinstance(feature, list) and feature:
        feature = feature[0]
    names = getattr(feature, "names", None)
    return list(names) if names else None


def check_label_map(model_config, label_names: list[str] | None, role: str,
                    against: str = "the data's labels", task_type: str | None = None) -> list[str] | None:
    """The label order to use with a model that already has a head (a fine-tuned teacher).

    Refuses a model whose labels disagree with the data (or, for an ensemble teacher, with the first
    teacher's labels; `against` names them in the message): a teacher trained with another label order
    silently gives near-chance distillation (TinyBERT #229). Returns the model's order when the names
    agree, so the student's head uses the same ids as the teacher's.
    """
    num_labels = getattr(model_config, "num_labels", None)
    if task_type == "qa":  # a start and an end logit per position
        architectures = getattr(model_config, "architectures", None) or []
        if num_labels != 2 or (architectures and not architectures[0].endswith("ForQuestionAnswering")):
            raise ModelError(f"{role} is a {architectures[0] if architectures else 'model'} with {num_labels} outputs; "
                             "an extractive-QA task needs a question-answering head (tinydistill finetune "
                             "with task.type: qa)")
        return None
    if label_names is None:  # regression
        if num_labels != 1:
            raise ModelError(f"{role} has {num_labels} outputs; a regression task needs a 1-output head")
        return None
    if num_labels != len(label_names):
        raise ModelError(
            f"{role} has {num_labels} labels but the data has {len(label_names)} ({', '.join(label_names)}): "
            "the teacher must be fine-tuned on this task (tinydistill finetune)"
        )
    id2label = {int(k): str(v) for k, v in (model_config.id2label or {}).items()}
    model_names = [id2label.get(i, f"{DEFAULT_LABEL_PREFIX}{i}") for i in range(num_labels)]
    if all(name == f"{DEFAULT_LABEL_PREFIX}{i}" for i, name in enumerate(model_names)):
        if label_names == [str(i) for i in range(num_labels)]:
            return label_names  # integer labels 0..C-1 against an unnamed head: ids agree by construction
        raise ModelError(
            f"{role} has no label names (id2label is LABEL_0..LABEL_{num_labels - 1}) so its label order cannot "
            f"be checked against the data's {label_names}; set id2label in its config.json or fine-tune it "
            "with tinydistill finetune"
        )
    if set(model_names) != set(label_names):
        raise ModelError(
            f"{role}'s label map {dict(enumerate(model_names))} disagrees with {against} {label_names}"
        )
    return model_names


def label_permutation(model_names: list[str] | None, target_names: list[str] | None) -> list[int] | None:
    """Indices that put a model's logits into `target_names` order (`logits[..., perm]`); None when the
    orders already agree (or for regression). The names must be the same set (see check_label_map)."""
    if model_names is None or model_names == target_names:
        return None
    return [model_names.index(name) for name in target_names]


def label_maps(label_names: list[str] | None, task_type: str | None = None) -> dict:
    """`id2label`/`label2id`/`num_labels`/`problem_type` for a model config (nothing for extractive QA,
    whose head is the start and end logit)."""
    if task_type == "qa":
        return {}
    if label_names is None:
        return {"num_labels": 1, "id2label": {0: "score"}, "label2id": {"score": 0}, "problem_type": "regression"}
    maps = {"num_labels": len(label_names), "id2label": dict(enumerate(label_names)),
            "label2id": {name: i for i, name in enumerate(label_names)}}
    return maps


def model_class_for(task_type: str):
    from transformers import (
        AutoModelForQuestionAnswering,
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
    )

    return {"token": AutoModelForTokenClassification,
            "qa": AutoModelForQuestionAnswering}.get(task_type, AutoModelForSequenceClassification)


def task_logits(output) -> torch.Tensor:
    """A model output's logits: (B, C), (B, L, C), or for extractive QA (B, L, 2), start and end stacked."""
    logits = getattr(output, "logits", None)
    if logits is None and getattr(output, "start_logits", None) is not None:
        return torch.stack([output.start_logits, output.end_logits], dim=-1)
    return logits


def tokenize_task(dataset, tokenizer, cfg: TaskConfig, label_names: list[str] | None, split: str,
                  need_labels: bool = True):
    """Token ids plus `labels` (class id, float, or per-position ids with -100) and `example_index`.

    Token tasks also keep `word_positions` (the first sub-token of each word, -1 when the word was
    truncated away or produced no sub-token) and `word_labels`, so scores are per word.
    """
    if cfg.type == "qa":
        from pipeline.tasks.qa import tokenize_qa

        return tokenize_qa(dataset, tokenizer, cfg, split, need_labels)
    label2id = {name: i for i, name in enumerate(label_names or [])}
    has_labels = need_labels or cfg.label_column in dataset.column_names
    names = class_names(dataset, cfg.label_column) if has_labels else None

    def encode_label(value, row: int):
        if names is not None and isinstance(value, (int, np.integer)) and 0 <= value < len(names):
            value = names[value]  # ClassLabel ids -> their names, then to the model's ids
        if cfg.type == "regression":
            try:
                return float(value)
            except (TypeError, ValueError):
                raise DataError(f"task.{split}: row {row} has a non-numeric label {value!r}") from None
        key = str(value)
        if key not in label2id:
            raise DataError(f"task.{split}: row {row} has label {value!r}, which is not one of {label_names}")
        return label2id[key]

    def encode(batch, indices):
        if cfg.type == "token":
            encoded = tokenizer(batch[cfg.tokens], is_split_into_words=True, truncation=True,
                                max_length=cfg.max_seq_len)
        else:
            pair = batch[cfg.text_pair] if cfg.text_pair else None
            encoded = tokenizer(batch[cfg.text], pair, truncation=True, max_length=cfg.max_seq_len)
        out = {"input_ids": encoded["input_ids"], "example_index": indices}
        out["token_type_ids"] = encoded.get("token_type_ids") or [[0] * len(ids) for ids in encoded["input_ids"]]
        if cfg.type == "token":
            positions, word_labels, labels = [], [], []
            for i, row in enumerate(indices):
                words = batch[cfg.tokens][i]
                first = [-1] * len(words)
                for position, word in enumerate(encoded.word_ids(i)):
                    if word is not None and first[word] == -1:
                        first[word] = position
                positions.append(first)
                tags = [encode_label(t, row) for t in batch[cfg.tags][i]] if has_labels else [0] * len(words)
                if has_labels and len(tags) != len(words):
                    raise DataError(f"task.{split}: row {row} has {len(words)} tokens but {len(tags)} tags")
                per_position = [IGNORE_INDEX] * len(encoded["input_ids"][i])
                for word, position in enumerate(first):
                    if position >= 0:
                        per_position[position] = tags[word]
                word_labels.append(tags)
                labels.append(per_position)
            out.update(word_positions=positions, word_labels=word_labels, labels=labels)
        elif has_labels:
            out["labels"] = [encode_label(v, row) for v, row in zip(batch[cfg.label], indices)]
        return out

    return dataset.map(encode, batched=True, with_indices=True, remove_columns=dataset.column_names,
                       cache_file_name=map_cache_file(dataset), desc=f"tokenizing {split}")


def collate(rows: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of tokenized rows; token labels pad with -100, cached teacher logits with 0.
    Extractive-QA windows also give `position_mask` (padded with 0) and `labels` (B, 2): the gold
    start and end positions."""
    width = max(len(r["input_ids"]) for r in rows)
    size = len(rows)
    batch = {
        "input_ids": torch.full((size, width), pad_id, dtype=torch.long),
        "token_type_ids": torch.zeros((size, width), dtype=torch.long),
        "attention_mask": torch.zeros((size, width), dtype=torch.long),
        "example_index": torch.tensor([r["example_index"] for r in rows], dtype=torch.long),
    }
    for i, row in enumerate(rows):
        n = len(row["input_ids"])
        batch["input_ids"][i, :n] = torch.tensor(row["input_ids"])
        batch["token_type_ids"][i, :n] = torch.tensor(row["token_type_ids"])
        batch["attention_mask"][i, :n] = 1
    if "position_mask" in rows[0]:
        batch["position_mask"] = torch.zeros((size, width), dtype=torch.long)
        for i, row in enumerate(rows):
            batch["position_mask"][i, : len(row["position_mask"])] = torch.tensor(row["position_mask"])
    if "start_positions" in rows[0]:
        batch["labels"] = torch.tensor([[r["start_positions"], r["end_positions"]] for r in rows], dtype=torch.long)
    elif "labels" in rows[0]:
        first = rows[0]["labels"]
        if isinstance(first, list):
            labels = torch.full((size, width), IGNORE_INDEX, dtype=torch.long)
            for i, row in enumerate(rows):
                labels[i, : len(row["labels"])] = torch.tensor(row["labels"])
            batch["labels"] = labels
        else:
            dtype = torch.float32 if isinstance(first, float) else torch.long
            batch["labels"] = torch.tensor([r["labels"] for r in rows], dtype=dtype)
    for key in rows[0]:
        if key.startswith("teacher_logits"):  # one column per teacher: teacher_logits[_k]
            batch[key] = _stack_logits([r[key] for r in rows], width)
    return batch


def _stack_logits(values: list, width: int) -> torch.Tensor:
    """Cached teacher logits as a batch: (B, C), or (B, width, C) zero-padded for token tasks."""
    first = np.asarray(values[0], dtype=np.float32)
    if first.ndim == 2:  # token task: (tokens, classes) per row
        logits = torch.zeros((len(values), width, first.shape[1]))
        for i, value in enumerate(values):
            row = torch.tensor(np.asarray(value, dtype=np.float32))
            logits[i, : row.shape[0]] = row
        return logits
    return torch.tensor(np.stack([np.asarray(v, dtype=np.float32) for v in values]))


def epoch_batches(n_rows: int, batch_size: int, rank: int, world_size: int, seed: int, epoch: int,
                  shuffle: bool = True, lengths: list[int] | None = None) -> list[list[int]]:
    """This rank's row indices for every step of one epoch.

    One seeded permutation per epoch (the same on every rank); each step takes the next
    batch_size * world_size rows and rank r gets the r-th slice, so N processes at batch b see the
    same examples per step as one process at batch N*b. The incomplete tail is dropped.
    With `lengths` (row lengths in tokens), rows are grouped by length: see `group_by_length`.
    """
    global_batch = batch_size * world_size
    if n_rows < global_batch:
        raise DataError(
            f"the training set has {n_rows} rows, fewer than one step of batch_size {batch_size} x "
            f"{world_size} processes"
        )
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n_rows, generator=generator).tolist() if shuffle else list(range(n_rows))
    steps = n_rows // global_batch
    if lengths is not None:
        order = group_by_length(order[: steps * global_batch], lengths, global_batch, generator)
    return [order[s * global_batch + rank * batch_size: s * global_batch + (rank + 1) * batch_size]
            for s in range(steps)]


def group_by_length(order: list[int], lengths: list[int], global_batch: int, generator: torch.Generator,
                    window: int = 50) -> list[int]:
    """Reorder shuffled rows so each global batch holds rows of similar length (less padding).

    Windows of `window` global batches are sorted by length (longest first), cut into global
    batches, and those batches are then shuffled across the epoch, so that batch length does not
    follow the learning-rate schedule. Every row of `order` is kept exactly once; `len(order)` must
    be a multiple of `global_batch`.
    """
    span = global_batch * window
    batches = []
    for start in range(0, len(order), span):
        chunk = sorted(order[start:start + span], key=lambda row: -lengths[row])
        batches += [chunk[i:i + global_batch] for i in range(0, len(chunk), global_batch)]
    shuffled = torch.randperm(len(batches), generator=generator).tolist()
    return [row for b in shuffled for row in batches[b]]


@torch.no_grad()
def predict_logits(model, dataset, batch_size: int, pad_id: int, device) -> list[np.ndarray]:
    """Logits for every row in order: (C,) per example, or (L_i, C) per example for token tasks (and
    (L_i, 2), start and end, per window of extractive QA).

    Rows are batched by length (shortest first) so little compute goes to padding, then put back in
    dataset order.
    """
    from pipeline.models.loading import forward_input_names

    model.eval()
    inputs = forward_input_names(model)
    lengths = [len(ids) for ids in dataset["input_ids"]]
    order = np.argsort(np.asarray(lengths), kind="stable").tolist()
    results: list[np.ndarray | None] = [None] * len(dataset)
    for start in range(0, len(order), batch_size):
        indices = order[start: start + batch_size]
        rows = dataset.select(indices).to_list()
        batch = collate(rows, pad_id)
        logits = task_logits(model(**{k: batch[k].to(device) for k in inputs})).float().cpu().numpy()
        for i, (index, row) in enumerate(zip(indices, rows)):
            results[index] = logits[i, : len(row["input_ids"])] if logits.ndim == 3 else logits[i]
    return results


def score_predictions(cfg: TaskConfig, label_names: list[str] | None, logits: list[np.ndarray], dataset) -> dict:
    """The task's metrics for `logits` (from `predict_logits`) against the tokenized split's labels."""
    from pipeline.tasks.metrics import task_metrics

    if cfg.type == "qa":
        from pipeline.tasks.qa import score_qa

        return score_qa(cfg, logits, dataset)
    if cfg.type == "token":
        outside = "O" if "O" in (label_names or []) else label_names[0]
        gold, predicted = [], []
        for row_logits, row in zip(logits, dataset.select_columns(["word_positions", "word_labels"])):
            tags = row_logits.argmax(-1)
            gold.append([label_names[i] for i in row["word_labels"]])
            predicted.append([label_names[tags[p]] if p >= 0 else outside for p in row["word_positions"]])
        return task_metrics("token", predicted, gold)
    labels = np.asarray(dataset["labels"])
    if cfg.type == "regression":
        return task_metrics("regression", np.asarray([float(x[0]) for x in logits]), labels)
    return task_metrics("classification", np.asarray([int(x.argmax()) for x in logits]), labels,
                        num_labels=len(label_names))


def dataset_fingerprint(dataset, columns: tuple[str, ...] = ("input_ids", "token_type_ids")) -> str:
    """A content hash of the token columns (what a teacher's logits depend on)."""
    import pyarrow as pa

    digest = hashlib.sha256(str(len(dataset)).encode())
    table = dataset.with_format(None).data.table if hasattr(dataset.data, "table") else dataset.data
    for name in columns:
        column = pa.chunked_array(table.column(name).chunks).combine_chunks()
        if dataset._indices is not None:  # a selected/shuffled view: hash the rows it shows, in order
            column = column.take(dataset._indices.column(0))
        digest.update(name.encode())
        digest.update(np.asarray(column.value_lengths()).tobytes())
        digest.update(np.asarray(column.flatten()).astype(np.int64).tobytes())
    return digest.hexdigest()


def check_seq_len(cfg: TaskConfig, *model_configs) -> None:
    from pipeline.models.architectures import positions_note, usable_positions

    for config in model_configs:
        limit = usable_positions(config)
        if limit is not None and cfg.max_seq_len > limit:
            raise ModelError(f"task.max_seq_len {cfg.max_seq_len} exceeds {positions_note(config)}")


def tokenize_splits(cfg: TaskConfig, tokenizer, label_names: list[str] | None, raw: dict) -> dict:
    """{split: tokenized dataset} for the raw splits given (None entries are kept as None)."""
    return {split: None if data is None else tokenize_task(data, tokenizer, cfg, label_names, split)
            for split, data in raw.items()}


def score_splits(task: TaskConfig, label_names, model, data: dict, batch_size: int, pad_id: int, device) -> dict:
    """{"dev": metrics, "test": metrics} for the tokenized splits present."""
    return {split: score_predictions(task, label_names, predict_logits(model, data[split], batch_size, pad_id, device),
                                     data[split])
            for split in ("dev", "test") if data.get(split) is not None}
