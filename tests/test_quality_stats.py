"""bench/quality_stats.py: the quality bench's statistics and words, against hand computations."""

from __future__ import annotations

import math

import pytest

from bench.quality_stats import (
    Row,
    TaskResult,
    difference,
    entity_count,
    format_table,
    half_width_95,
    margin_sentence,
    mean_std,
    target_verdicts,
)


def test_mean_and_sample_std_over_seeds():
    mean, std = mean_std([0.70, 0.72, 0.74])
    assert mean == pytest.approx(0.72) and std == pytest.approx(0.02)  # sqrt((0.02² + 0 + 0.02²) / 2)
    assert mean_std([0.5]) == (0.5, None)
    with pytest.raises(ValueError, match="no values"):
        mean_std([])


def test_difference_to_direct_spreads_as_one_run_of_each():
    delta, spread = difference([0.80, 0.82, 0.84], [0.70, 0.71, 0.72])
    assert delta == pytest.approx(0.11) and spread == pytest.approx(math.sqrt(0.02 ** 2 + 0.01 ** 2))
    assert difference([0.8], [0.70, 0.72]) == (pytest.approx(0.09), None)


def test_binomial_half_width_of_the_test_sets():
    # 1,000 reviews at 0.778: ±2.6 points; 1,152 entities at F1 0.424: ±2.9 points (the benchmarks page's figures)
    assert half_width_95(0.778, 1000) == pytest.approx(1.96 * math.sqrt(0.778 * 0.222 / 1000))
    assert round(100 * half_width_95(0.778, 1000), 1) == 2.6
    assert round(100 * half_width_95(0.424, 1152), 1) == 2.9
    with pytest.raises(ValueError):
        half_width_95(0.5, 0)


def test_entities_are_counted_like_conlleval():
    rows = [["B-PER", "I-PER", "O", "B-LOC"],  # 2
            ["I-ORG", "I-ORG", "I-LOC", "O", "I-LOC"],  # a stray I- starts one, a type change another: 3
            ["B-PER", "B-PER", "O"]]  # 2
    assert entity_count(rows) == 7


def test_a_margin_inside_the_noise_is_said_in_words():
    inside = margin_sentence(0.003, 0.026)
    assert inside.startswith("teacher - direct: +0.3 points, inside the ±2.6-point test noise: the teacher is "
                             "not measurably better")
    assert margin_sentence(0.054, 0.029) == "teacher - direct: +5.4 points, outside the ±2.9-point test noise."
    assert "nothing to transfer" in margin_sentence(-0.04, 0.026)


def test_target_verdicts_need_retention_a_one_point_gain_and_a_spread_clear_of_zero():
    met = target_verdicts(0.42, [0.44, 0.45, 0.46], [0.37, 0.37, 0.38])
    assert met[0] == "retention 107.1% of the teacher (target >= 97%): met"
    assert met[1].startswith("- direct +7.7 ± ") and met[1].endswith(": met")
    small = target_verdicts(0.78, [0.780, 0.782, 0.784], [0.775, 0.775, 0.776])
    assert small[1].endswith("not met (+0.7 is below +1.0)")
    noisy = target_verdicts(0.78, [0.76, 0.80, 0.84], [0.775, 0.78, 0.785])
    assert "not met (the spread ±4.0 includes 0)" in noisy[1]
    assert target_verdicts(0.78, [0.70], [0.60, 0.62])[0].endswith("not met")
    assert target_verdicts(0.78, [0.80], [0.60, 0.62])[1].endswith("undecided (one seed: no spread)")
    assert target_verdicts(0.0, [0.0], [0.0])[0] == "retention undefined (the teacher scores 0): not met"


def test_the_table_prints_every_row_with_its_spread_and_the_words_below():
    result = TaskResult("sentiment", "accuracy", {
        "teacher": Row("1. teacher", [0.79], [0.778], epochs="6 (best 4) of 8", parameters=3_140_000,
                       ms_per_example=20.96),
        "direct": Row("2. direct", [0.78, 0.79, 0.80], [0.770, 0.775, 0.780]),
        "dev_selected": Row("4. dev-selected", [0.79, 0.79, 0.80], [0.780, 0.782, 0.784]),
    }, test_size=1000, test_unit="reviews")
    table = format_table([result])
    assert "| sentiment | 1. teacher | 1 | 0.7900 | 0.7780 | +0.3 | 100.0 | 6 (best 4) of 8 | 3.14 | 20.96 |" in table
    assert "| sentiment | 2. direct | 3 | 0.7900 | 0.7750 ± 0.0050 |  | 99.6 |" in table
    assert "| sentiment | 4. dev-selected | 3 | 0.7933 | 0.7820 ± 0.0020 | +0.7 ± 0.5 | 100.5 |" in table
    assert ("sentiment: 95% test noise ±2.6 points (1000 test reviews; 1.96 sqrt(p(1-p)/n) at the teacher's "
            "accuracy 0.7780)") in table
    assert "sentiment: teacher - direct: +0.3 points, inside the ±2.6-point test noise" in table
    assert "sentiment: row 4 (dev-selected) - direct +0.7 ± 0.5 points" in table
