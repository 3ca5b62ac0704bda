"""The teacher's masked-LM head as a candidate source, at word level and batched.

TinyBERT's augmenter masks one WordPiece at a time, runs one batch-1 forward per word, and accepts only
`[a-z]` words, so it produces nothing for Chinese. Here a whole word of k pieces (k characters for a
Chinese word) is replaced by k mask tokens, and the k positions are decoded jointly: a beam over the
positions keeps the best whole-word fillers by summed log-probability. All (sentence, word) requests of
a `datasets.map` batch go through the model together, sorted by length and padded, under inference mode.

Fillers depend on the sentence, so unlike dictionary and vector candidates they are per occurrence.
They are filtered like the others (same POS, replaceable) by the caller.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from pipeline.errors import ModelError
from pipeline.models.hub import split_revision

_CJK_CHAR = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


class MaskedLMFiller:
    """Loads `model` lazily (once per worker process) and returns whole-word fillers for masked words."""

    def __init__(self, model: str, language: str, batch_size: int = 64, max_length: int = 128):
        self.model_name = model
        self.language = language
        self.batch_size = batch_size
        self.max_length = max_length
        self._model = None

    def __getstate__(self):  # workers load their own copy instead of unpickling one
        return {**self.__dict__, "_model": None}

    def load(self) -> MaskedLMFiller:
        if self._model is not None:
            return self
        import torch
        from transformers import AutoModelForMaskedLM, AutoTokenizer

        try:
            source, revision = split_revision(self.model_name)
            self.tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
            model = AutoModelForMaskedLM.from_pretrained(source, revision=revision)
        except Exception as err:  # noqa: BLE001 -- hub or file errors of every kind; the user must fix the path
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ModelError(
                f"candidates.mlm.model: cannot load a masked LM from {self.model_name!r}: {first}"
            ) from None
        if self.tokenizer.mask_token_id is None:
            raise ModelError(f"candidates.mlm.model: the tokenizer of {self.model_name!r} has no mask token")
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self._model = model.to(self.device).eval().requires_grad_(False)
        self._pieces: dict[str, list[int]] = {}
        self._first_ok, self._rest_ok = self._allowed_tokens()
        return self

    def _allowed_tokens(self):
        """Vocabulary masks: which tokens may start a filler word, and which may continue one."""
        import torch

        vocab = self.tokenizer.convert_ids_to_tokens(list(range(len(self.tokenizer))))
        special = set(self.tokenizer.all_special_ids)
        first = torch.zeros(len(vocab), dtype=torch.bool)
        rest = torch.zeros(len(vocab), dtype=torch.bool)
        for i, token in enumerate(vocab):
            if i in special or token is None:
                continue
            if self.language == "zh":
                first[i] = rest[i] = len(token) == 1 and bool(_CJK_CHAR.match(token))
            else:
                first[i] = token.isalpha()
                rest[i] = token.startswith("##") and token[2:].isalpha()
        return first, rest

    def pieces(self, word: str) -> list[int]:
        ids = self._pieces.get(word)
        if ids is None:
            ids = self._pieces[word] = self.tokenizer.convert_tokens_to_ids(self.tokenizer.tokenize(word))
        return ids

    def encode(self, words: Sequence[str], position: int) -> tuple[list[int], int, int]:
        """Input ids with words[position] as k mask tokens, cut to max_length around them; (ids, start, k)."""
        before = [i for w in words[:position] for i in self.pieces(w)]
        after = [i for w in words[position + 1 :] for i in self.pieces(w)]
        k = len(self.pieces(words[position]))
        room = self.max_length - 2 - k
        keep_before = min(len(before), max(room // 2, room - len(after)))
        before = before[len(before) - keep_before :] if keep_before else []
        after = after[: max(0, room - len(before))]
        ids = [
            self.tokenizer.cls_token_id,
            *before,
            *[self.tokenizer.mask_token_id] * k,
            *after,
            self.tokenizer.sep_token_id,
        ]
        return ids, 1 + len(before), k

    def fill(self, requests: Sequence[tuple[Sequence[str], int]], top_k: int) -> list[list[str]]:
        """For each (words, position): up to top_k whole-word fillers, best first, the word itself excluded."""
        self.load()
        encoded = [self.encode(words, pos) for words, pos in requests]
        results: list[list[str]] = [[] for _ in requests]
        order = sorted(
            (i for i, e in enumerate(encoded) if 0 < e[2] <= self.max_length - 2),
            key=lambda i: len(encoded[i][0]),
        )
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            for i, fillers in zip(batch, self._fill_batch([encoded[i] for i in batch], top_k + 1)):
                original = requests[i][0][requests[i][1]]
                results[i] = [f for f in fillers if f != original][:top_k]
        return results

    def _fill_batch(self, encoded: list[tuple[list[int], int, int]], beam: int) -> list[list[str]]:
        import torch

        width = max(len(ids) for ids, _, _ in encoded)
        pad = self.tokenizer.pad_token_id or 0
        input_ids = torch.full((len(encoded), width), pad, dtype=torch.long)
        attention = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, (ids, _, _) in enumerate(encoded):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention[row, : len(ids)] = 1
        rows = [row for row, (_, _, k) in enumerate(encoded) for _ in range(k)]
        cols = [start + j for _, start, k in encoded for j in range(k)]
        with torch.inference_mode():
            log_probs = torch.log_softmax(
                self._mask_logits(input_ids, attention, rows, cols).float(), dim=-1
            ).cpu()
        out, offset = [], 0
        for _, _, k in encoded:
            out.append(self._beam(log_probs[offset : offset + k], beam))
            offset += k
        return out

    def _mask_logits(self, input_ids, attention, rows: list[int], cols: list[int]):
        """Vocabulary logits at the masked positions only.

        The LM head (transform + a hidden x vocabulary product) is applied to the masked positions
        alone when the model exposes it (`cls` for BERT, `lm_head` for RoBERTa-likes); on a Chinese
        BERT the head over every position is ~15-30 % of the forward pass, all of it wasted here.
        """
        inputs = {"input_ids": input_ids.to(self.device), "attention_mask": attention.to(self.device)}
        head = getattr(self._model, "cls", None) or getattr(self._model, "lm_head", None)
        if head is None:
            return self._model(**inputs).logits[rows, cols]
        hidden = self._model.base_model(**inputs).last_hidden_state
        return head(hidden[rows, cols])

    def _beam(self, log_probs, beam: int) -> list[str]:
        """Best whole words for k consecutive masks: keep `beam` prefixes, extend one position at a time."""
        import torch

        scores = torch.zeros(1)
        prefixes: list[list[int]] = [[]]
        for position, lp in enumerate(log_probs):
            allowed = self._first_ok if position == 0 else self._rest_ok
            lp = lp.masked_fill(~allowed, float("-inf"))
            top = torch.topk(lp, min(beam, int(allowed.sum())))
            total = scores[:, None] + top.values[None, :]
            best = torch.topk(total.flatten(), min(beam, total.numel()))
            n = top.values.numel()
            prefixes = [prefixes[int(b) // n] + [int(top.indices[int(b) % n])] for b in best.indices]
            scores = best.values
        words = []
        for ids, score in zip(prefixes, scores):
            if torch.isfinite(score):
                tokens = self.tokenizer.convert_ids_to_tokens(ids)
                words.append("".join(t.removeprefix("##") for t in tokens))
        return list(dict.fromkeys(words))
