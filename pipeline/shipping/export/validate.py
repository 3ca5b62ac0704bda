"""Checking an exported file against the PyTorch model it came from, on padded batches of real inputs.

The inputs are the first rows of a task split (read through the model's own tokenizer) or, without a
task, generated text: random vocabulary tokens in sentences of every length from 1 up, so each batch
mixes lengths and exercises the padding mask. Figures: the largest absolute difference of the outputs
(logits, or hidden states of a plain encoder) at real positions, and the share of rows (token tasks:
real tokens; extractive QA: each row's start and its end, over real positions) whose argmax agrees.
"""

from __future__ import annotations

import random

import torch

from pipeline.errors import ModelError
from pipeline.shipping.export.graph import ExportSource
from pipeline.shipping.export.runtime import OnnxModel
from pipeline.tasks.data import TaskConfig, collate, load_task_split, tokenize_task


def task_rows(source: ExportSource, task: TaskConfig, max_rows: int) -> tuple[list[dict], str]:
    """The first `max_rows` rows of the task's dev split (else test), tokenized; and where they came from.
    `load_source(model_dir, task.type)` has checked that the model's head reads this task."""
    split = "dev" if task.dev else "test"
    if not getattr(task, split):
        raise ModelError("task: set task.dev (or task.test) to validate the export on real inputs")
    dataset = load_task_split(task, split, need_labels=False)
    dataset = dataset.select(range(min(max_rows, len(dataset))))
    labels = [column for column in (task.label_column,) if column in dataset.column_names]
    rows = tokenize_task(dataset.remove_columns(labels), source.tokenizer, task, None, split,
                         need_labels=False).to_list()
    return rows, f"{split} split {getattr(task, split)} ({len(rows)} rows)"


def generated_rows(source: ExportSource, count: int, seed: int) -> tuple[list[dict], str]:
    """`count` rows of random vocabulary tokens, lengths 1, 2, ... (cycling), pairs for a pair BiLSTM."""
    tokenizer = source.tokenizer
    if hasattr(tokenizer, "get_vocab"):
        special = set(tokenizer.all_special_tokens)
        words = sorted(t for t in tokenizer.get_vocab() if t not in special and not t.startswith(("##", "[")))
    else:
        words = tokenizer.tokens[2:]
    if not words:
        raise ModelError("the tokenizer has no ordinary tokens to generate validation text from")
    rng = random.Random(seed)
    longest = max(1, min(48, source.max_length - 3))
    texts = [" ".join(rng.choice(words) for _ in range(1 + i % longest)) for i in range(count)]
    pairs = [" ".join(rng.choice(words) for _ in range(1 + i % 7)) for i in range(count)] if source.pair else None
    encoded = tokenizer(texts, pairs, truncation=True, max_length=source.max_length)
    type_ids = encoded.get("token_type_ids") or [[0] * len(ids) for ids in encoded["input_ids"]]
    rows = [{"input_ids": ids, "token_type_ids": types, "example_index": i}
            for i, (ids, types) in enumerate(zip(encoded["input_ids"], type_ids))]
    return rows, f"generated text ({count} rows)"


def padded_batches(rows: list[dict], batch_size: int, pad_id: int) -> list[dict[str, torch.Tensor]]:
    """The rows in order, `batch_size` at a time, right-padded to each batch's longest."""
    return [{key: value for key, value in collate(rows[start:start + batch_size], pad_id).items()
             if key in ("input_ids", "attention_mask", "token_type_ids")}
            for start in range(0, len(rows), batch_size)]


def tracing_batch(rows: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Two versions of the first row, of different lengths, padded: the exporter traces a batch of more
    than one row with a real padding mask, whatever the validation rows are."""
    first = rows[0]
    cut = len(first["input_ids"]) // 2
    other = {key: (first[key][:cut] if cut else first[key] * 2) for key in ("input_ids", "token_type_ids")}
    return padded_batches([first, {**first, **other}], 2, pad_id)[0]


@torch.inference_mode()
def reference_outputs(source: ExportSource, batches: list[dict]) -> list[torch.Tensor]:
    return [source.module(*(batch[name] for name in source.input_names)).float() for batch in batches]


def compare(source: ExportSource, references: list[torch.Tensor], model: OnnxModel, batches: list[dict]) -> dict:
    """{"max_abs_diff", "argmax_agreement" (None for a plain encoder), "rows"} of `model` against PyTorch."""
    worst, agree, total = 0.0, 0, 0
    for reference, batch in zip(references, batches, strict=True):
        output = model.run(batch)
        if output.shape != reference.shape:
            raise ModelError(f"{model.path.name} returned shape {tuple(output.shape)}, PyTorch "
                             f"{tuple(reference.shape)}")
        real = batch["attention_mask"].bool()
        if source.head == "qa":  # the argmax over real positions, of the start and of the end, per row
            worst = max(worst, float((reference - output)[real].abs().max()))
            hidden = ~real[..., None]
            reference, output = reference.masked_fill(hidden, -torch.inf), output.masked_fill(hidden, -torch.inf)
            agree += int((reference.argmax(1) == output.argmax(1)).sum())
            total += reference.shape[0] * 2
            continue
        if reference.ndim == 3:  # per position: compare real tokens only
            reference, output = reference[real], output[real]
        worst = max(worst, float((reference - output).abs().max()))
        agree += int((reference.argmax(-1) == output.argmax(-1)).sum())
        total += reference.shape[0]
    rows = sum(batch["input_ids"].shape[0] for batch in batches)
    return {"max_abs_diff": worst, "argmax_agreement": agree / total if source.has_logits else None, "rows": rows}
