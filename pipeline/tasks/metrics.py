"""Task metrics: pure functions, Python or numpy values in, floats out.

Every function checks its inputs first and raises ValueError with a message naming the problem:
empty inputs, predictions and labels of different lengths, labels outside the class range,
malformed BIO tags.

Task types and the metric used to pick the best checkpoint (`main_metric`):
    classification  accuracy, macro_f1, and mcc when there are exactly 2 labels   -> "accuracy"
    regression      pearson, spearman, corr = (pearson + spearman) / 2 (GLUE STS-B) -> "corr"
    token           entity_precision, entity_recall, entity_f1, token_accuracy    -> "entity_f1"
    qa              exact_match, f1 (SQuAD / CMRC 2018; computed by pipeline.tasks.qa)   -> "f1"
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.data.bio import bio_entities

TASK_TYPES = ("classification", "regression", "token", "qa")  # qa is scored by pipeline.tasks.qa.qa_metrics
MAIN_METRICS = {"classification": "accuracy", "regression": "corr", "token": "entity_f1", "qa": "f1"}
IGNORE_INDEX = -100  # label id of positions that carry no label (special tokens, later sub-words)


def accuracy(predictions: Sequence, labels: Sequence) -> float:
    """Fraction of positions where prediction == label."""
    predictions, labels = _paired(predictions, labels)
    return float(np.mean(predictions == labels))


def macro_f1(predictions: Sequence[int], labels: Sequence[int], num_labels: int) -> float:
    """Unweighted mean of per-class F1 over the classes that occur in `labels` or `predictions`.

    A class that is neither true nor predicted anywhere is left out of the mean, as scikit-learn's
    `f1_score(average="macro")` does without an explicit label list; a class that occurs but is never
    predicted correctly scores F1 = 0. Class ids must lie in [0, num_labels).
    """
    predictions, labels = _paired_classes(predictions, labels, num_labels)
    scores = []
    for k in np.union1d(predictions, labels):
        true_positive = np.sum((predictions == k) & (labels == k))
        counts = int(true_positive), int(np.sum(predictions == k)), int(np.sum(labels == k))
        scores.append(_precision_recall_f1(*counts)["f1"])
    return float(np.mean(scores))


def matthews_corrcoef(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """Matthews correlation coefficient, multi-class form (Gorodkin 2004; equal to sklearn's).

    With confusion matrix C, t_k = true count of class k, p_k = predicted count, c = trace(C), s = n:
        MCC = (c * s - sum_k p_k t_k) / sqrt((s^2 - sum_k p_k^2) * (s^2 - sum_k t_k^2))
    For two classes this is the familiar (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)).
    Returns 0.0 when the denominator is 0 (all predictions, or all labels, one class).
    """
    predictions, labels = _paired(predictions, labels)
    classes, codes = np.unique(np.concatenate([predictions, labels]), return_inverse=True)
    pred_codes, label_codes = codes[: len(predictions)], codes[len(predictions):]
    pred_counts = np.bincount(pred_codes, minlength=len(classes)).astype(np.float64)
    true_counts = np.bincount(label_codes, minlength=len(classes)).astype(np.float64)
    correct = float(np.sum(pred_codes == label_codes))
    n = float(len(predictions))
    numerator = correct * n - pred_counts @ true_counts
    denominator = np.sqrt((n * n - pred_counts @ pred_counts) * (n * n - true_counts @ true_counts))
    return float(numerator / denominator) if denominator > 0 else 0.0


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation. Returns 0.0 when either vector is constant (the correlation is undefined;
    0 means "no linear relation" and keeps checkpoint selection working on degenerate predictions)."""
    x, y = _paired(x, y, dtype=np.float64)
    dx, dy = x - x.mean(), y - y.mean()
    denominator = np.sqrt((dx @ dx) * (dy @ dy))
    return float(dx @ dy / denominator) if denominator > 0 else 0.0


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation: Pearson of the average ranks (ties share the mean of their ranks)."""
    x, y = _paired(x, y, dtype=np.float64)
    return pearson(average_ranks(x), average_ranks(y))


def average_ranks(values: Sequence[float]) -> np.ndarray:
    """1-based ranks; tied values all get the mean of the ranks they span ([10, 20, 20] -> [1, 2.5, 2.5])."""
    values = np.asarray(values)
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)  # rank of the last member of each group of equal values
    starts = ends - counts + 1
    return ((starts + ends) / 2.0)[inverse.reshape(-1)]


def entity_f1(true_seqs: Sequence[Sequence[str]], pred_seqs: Sequence[Sequence[str]]) -> dict:
    """Exact-match entity precision, recall and F1 (micro over all entities), plus the same per type.

    An entity counts as correct when type, start and end all match in the same sentence. Returns
    {"precision", "recall", "f1", "true_entities", "pred_entities", "correct",
     "per_type": {type: {"precision", "recall", "f1", "support"}}} with support = true entity count.
    Precision (recall) is 0 when nothing is predicted (true); F1 is 0 when both are 0.
    """
    if len(true_seqs) == 0:
        raise ValueError("entity_f1: no sentences given")
    if len(true_seqs) != len(pred_seqs):
        raise ValueError(f"entity_f1: {len(true_seqs)} true sentences but {len(pred_seqs)} predicted")
    true_entities, pred_entities = set(), set()
    for sentence, (true_tags, pred_tags) in enumerate(zip(true_seqs, pred_seqs)):
        if len(true_tags) != len(pred_tags):
            raise ValueError(f"entity_f1: sentence {sentence} has {len(true_tags)} true tags "
                             f"but {len(pred_tags)} predicted")
        true_entities |= {(sentence, *entity) for entity in bio_entities(true_tags)}
        pred_entities |= {(sentence, *entity) for entity in bio_entities(pred_tags)}
    correct = true_entities & pred_entities
    per_type = {}
    for kind in sorted({entity[1] for entity in true_entities | pred_entities}):
        n_true = sum(entity[1] == kind for entity in true_entities)
        n_pred = sum(entity[1] == kind for entity in pred_entities)
        n_correct = sum(entity[1] == kind for entity in correct)
        per_type[kind] = {**_precision_recall_f1(n_correct, n_pred, n_true), "support": n_true}
    return {**_precision_recall_f1(len(correct), len(pred_entities), len(true_entities)),
            "true_entities": len(true_entities), "pred_entities": len(pred_entities),
            "correct": len(correct), "per_type": per_type}


def main_metric(task_type: str) -> str:
    """The `task_metrics` key that picks the best checkpoint (higher is better for all three)."""
    _check_task_type(task_type)
    return MAIN_METRICS[task_type]


def metric_names(task_type: str, num_labels: int | None = None) -> tuple[str, ...]:
    """The keys `task_metrics` returns for a task type (classification: mcc only with 2 labels)."""
    _check_task_type(task_type)
    if task_type == "classification":
        return ("accuracy", "macro_f1", "mcc") if num_labels == 2 else ("accuracy", "macro_f1")
    if task_type == "regression":
        return ("pearson", "spearman", "corr")
    if task_type == "qa":
        return ("exact_match", "f1")
    return ("entity_precision", "entity_recall", "entity_f1", "token_accuracy")


def task_metrics(task_type: str, predictions: Sequence, labels: Sequence, *, num_labels: int | None = None,
                 label_names: Sequence[str] | None = None) -> dict[str, float]:
    """All metrics of one task type, as a flat dict of floats (keys in the module docstring).

    classification: class ids (argmax already taken); `num_labels` is required, and mcc is added
        when it is 2.
    regression: real-valued scores.
    token: one sequence per sentence, either BIO tag strings or label ids; ids need `label_names`
        (id -> tag). Positions whose label is -100 (special tokens, non-first sub-words) are dropped
        from both sequences before scoring. token_accuracy is over the remaining positions.
    """
    _check_task_type(task_type)
    if task_type == "qa":
        raise ValueError("task_metrics: extractive QA is scored on answer strings by pipeline.tasks.qa.qa_metrics")
    if task_type == "classification":
        if num_labels is None:
            raise ValueError("task_metrics: classification needs num_labels")
        metrics = {"accuracy": accuracy(predictions, labels),
                   "macro_f1": macro_f1(predictions, labels, num_labels)}
        if num_labels == 2:
            metrics["mcc"] = matthews_corrcoef(predictions, labels)
        return metrics
    if task_type == "regression":
        metrics = {"pearson": pearson(predictions, labels), "spearman": spearman(predictions, labels)}
        return {**metrics, "corr": (metrics["pearson"] + metrics["spearman"]) / 2}
    true_seqs, pred_seqs = _tag_sequences(predictions, labels, label_names)
    entities = entity_f1(true_seqs, pred_seqs)
    flat_true = [tag for tags in true_seqs for tag in tags]
    flat_pred = [tag for tags in pred_seqs for tag in tags]
    return {"entity_precision": entities["precision"], "entity_recall": entities["recall"],
            "entity_f1": entities["f1"], "token_accuracy": accuracy(flat_pred, flat_true)}


def _tag_sequences(predictions, labels, label_names) -> tuple[list[list[str]], list[list[str]]]:
    """(true, predicted) tag strings per sentence, with ignored (-100) positions removed."""
    if len(labels) != len(predictions):
        raise ValueError(f"task_metrics: {len(predictions)} predicted sentences but {len(labels)} labelled")
    true_seqs, pred_seqs = [], []
    for sentence, (pred_row, label_row) in enumerate(zip(predictions, labels)):
        pred_row, label_row = list(pred_row), list(label_row)
        if len(pred_row) != len(label_row):
            raise ValueError(f"task_metrics: sentence {sentence} has {len(pred_row)} predictions "
                             f"but {len(label_row)} labels")
        kept = [(p, t) for p, t in zip(pred_row, label_row) if isinstance(t, str) or t != IGNORE_INDEX]
        pred_seqs.append([_tag_name(p, label_names) for p, _ in kept])
        true_seqs.append([_tag_name(t, label_names) for _, t in kept])
    return true_seqs, pred_seqs


def _tag_name(tag, label_names: Sequence[str] | None) -> str:
    if isinstance(tag, str):
        return tag
    if label_names is None:
        raise ValueError("task_metrics: token labels are ids, so label_names (id -> tag) is needed")
    index = int(tag)
    if not 0 <= index < len(label_names):
        raise ValueError(f"task_metrics: label id {index} is outside label_names (0..{len(label_names) - 1})")
    return label_names[index]


def _precision_recall_f1(correct: int, predicted: int, true: int) -> dict[str, float]:
    precision = correct / predicted if predicted else 0.0
    recall = correct / true if true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1)}


def _paired(predictions, labels, dtype=None) -> tuple[np.ndarray, np.ndarray]:
    predictions, labels = np.asarray(predictions, dtype=dtype), np.asarray(labels, dtype=dtype)
    if predictions.ndim != 1 or labels.ndim != 1:
        raise ValueError(f"expected two flat sequences, got shapes {predictions.shape} and {labels.shape}")
    if len(predictions) == 0 or len(labels) == 0:
        raise ValueError("cannot score empty inputs")
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions but {len(labels)} labels")
    return predictions, labels


def _paired_classes(predictions, labels, num_labels: int) -> tuple[np.ndarray, np.ndarray]:
    predictions, labels = _paired(predictions, labels)
    for name, values in (("predictions", predictions), ("labels", labels)):
        if not np.issubdtype(values.dtype, np.integer):
            raise ValueError(f"{name} must be class ids (integers), got dtype {values.dtype}")
        if values.min() < 0 or values.max() >= num_labels:
            raise ValueError(f"{name} hold class ids outside [0, {num_labels}): "
                             f"min {values.min()}, max {values.max()}")
    return predictions, labels


def _check_task_type(task_type: str) -> None:
    if task_type not in TASK_TYPES:
        raise ValueError(f"unknown task type {task_type!r}; expected one of {', '.join(TASK_TYPES)}")
