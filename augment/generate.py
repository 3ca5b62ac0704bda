"""The two `datasets.map` functions of a run: segment every text once, then draw its variants.

Output schema of the transfer set (one row per kept variant):
- the input's text column(s) (`columns.text`, `columns.text_pair`) or token/tag columns, same names;
  an augmented text is rendered from its words, an untouched one is copied verbatim;
- the label column (`columns.label`), copied;
- `source_index` (int64): row of the example in the whole input (stable across shards);
- `variant` (int32): 0 for the original example, 1..N for its variants;
- `augmented` (string): comma-separated names of the text columns this variant changed ("" for 0);
- `n_masked`, `n_replaced` (int32): words masked / replaced inside the kept n-gram; `ngram` (bool);
- with `output.keep_words`: `<column>_words` (list of strings), the variant's words.

Each example's RNG is `random.Random(f"{seed}/{source_index}")`: the same rows come out with 1 or 8
workers and with or without sharding.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from augment.candidates import CandidateFilter
from augment.mlm import MaskedLMFiller
from augment.ops import MASK, REPLACE, Side, make_variants, perturb_tang, perturb_tinybert
from augment.render import join_words, mask_form
from augment.words import Eligibility, Segmenter

HIDDEN_COLUMNS = ("_n_words", "_n_eligible", "_n_covered")


def word_columns(n_sides: int) -> list[tuple[str, str]]:
    """Names of the temporary (words, tags) columns of pass one, per text side."""
    return [(f"_words{i}", f"_tags{i}") for i in range(n_sides)]


class SegmentBatch:
    """Pass one: text -> words and tags, once per example (tokens are taken as given)."""

    def __init__(self, segmenter: Segmenter, text_columns: Sequence[str], pretokenized: bool):
        self.segmenter = segmenter
        self.text_columns = tuple(text_columns)
        self.pretokenized = pretokenized

    def __call__(self, batch: dict) -> dict:
        out = {}
        for (words_col, tags_col), column in zip(word_columns(len(self.text_columns)), self.text_columns):
            words_list, tags_list = [], []
            for value in batch[column]:
                if self.pretokenized:
                    words = [str(t) for t in value or []]
                    tags = [self.segmenter.tagger(w) for w in words]
                else:
                    words, tags = self.segmenter(value or "")
                words_list.append(words)
                tags_list.append(tags)
            out[words_col], out[tags_col] = words_list, tags_list
        return out


class VariantBuilder:
    """Pass two: for each segmented example, its original row and up to N variants (see module doc)."""

    def __init__(
        self,
        *,
        language: str,
        text_columns: Sequence[str],
        label_column: str | None,
        tags_column: str | None,
        outside_tag: str,
        ops,
        seed: int,
        offset: int,
        table: dict[str, tuple[str, ...]],
        eligibility: Eligibility,
        accept: CandidateFilter,
        mlm: MaskedLMFiller | None,
        mlm_top_k: int,
        keep_words: bool,
    ):
        self.language = language
        self.text_columns = tuple(text_columns)
        self.label_column = label_column
        self.tags_column = tags_column
        self.outside_tag = outside_tag
        self.ops = ops
        self.seed = seed
        self.offset = offset
        self.table = table
        self.eligibility = eligibility
        self.accept = accept
        self.mlm = mlm
        self.mlm_top_k = mlm_top_k
        self.keep_words = keep_words
        self._masked: dict[str, str] = {}

    def rule(self) -> Callable:
        ops = self.ops
        if ops.mode == "tinybert":
            return lambda side, rng: perturb_tinybert(side, rng, ops.p_replace)
        return lambda side, rng: perturb_tang(side, rng, ops.p_mask, ops.p_pos)

    def _mask_form(self, word: str) -> str:
        form = self._masked.get(word)
        if form is None:
            form = self._masked[word] = mask_form(word, self.language, self.ops.mask_token)
        return form

    def _positions(self, words, tags, labels) -> tuple[list[bool], list[bool]]:
        """Per word: may it be replaced, may it be masked (token tasks: only O-tagged words)."""
        outside = [True] * len(words) if labels is None else [str(t) == self.outside_tag for t in labels]
        replaceable = [o and self.eligibility.replaceable(w, t) for w, t, o in zip(words, tags, outside)]
        maskable = [o and self.eligibility.maskable(t) for t, o in zip(tags, outside)]
        return replaceable, maskable

    def __call__(self, batch: dict, indices: list[int]) -> dict:
        n_examples = len(indices)
        sides_in = [[] for _ in range(n_examples)]  # per example, per side: (words, replaceable, maskable)
        for words_col, tags_col in word_columns(len(self.text_columns)):
            for i in range(n_examples):
                labels = batch[self.tags_column][i] if self.tags_column else None
                words, tags = batch[words_col][i], batch[tags_col][i]
                sides_in[i].append((words, *self._positions(words, tags, labels)))
        contextual = self._mlm_candidates(sides_in)

        out: dict[str, list] = {name: [] for name in self._columns(batch)}
        rule = self.rule()
        for i, index in enumerate(indices):
            source_index = self.offset + index
            sides, eligible, covered = [], 0, 0
            for s, (words, replaceable, maskable) in enumerate(sides_in[i]):
                candidates = []
                for p, (word, ok) in enumerate(zip(words, replaceable)):
                    found = self.table.get(word, ()) if ok else ()
                    extra = contextual.get((i, s, p))
                    if extra:
                        found = tuple(dict.fromkeys(found + extra))
                    candidates.append(found)
                    eligible += ok
                    covered += bool(found)
                sides.append(
                    Side(
                        tuple(words),
                        tuple(candidates),
                        tuple(maskable),
                        tuple(self._mask_form(w) for w in words),
                    )
                )
            rng = random.Random(f"{self.seed}/{source_index}")
            variants = make_variants(
                sides,
                self.ops.n_variants,
                rng,
                rule,
                self.ops.p_ng,
                self.ops.ngram_max,
                self.ops.n_variants * self.ops.draws_per_variant,
            )
            first = True
            if self.ops.include_original:
                self._emit(out, batch, i, sides, None, source_index, 0, (eligible, covered))
                first = False
            for number, variant in enumerate(variants, 1):
                self._emit(
                    out,
                    batch,
                    i,
                    sides,
                    variant,
                    source_index,
                    number,
                    (eligible, covered) if first else (0, 0),
                )
                first = False
        return out

    def _mlm_candidates(self, sides_in) -> dict[tuple[int, int, int], tuple[str, ...]]:
        """(example, side, position) -> accepted MLM fillers, for every replaceable word of the batch."""
        if self.mlm is None:
            return {}
        keys, requests = [], []
        for i, sides in enumerate(sides_in):
            for s, (words, replaceable, _) in enumerate(sides):
                for p, ok in enumerate(replaceable):
                    if ok:
                        keys.append((i, s, p))
                        requests.append((words, p))
        fillers = self.mlm.fill(requests, 2 * self.mlm_top_k) if requests else []
        found = {}
        for (i, s, p), (words, _), options in zip(keys, requests, fillers):
            accepted = tuple(f for f in options if self.accept(words[p], f))[: self.mlm_top_k]
            if accepted:
                found[(i, s, p)] = accepted
        return found

    def _columns(self, batch: dict) -> list[str]:
        names = [c for c in batch if not c.startswith(("_words", "_tags"))]
        names += ["source_index", "variant", "augmented", "n_masked", "n_replaced", "ngram", *HIDDEN_COLUMNS]
        if self.keep_words:
            names += [f"{c}_words" for c in self.text_columns]
        return names

    def _emit(self, out, batch, i, sides, variant, source_index, number, coverage) -> None:
        for name in out:
            if name in batch and not name.startswith("_"):
                out[name].append(batch[name][i])
        pretokenized = self.tags_column is not None
        changed, n_words, n_masked, n_replaced, ngram = [], 0, 0, 0, False
        for s, column in enumerate(self.text_columns):
            perturbed = None if variant is None else variant.sides[s]
            words = sides[s].words if perturbed is None else perturbed.words
            if perturbed is not None:
                changed.append(column)
                n_words += len(perturbed.flags)
                n_masked += perturbed.count(MASK)
                n_replaced += perturbed.count(REPLACE)
                ngram = ngram or perturbed.ngram
                out[column][-1] = list(words) if pretokenized else join_words(words, self.language)
                if pretokenized:
                    start, end = perturbed.span
                    out[self.tags_column][-1] = batch[self.tags_column][i][start:end]
            if self.keep_words:
                out[f"{column}_words"].append(list(words))
        out["source_index"].append(source_index)
        out["variant"].append(number)
        out["augmented"].append(",".join(changed))
        out["n_masked"].append(n_masked)
        out["n_replaced"].append(n_replaced)
        out["ngram"].append(ngram)
        out["_n_words"].append(n_words)
        out["_n_eligible"].append(coverage[0])
        out["_n_covered"].append(coverage[1])
