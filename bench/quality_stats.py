"""Statistics and the printed table of bench/quality.py: pure functions, scores in (fractions), text out.

Conventions (all scores are fractions; the text prints points, i.e. x 100):
  - a row over seeds is reported as mean ± std, the sample standard deviation (n - 1), so ± is how far
    one run of that row strays, not the standard error of the mean;
  - a row's difference to direct is mean(row) - mean(direct) with spread sqrt(std_row² + std_direct²),
    how far one run of each may differ; "the spread excludes 0" means difference - spread > 0;
  - the 95% test noise is the binomial half-width 1.96 sqrt(p (1 - p) / n) at the teacher's score:
    n test examples for accuracy, and for entity F1 (an approximation: F1 is treated as a proportion)
    n = the number of gold entities in the test set.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

Z95 = 1.96
RETENTION_TARGET = 0.97  # the dev-selected row 4 keeps >= 97% of the teacher's score
MARGIN_TARGET = 0.01  # ... and beats direct by >= 1 point, its spread excluding 0


@dataclass(frozen=True)
class Row:
    """One table row: its scores on dev and test, one per seed, and what else is known about it."""

    label: str
    dev: list[float]
    test: list[float]
    epochs: str = ""  # teachers and direct (per seed): epochs used, best epoch and cap
    parameters: int | None = None
    ms_per_example: float | None = None  # batch 1, model only
    note: str = ""
    baseline: str = "direct"  # the direct row of the same architecture and init, that this row is compared with


@dataclass(frozen=True)
class TaskResult:
    """Every row of one task, keyed by row name (`teacher`, `direct`, `dev_selected`, ...)."""

    task: str
    metric: str
    rows: dict[str, Row]
    test_size: int  # examples (accuracy) or gold entities (entity F1): the n of the test noise
    test_unit: str  # "reviews", "entities"
    notes: list[str] = field(default_factory=list)
    selected: str = "dev_selected"  # the row the targets judge: the best distilled student, chosen on dev
    selected_name: str = "row 4 (dev-selected)"  # how the verdict lines call it


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """(mean, sample standard deviation); the deviation is None for fewer than two values."""
    if not values:
        raise ValueError("mean_std: no values")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def difference(values: Sequence[float], baseline: Sequence[float]) -> tuple[float, float | None]:
    """(mean(values) - mean(baseline), sqrt(std_values² + std_baseline²)); None when either std is."""
    (mean, std), (base_mean, base_std) = mean_std(values), mean_std(baseline)
    spread = None if std is None or base_std is None else math.hypot(std, base_std)
    return mean - base_mean, spread


def half_width_95(score: float, n: int) -> float:
    """Binomial 95% half-width of a proportion `score` measured on `n` items."""
    if n < 1 or not 0.0 <= score <= 1.0:
        raise ValueError(f"half_width_95: need 0 <= score <= 1 and n >= 1, got {score}, {n}")
    return Z95 * math.sqrt(score * (1.0 - score) / n)


def entity_count(tag_rows: Iterable[Sequence[str]]) -> int:
    """Gold entities in BIO tag sequences, counted as conlleval does: a B- tag, or an I- tag that does
    not continue an entity of its own type, starts one."""
    count = 0
    for tags in tag_rows:
        previous = "O"
        for tag in tags:
            if tag.startswith("B-") or (tag.startswith("I-") and previous[2:] != tag[2:]):
                count += 1
            previous = tag if tag != "O" else "O"
    return count


def points(value: float | None, signed: bool = True) -> str:
    """A fraction as points with one decimal (`+5.4`); an en dash when unknown."""
    if value is None:
        return "–"
    return f"{100 * value:+.1f}" if signed else f"{100 * value:.1f}"


def margin_sentence(margin: float, half_width: float) -> str:
    """The teacher's margin over the direct student, in words, against the test noise."""
    where = "inside" if abs(margin) <= half_width else "outside"
    sentence = f"teacher - direct: {points(margin)} points, {where} the ±{points(half_width, False)}-point test noise"
    if where == "inside":
        return (sentence + ": the teacher is not measurably better than a directly trained student, so "
                "distillation has little to transfer here and the student rows cannot be told apart from direct.")
    if margin < 0:
        return sentence + ": the direct student beats the teacher; there is nothing to transfer."
    return sentence + "."


