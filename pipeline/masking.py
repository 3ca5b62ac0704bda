"""BERT's dynamic masking for masked-LM training (Devlin et al. 2019, sec. 3.1), shared by MLM pretraining
and DistilBERT-style general distillation.

Each real token is selected with a probability; a selected token becomes [MASK] 80% of the time, a random
token 10%, itself 10%, and the model predicts the original at every selected position. Special tokens and
padding are never selected. The masks of a micro-batch are a function of (seed, rank, step, micro-batch)
only, so a resumed run draws exactly the masks an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import torch

IGNORE_INDEX = -100


def masking_generator(seed: int, rank: int, step: int, micro_batch: int) -> torch.Generator:
    """A generator for one micro-batch's masking, a function of where it is in the run and nothing else,
    so a resumed run draws exactly the masks an uninterrupted one would."""
    key = hashlib.blake2b(f"mlm:{seed}:{rank}:{step}:{micro_batch}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(key, "little") >> 1)


def mask_tokens(input_ids: torch.Tensor, maskable: torch.Tensor, mask_token_id: int, vocab_size: int,
                probability: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking: (inputs, labels). Each `maskable` position is selected with `probability`;
    a selected one becomes [MASK] (80%), a uniformly random token (10%) or stays itself (10%). Labels
    hold the original id at selected positions and -100 elsewhere. Every draw is made for every
    position, so the draws depend only on the shape and the generator."""
    shape = input_ids.shape
    selected = (torch.rand(shape, generator=generator) < probability) & maskable
    how = torch.rand(shape, generator=generator)
    random_ids = torch.randint(vocab_size, shape, generator=generator, dtype=input_ids.dtype)
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    inputs = torch.where(selected & (how < 0.8), torch.full_like(input_ids, mask_token_id), input_ids)
    inputs = torch.where(selected & (how >= 0.8) & (how < 0.9), random_ids, inputs)
    return inputs, labels


def masked_batches(batches: Iterator, first_step: int, grad_accum: int, seed: int, rank: int, tokenizer,
                   probability: float) -> Iterator:
    """`batches` ((epoch, index, batch[, reader position]) from the run's data position at optimiser step `first_step`) with
    fresh BERT masks in `input_ids` and the originals in `labels`. Micro-batches are counted from
    first_step * grad_accum, so each one's masks depend on its (step, micro-batch) position only."""
    never_masked = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
    counter = first_step * grad_accum
    for epoch, index, batch, *position in batches:
        step, micro = divmod(counter, grad_accum)
        generator = masking_generator(seed, rank, step, micro)
        maskable = batch["attention_mask"].bool() & ~torch.isin(batch["input_ids"], never_masked)
        batch["input_ids"], batch["labels"] = mask_tokens(batch["input_ids"], maskable, tokenizer.mask_token_id,
                                                          len(tokenizer), probability, generator)
        counter += 1
        yield epoch, index, batch, *position


def masked_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Share of selected positions whose most likely token is the original (0 when none is selected)."""
    selected = labels != IGNORE_INDEX
    correct = (logits.argmax(dim=-1) == labels) & selected
    return correct.sum().float() / selected.sum().clamp_min(1)
