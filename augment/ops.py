"""The perturbations, as pure functions on word lists with an explicit `random.Random`.

Tang et al. 2019 (§3.3): for each word draw X ~ U[0, 1]; X < p_mask masks it, p_mask <= X < p_mask + p_pos
replaces it by a same-POS candidate (the two are exclusive); then, with p_ng, only a random n-gram of
the words is kept, n uniform in 1..5. The start is uniform over all len - n + 1 positions (the official
code's `randrange(len - n)` never picks the last one). TinyBERT's mode instead replaces each word that
has candidates with p = 0.4 and neither masks nor crops.

Masked words are stored already rendered (`augment.render.mask_form`, e.g. k `[MASK]` for a k-character
Chinese word) with flag MASK, so a variant renders by a plain join. Nothing here touches the global RNG:
each example gets its own `random.Random`, which is what makes the output independent of worker count.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

KEEP, MASK, REPLACE = 0, 1, 2

# Which sides a pair variant augments, cycled so a third go to each (Tang's paired script).
PAIR_TARGETS = ((0,), (1,), (0, 1))


@dataclass(frozen=True)
class Side:
    """One text of an example, ready to perturb: its words and, per word, what may happen to it."""

    words: tuple[str, ...]
    candidates: tuple[tuple[str, ...], ...]  # same-POS replacements per word; () if it may not be replaced
    maskable: tuple[bool, ...]
    masked_forms: tuple[str, ...]  # what each word becomes when masked


@dataclass(frozen=True)
class Perturbed:
    """A perturbed side: its words, a KEEP/MASK/REPLACE flag each, and the kept span of the input."""

    words: tuple[str, ...]
    flags: tuple[int, ...]
    span: tuple[int, int]  # [start, end) of the original positions that survive n-gram sampling

    @property
    def ngram(self) -> bool:
        return self.span != (0, len(self.flags))

    def count(self, flag: int) -> int:
        """How many words inside the kept span carry `flag`."""
        return self.flags[self.span[0] : self.span[1]].count(flag)


def perturb_tang(side: Side, rng: random.Random, p_mask: float, p_pos: float) -> tuple[list[str], list[int]]:
    """Tang's per-word rule: mask with p_mask, else replace with p_pos (uniform over the candidates).

    Equivalent to one uniform draw per word, but only the ~20 % of words that get an event cost a draw:
    the gap to the next such word is geometric with p = p_mask + p_pos, and an event is a mask with
    probability p_mask / p. A masked word that may not be masked, or a replaced one without candidates,
    stays as it is, as in the per-word formulation.
    """
    words = list(side.words)
    flags = [KEEP] * len(words)
    p_event = p_mask + p_pos
    if p_event <= 0.0 or not words:
        return words, flags
    draw = rng.random
    log_q = math.log1p(-p_event) if p_event < 1.0 else -math.inf
    i = -1
    while True:
        i += 1 + int(math.log(1.0 - draw()) / log_q)
        if i >= len(words):
            return words, flags
        if draw() * p_event < p_mask:
            if side.maskable[i]:
                words[i] = side.masked_forms[i]
                flags[i] = MASK
        elif side.candidates[i]:
            candidates = side.candidates[i]
            words[i] = candidates[int(draw() * len(candidates))]
            flags[i] = REPLACE


def perturb_tinybert(side: Side, rng: random.Random, p_replace: float) -> tuple[list[str], list[int]]:
    """TinyBERT's rule: each word with candidates is replaced by a random one with p_replace."""
    words = list(side.words)
    flags = [KEEP] * len(words)
    draw = rng.random
    for i, candidates in enumerate(side.candidates):
        if candidates and draw() < p_replace:
            words[i] = candidates[int(draw() * len(candidates))]
            flags[i] = REPLACE
    return words, flags


def sample_ngram(n_words: int, rng: random.Random, max_n: int = 5) -> tuple[int, int]:
    """A random [start, end) window of n words, n uniform in 1..min(max_n, n_words), start uniform."""
    n = 1 + int(rng.random() * min(max_n, n_words))
    start = int(rng.random() * (n_words - n + 1))
    return start, start + n


def perturb_side(
    side: Side,
    rng: random.Random,
    rule: Callable[[Side, random.Random], tuple[list[str], list[int]]],
    p_ng: float,
    ngram_max: int,
) -> Perturbed:
    """Apply the per-word rule, then (with p_ng) keep only a random n-gram of the result."""
    words, flags = rule(side, rng)
    span = (0, len(words))
    if words and p_ng > 0 and rng.random() < p_ng:
        span = sample_ngram(len(words), rng, ngram_max)
        words = words[span[0] : span[1]]
    return Perturbed(tuple(words), tuple(flags), span)


@dataclass(frozen=True)
class Variant:
    """One augmented example: a Perturbed per augmented side, None for sides left as they were."""

    sides: tuple[Perturbed | None, ...]

    def words(self, originals: Sequence[Side]) -> tuple[tuple[str, ...], ...]:
        return tuple(o.words if p is None else p.words for p, o in zip(self.sides, originals))


def make_variants(
    sides: Sequence[Side],
    n_variants: int,
    rng: random.Random,
    rule: Callable[[Side, random.Random], tuple[list[str], list[int]]],
    p_ng: float = 0.25,
    ngram_max: int = 5,
    max_draws: int | None = None,
) -> list[Variant]:
    """Up to `n_variants` distinct variants of one example, none equal to the original.

    Duplicates (of the original or of an earlier variant) are redrawn, at most `max_draws` draws in all,
    because a two-word sentence cannot have 20 distinct variants. For a pair, the j-th kept variant
    augments the first text, the second, or both, for j % 3 = 0, 1, 2: thirds, as in Tang's paired script.
    """
    max_draws = 3 * n_variants if max_draws is None else max_draws
    seen = {tuple(side.words for side in sides)}
    variants: list[Variant] = []
    for _ in range(max_draws):
        if len(variants) == n_variants:
            break
        targets = PAIR_TARGETS[len(variants) % 3] if len(sides) == 2 else tuple(range(len(sides)))
        perturbed = tuple(
            perturb_side(side, rng, rule, p_ng, ngram_max) if i in targets and side.words else None
            for i, side in enumerate(sides)
        )
        variant = Variant(perturbed)
        key = variant.words(sides)
        if key not in seen:
            seen.add(key)
            variants.append(variant)
    return variants
