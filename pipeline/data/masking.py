"""BERT's dynamic masking for masked-LM training (Devlin et al. 2019, sec. 3.1), shared by MLM pretraining
and DistilBERT-style general distillation.

Each real token is selected with a probability; a selected token becomes [MASK] 80% of the time, a random
token 10%, itself 10%, and the model predicts the original at every selected position. Special tokens and
padding are never selected. The masks of a micro-batch are a function of (seed, rank, step, micro-batch)
only, so a resumed run draws exactly the masks an uninterrupted one would.

Whole-word masking (on by default; Cui et al., Chinese-BERT-wwm) selects words instead of tokens: the
characters of a jieba word, or the wordpieces of a word (a `##` piece joins the one before), are
selected together and share one 80/10/10 decision, so the expected share of masked tokens is still
the probability.
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
                probability: float, generator: torch.Generator,
                word_starts: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking: (inputs, labels). Each `maskable` position is selected with `probability`;
    a selected one becomes [MASK] (80%), a uniformly random token (10%) or stays itself (10%). Labels
    hold the original id at selected positions and -100 elsewhere. Every draw is made for every
    position, so the draws depend only on the shape and the generator. With `word_starts` ((B, L): the
    position where each token's word begins), every token takes its word's draws: whole words."""
    shape = input_ids.shape
    chosen, how = torch.rand(shape, generator=generator), torch.rand(shape, generator=generator)
    if word_starts is not None:
        chosen, how = chosen.gather(1, word_starts), how.gather(1, word_starts)
    selected = (chosen < probability) & maskable
    random_ids = torch.randint(vocab_size, shape, generator=generator, dtype=input_ids.dtype)
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    inputs = torch.where(selected & (how < 0.8), torch.full_like(input_ids, mask_token_id), input_ids)
    inputs = torch.where(selected & (how >= 0.8) & (how < 0.9), random_ids, inputs)
    return inputs, labels


def _is_cjk(token: str) -> bool:
    return len(token) == 1 and ("\u4e00" <= token <= "\u9fff" or "\u3400" <= token <= "\u4dbf")


class WordStarts:
    """For whole-word masking: where each token's word begins. Runs of Chinese characters are cut into
    jieba words; elsewhere a `##` wordpiece continues the word before it."""

    def __init__(self, tokenizer):
        tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        self.tokens = tokens
        self.continues = [t.startswith("##") for t in tokens]
        self.cjk = [_is_cjk(t) for t in tokens]

    def __call__(self, input_ids: torch.Tensor) -> torch.Tensor:
        import jieba

        starts = torch.arange(input_ids.shape[1]).repeat(input_ids.shape[0], 1)
        for row, ids in enumerate(input_ids.tolist()):
            position, length = 0, len(ids)
            while position < length:
                if self.cjk[ids[position]]:
                    end = position
                    while end < length and self.cjk[ids[end]]:
                        end += 1
                    start = position
                    for word in jieba.lcut("".join(self.tokens[i] for i in ids[position:end]), HMM=False):
                        starts[row, start : start + len(word)] = start
                        start += len(word)
                    position = end
                else:
                    if position and self.continues[ids[position]]:
                        starts[row, position] = starts[row, position - 1]
                    position += 1
        return starts


def masked_batches(batches: Iterator, first_step: int, grad_accum: int, seed: int, rank: int, tokenizer,
                   probability: float, whole_words: bool = True) -> Iterator:
    """`batches` ((epoch, index, batch[, reader position]) from the run's data position at optimiser step
    `first_step`) with fresh BERT masks (of whole words unless `whole_words` is off) in `input_ids` and the originals in `labels`. Micro-batches are counted from
    first_step * grad_accum, so each one's masks depend on its (step, micro-batch) position only."""
    never_masked = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
    word_starts = WordStarts(tokenizer) if whole_words else None
    counter = first_step * grad_accum
    for epoch, index, batch, *position in batches:
        step, micro = divmod(counter, grad_accum)
        generator = masking_generator(seed, rank, step, micro)
        maskable = batch["attention_mask"].bool() & ~torch.isin(batch["input_ids"], never_masked)
        starts = word_starts(batch["input_ids"]) if word_starts else None
        batch["input_ids"], batch["labels"] = mask_tokens(batch["input_ids"], maskable, tokenizer.mask_token_id,
                                                          len(tokenizer), probability, generator, starts)
        counter += 1
        yield epoch, index, batch, *position


def masked_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Share of selected positions whose most likely token is the original (0 when none is selected)."""
    selected = labels != IGNORE_INDEX
    correct = (logits.argmax(dim=-1) == labels) & selected
    return correct.sum().float() / selected.sum().clamp_min(1)