def target_verdicts(teacher: float, selected: Sequence[float], direct: Sequence[float]) -> list[str]:
    """Whether the dev-selected row 4 meets each target, in words (retention; margin over direct)."""
    if teacher > 0:
        retention = statistics.fmean(selected) / teacher
        lines = [f"retention {100 * retention:.1f}% of the teacher (target >= {100 * RETENTION_TARGET:.0f}%): "
                 + ("met" if retention >= RETENTION_TARGET else "not met")]
    else:
        lines = ["retention undefined (the teacher scores 0): not met"]
    delta, spread = difference(selected, direct)
    text = f"- direct {points(delta)} ± {points(spread, False)} points (target >= {points(MARGIN_TARGET)}, spread excluding 0): "
    if delta < MARGIN_TARGET:
        text += f"not met ({points(delta)} is below {points(MARGIN_TARGET)})"
    elif spread is None:
        text += "undecided (one seed: no spread)"
    elif delta - spread <= 0:
        text += f"not met (the spread ±{points(spread, False)} includes 0)"
    else:
        text += "met"
    return lines + [text]


def format_table(results: Sequence[TaskResult]) -> str:
    """The Markdown table of every task's rows, then per task the noise, the margin and the verdicts."""
    header = ["task", "row", "seeds", "dev", "test (mean ± std)", "- direct (± spread)", "retention %", "epochs",
              "params (M)", "ms/example @1"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for result in results:
        teacher = mean_std(result.rows["teacher"].test)[0]
        for name, row in result.rows.items():
            test, std = mean_std(row.test)
            direct = result.rows[row.baseline].test if row.baseline in result.rows else None
            delta, spread = difference(row.test, direct) if direct and name != row.baseline else (None, None)
            cells = [result.task, row.label, str(len(row.test)), f"{mean_std(row.dev)[0]:.4f}",
                     f"{test:.4f}" + (f" ± {std:.4f}" if std is not None else ""),
                     _signed_with_spread(delta, spread),
                     f"{100 * test / teacher:.1f}" if teacher else "–", row.epochs,
                     f"{row.parameters / 1e6:.2f}" if row.parameters else "",
                     f"{row.ms_per_example:.2f}" if row.ms_per_example else ""]
            lines.append("| " + " | ".join(cells) + " |")
    for result in results:
        lines += [""] + summary_lines(result)
    return "\n".join(lines)


def _signed_with_spread(delta: float | None, spread: float | None) -> str:
    if delta is None:
        return ""
    return points(delta) + ("" if spread is None else f" ± {points(spread, False)}")


def summary_lines(result: TaskResult) -> list[str]:
    """The noise, the teacher's margin and the target verdicts of one task."""
    rows = result.rows
    teacher = mean_std(rows["teacher"].test)[0]
    noise = half_width_95(teacher, result.test_size)
    lines = [(f"{result.task}: 95% test noise ±{points(noise, False)} points ({result.test_size} test "
              f"{result.test_unit}; 1.96 sqrt(p(1-p)/n) at the teacher's {result.metric} {teacher:.4f})")]
    for name in [name for name in rows if name.startswith("direct")]:
        margin = margin_sentence(teacher - mean_std(rows[name].test)[0], noise)
        lines.append(f"{result.task}: " + (margin if name == "direct" else f"{rows[name].label}: {margin}"))
    selected = rows.get(result.selected)
    if selected is not None and selected.baseline in rows:
        lines += [f"{result.task}: {result.selected_name} {line}"
                  for line in target_verdicts(teacher, selected.test, rows[selected.baseline].test)]
    return lines + [f"{result.task}: {note}" for note in result.notes]
