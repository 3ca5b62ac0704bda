"""The perturbations on synthetic word lists: rates, n-gram lengths, dedup, pairs, determinism."""

import random

import pytest

from augment.ops import (
    KEEP,
    MASK,
    REPLACE,
    Side,
    make_variants,
    perturb_side,
    perturb_tang,
    perturb_tinybert,
    sample_ngram,
)
from augment.render import join_words, mask_form, mask_pieces


def side(n: int, with_candidates: bool = True) -> Side:
    words = tuple(f"w{i}" for i in range(n))
    cands = tuple((f"c{i}a", f"c{i}b") if with_candidates else () for i in range(n))
    return Side(words, cands, (True,) * n, tuple("[MASK]" for _ in words))


def test_tang_rates_match_p_mask_and_p_pos_over_10k_words():
    s = side(10_000)
    _, flags = perturb_tang(s, random.Random(1), p_mask=0.1, p_pos=0.1)
    assert flags.count(MASK) / 10_000 == pytest.approx(0.1, abs=0.01)
    assert flags.count(REPLACE) / 10_000 == pytest.approx(0.1, abs=0.01)


def test_tang_masks_and_replaces_only_where_allowed():
    n = 10_000
    s = Side(
        tuple(f"w{i}" for i in range(n)),
        tuple(("x",) if i % 2 else () for i in range(n)),
        tuple(i % 3 == 0 for i in range(n)),
        ("[MASK]",) * n,
    )
    words, flags = perturb_tang(s, random.Random(2), 0.3, 0.3)
    assert all(i % 2 for i, f in enumerate(flags) if f == REPLACE)
    assert all(i % 3 == 0 for i, f in enumerate(flags) if f == MASK)
    assert all(words[i] == "x" for i, f in enumerate(flags) if f == REPLACE)
    assert all(words[i] == s.words[i] for i, f in enumerate(flags) if f == KEEP)


def test_tinybert_mode_replaces_at_p_and_never_masks():
    _, flags = perturb_tinybert(side(10_000), random.Random(3), p_replace=0.4)
    assert flags.count(REPLACE) / 10_000 == pytest.approx(0.4, abs=0.015)
    assert MASK not in flags


def test_ngram_lengths_fall_in_1_to_5_and_windows_stay_inside():
    rng = random.Random(4)
    lengths = set()
    for n_words in (1, 2, 3, 7, 30):
        for _ in range(500):
            start, end = sample_ngram(n_words, rng, 5)
            assert 0 <= start < end <= n_words
            lengths.add(end - start)
    assert lengths == {1, 2, 3, 4, 5}


def test_ngram_rate_matches_p_ng():
    rng = random.Random(5)
    cropped = sum(
        perturb_side(side(10), rng, lambda s, r: (list(s.words), [KEEP] * 10), 0.25, 5).ngram
        for _ in range(10_000)
    )
    assert cropped / 10_000 == pytest.approx(0.25, abs=0.015)


def test_variants_are_distinct_and_never_the_original():
    s = side(12)
    rule = lambda x, r: perturb_tang(x, r, 0.1, 0.1)
    variants = make_variants([s], 20, random.Random(6), rule, 0.25, 5)
    keys = [v.words([s]) for v in variants]
    assert len(variants) == 20
    assert len(set(keys)) == 20
    assert (s.words,) not in keys


def test_short_example_stops_after_max_draws_instead_of_looping():
    s = side(1, with_candidates=False)  # only two forms exist: the word and its mask
    rule = lambda x, r: perturb_tang(x, r, 0.5, 0.0)
    variants = make_variants([s], 20, random.Random(7), rule, 0.0, 5, max_draws=60)
    assert [v.words([s]) for v in variants] == [(("[MASK]",),)]


def test_pairs_split_into_thirds_first_second_both():
    a, b = side(15), side(15)
    rule = lambda x, r: perturb_tang(x, r, 0.2, 0.2)
    variants = make_variants([a, b], 9, random.Random(8), rule, 0.25, 5)
    targets = [tuple(i for i, p in enumerate(v.sides) if p is not None) for v in variants]
    assert targets == [(0,), (1,), (0, 1)] * 3


def test_same_seed_same_variants():
    s = side(20)
    rule = lambda x, r: perturb_tang(x, r, 0.1, 0.1)
    first = make_variants([s], 20, random.Random("0/17"), rule)
    again = make_variants([s], 20, random.Random("0/17"), rule)
    other = make_variants([s], 20, random.Random("0/18"), rule)
    assert first == again
    assert first != other


def test_chinese_mask_is_one_mask_per_character():
    assert mask_form("喜欢", "zh") == "[MASK][MASK]"
    assert mask_pieces("iPhone手机", "zh") == 3
    assert mask_form("wonderful", "en") == "[MASK]"
    assert join_words(["我", "[MASK][MASK]", "它"], "zh") == "我[MASK][MASK]它"
    assert join_words(["I", "[MASK]", "it"], "en") == "I [MASK] it"
