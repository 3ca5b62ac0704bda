"""`stats.json`: what a run produced, as additive counts (so shards merge by summing) plus derived rates.

- `variants_per_example`: mean, and a histogram {number of variants: examples};
- `ops`: words masked / replaced inside kept n-grams, variants cropped to an n-gram, and the words of the
  augmented texts (the denominator of the rates);
- `rates`: mask and replacement rate per augmented word, n-gram rate per variant;
- `coverage`: of the replaceable word occurrences, the share that had at least one candidate, per
  word-level source (`dictionary`, `vectors`) and from all sources together (`any`, MLM included).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import numpy as np


def count_rows(dataset, n_examples: int) -> dict:
    """Additive counts over a generated (not yet trimmed) transfer set, vectorised over Arrow columns."""
    table = dataset.select_columns(
        [
            "source_index",
            "variant",
            "n_masked",
            "n_replaced",
            "ngram",
            "_n_words",
            "_n_eligible",
            "_n_covered",
        ]
    ).with_format("numpy")[:]
    variant = table["variant"] > 0
    counts = {
        "examples": n_examples,
        "rows": len(table["variant"]),
        "variants": int(variant.sum()),
        "masked_words": int(table["n_masked"][variant].sum()),
        "replaced_words": int(table["n_replaced"][variant].sum()),
        "ngram_variants": int(table["ngram"][variant].sum()),
        "augmented_words": int(table["_n_words"][variant].sum()),
        "eligible_words": int(table["_n_eligible"].sum()),
        "covered_any": int(table["_n_covered"].sum()),
    }
    sources = table["source_index"][variant]
    per_example = np.unique(sources, return_counts=True)[1] if len(sources) else np.zeros(0, dtype=np.int64)
    histogram = Counter(per_example.tolist())
    histogram[0] += n_examples - len(per_example)
    counts["histogram"] = {str(k): v for k, v in sorted(histogram.items()) if v}
    return counts


def merge_counts(parts: Iterable[dict]) -> dict:
    """Sum the counts of several shards (histograms and source coverage included)."""
    merged: dict = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, dict):
                bucket = merged.setdefault(key, {})
                for k, v in value.items():
                    bucket[k] = bucket.get(k, 0) + v
            else:
                merged[key] = merged.get(key, 0) + value
    merged["histogram"] = dict(sorted(merged.get("histogram", {}).items(), key=lambda kv: int(kv[0])))
    return merged


def summarise(counts: dict, facts: dict) -> dict:
    """The stats.json document: run facts, the raw counts, and the rates derived from them."""

    def ratio(a: float, b: float) -> float:
        return round(a / b, 6) if b else 0.0

    source_cov = {
        name: ratio(n, counts["eligible_words_table"]) for name, n in counts.get("covered_by", {}).items()
    }
    return {
        **facts,
        "variants_per_example": ratio(counts["variants"], counts["examples"]),
        "rates": {
            "mask": ratio(counts["masked_words"], counts["augmented_words"]),
            "replace": ratio(counts["replaced_words"], counts["augmented_words"]),
            "ngram": ratio(counts["ngram_variants"], counts["variants"]),
        },
        "coverage": {**source_cov, "any": ratio(counts["covered_any"], counts["eligible_words"])},
        "counts": counts,
    }
