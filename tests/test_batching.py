"""Epoch plans: seeded shuffling, rank slices, and length-grouped batches."""

import random

import pytest

from pipeline.errors import DataError
from pipeline.tasks.data import epoch_batches


def _lengths(n: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(2, 128) for _ in range(n)]


def _padded_tokens(plan: list[list[int]], lengths: list[int]) -> int:
    return sum(len(batch) * max(lengths[row] for row in batch) for batch in plan)


def test_grouped_epoch_keeps_every_row_once_and_drops_only_the_tail():
    lengths = _lengths(1000)
    plan = epoch_batches(1000, 32, 0, 1, seed=7, epoch=0, lengths=lengths)
    rows = [row for batch in plan for row in batch]
    assert len(plan) == 1000 // 32 and all(len(batch) == 32 for batch in plan)
    assert len(set(rows)) == len(rows) == 31 * 32
    ungrouped = epoch_batches(1000, 32, 0, 1, seed=7, epoch=0)
    assert set(rows) == {row for batch in ungrouped for row in batch}  # same rows dropped as without grouping


def test_grouped_batches_pad_far_less_than_random_ones():
    lengths = _lengths(3200)
    grouped = epoch_batches(3200, 32, 0, 1, seed=1, epoch=0, lengths=lengths)
    shuffled = epoch_batches(3200, 32, 0, 1, seed=1, epoch=0)
    real = sum(lengths)
    assert _padded_tokens(grouped, lengths) < 1.1 * real < 1.5 * real < _padded_tokens(shuffled, lengths)


def test_grouped_batches_are_not_ordered_by_length_across_the_epoch():
    lengths = _lengths(3200)
    plan = epoch_batches(3200, 32, 0, 1, seed=3, epoch=0, lengths=lengths)
    longest = [max(lengths[row] for row in batch) for batch in plan]
    assert longest != sorted(longest, reverse=True) and longest != sorted(longest)
    first, second = sum(longest[:50]) / 50, sum(longest[50:]) / 50
    assert abs(first - second) < 20  # long batches are spread over the epoch, not all at its start


def test_grouped_plan_is_seeded_per_epoch_and_split_across_ranks_like_one_big_batch():
    lengths = _lengths(640)
    one = epoch_batches(640, 32, 0, 1, seed=5, epoch=2, lengths=lengths)
    assert one == epoch_batches(640, 32, 0, 1, seed=5, epoch=2, lengths=lengths)
    assert one != epoch_batches(640, 32, 0, 1, seed=5, epoch=3, lengths=lengths)
    rank0 = epoch_batches(640, 16, 0, 2, seed=5, epoch=2, lengths=lengths)
    rank1 = epoch_batches(640, 16, 1, 2, seed=5, epoch=2, lengths=lengths)
    assert [a + b for a, b in zip(rank0, rank1)] == one


def test_too_few_rows_for_one_step_is_a_clear_error():
    with pytest.raises(DataError, match="fewer than one step of batch_size 32 x 2 processes"):
        epoch_batches(40, 32, 0, 2, seed=0, epoch=0, lengths=_lengths(40))
