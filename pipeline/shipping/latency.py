"""Latency of several models timed in turns, so that a busy machine slows all of them alike.

Timing one model after another lets a burst of load land on one of them: on a busy machine a student
once came out 0.48x "faster" than its teacher, and 2.1x on a quiet one. `time_interleaved` runs every
model in each of several rounds (A, B, C, A, B, C, ...; the order rotated each round), a slice of time
each, and reports the median pass with its spread, so the figures say how far to trust them.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping


def time_interleaved(runners: Mapping[str, Callable[[], object]], rounds: int = 5, seconds_per_round: float = 0.2,
                     warmup: int = 2) -> dict[str, dict]:
    """{name: {"ms", "spread_percent", "repeats"}}: the median pass time of each runner, in milliseconds.

    After `warmup` untimed calls of each, every round times each runner in turn for `seconds_per_round`
    (at least one pass). `spread_percent` is the interquartile range of the passes over their median, x 100.
    """
    if not runners:
        raise ValueError("time_interleaved: no runners given")
    if rounds < 1 or seconds_per_round < 0 or warmup < 0:
        raise ValueError(f"time_interleaved: need rounds >= 1, seconds_per_round >= 0, warmup >= 0; got "
                         f"{rounds}, {seconds_per_round}, {warmup}")
    names = list(runners)
    for name in names:
        for _ in range(warmup):
            runners[name]()
    timings: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            while True:
                tick = time.perf_counter()
                runners[name]()
                timings[name].append(time.perf_counter() - tick)
                if time.perf_counter() - started >= seconds_per_round:
                    break
    return {name: _summary(values) for name, values in timings.items()}


def _summary(seconds: list[float]) -> dict:
    median = statistics.median(seconds)
    if len(seconds) >= 2:
        low, _, high = statistics.quantiles(seconds, n=4, method="inclusive")
    else:
        low = high = median
    return {"ms": median * 1000.0, "spread_percent": (high - low) / median * 100.0 if median > 0 else 0.0,
            "repeats": len(seconds)}
