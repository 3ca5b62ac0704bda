"""Extractive question answering (SQuAD, CMRC 2018, DRCD): windows, span decoding and the metrics.

Features: each (question, context) pair becomes windows of `max_seq_len` tokens (question first, the
context cut with `doc_stride` tokens of overlap, as Hugging Face's run_qa does), with the fast
tokenizer's character offsets. A window's gold span is the answer's token start and end when the
answer lies wholly inside it, else [CLS] (position 0) for "no answer in this window"; questions
without an answer (SQuAD v2) point at [CLS] in every window.

Decoding: over all windows of an example, the best span (start logit + end logit, end >= start,
at most `max_answer_len` tokens, inside the context) among the `n_best` top starts and ends; with a
`null_threshold` (v2), "" when the [CLS] score beats the best span's by more than the threshold.

Metrics, as the official scripts define them, the best over an example's gold answers:
  English (SQuAD): lower-cased, punctuation and articles removed, EM on the string, F1 on tokens;
  Chinese (CMRC 2018): punctuation removed, EM on the string, F1 on the longest common substring of
  the "mixed segmentation" (each Chinese character a unit, runs of other characters split into words).
An example without a gold answer scores 1 only for an empty prediction.

The task type (`task.type: qa`): `tokenize_qa` turns a split into windows (what every stage trains and
predicts on) and `score_qa` scores per-window logits as answers per example.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

import numpy as np

from pipeline.data.dataset_files import map_cache_file
from pipeline.errors import DataError, ModelError

# CMRC 2018's official evaluation script: the punctuation it removes (plus ASCII punctuation).
CMRC_PUNCTUATION = set("-:_*^/\\~`+=，。：？！“”；’《》·、「」（）－～『』") | {"……"} | set(string.punctuation)
_CJK = re.compile(r"[\u4e00-\u9fa5]")


# ---------------------------------------------------------------- metrics

def squad_normalize(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _squad_scores(prediction: str, gold: str) -> tuple[float, float]:
    pred, true = squad_normalize(prediction).split(), squad_normalize(gold).split()
    exact = float(pred == true)
    if not pred or not true:
        return exact, exact
    common = sum((Counter(pred) & Counter(true)).values())
    if common == 0:
        return exact, 0.0
    precision, recall = common / len(pred), common / len(true)
    return exact, 2 * precision * recall / (precision + recall)


def mixed_segmentation(text: str, remove_punctuation: bool = True) -> list[str]:
    """CMRC 2018's units: each Chinese character (and kept punctuation mark) alone, other runs as words."""
    units, run = [], ""
    for ch in text.lower().strip():
        if remove_punctuation and ch in CMRC_PUNCTUATION:
            continue
        if _CJK.match(ch) or ch in CMRC_PUNCTUATION:
            units.extend(re.findall(r"\w+|[^\w\s]", run))
            run = ""
            units.append(ch)
        else:
            run += ch
    units.extend(re.findall(r"\w+|[^\w\s]", run))
    return units


def _longest_common_substring(a: Sequence[str], b: Sequence[str]) -> int:
    best, previous = 0, [0] * (len(b) + 1)
    for x in a:
        current = [0] * (len(b) + 1)
        for j, y in enumerate(b):
            if x == y:
                current[j + 1] = previous[j] + 1
                best = max(best, current[j + 1])
        previous = current
    return best


def _cmrc_scores(prediction: str, gold: str) -> tuple[float, float]:
    strip = lambda s: "".join(ch for ch in s.lower().strip() if ch not in CMRC_PUNCTUATION)
    exact = float(strip(prediction) == strip(gold))
    pred, true = mixed_segmentation(prediction), mixed_segmentation(gold)
    if not pred or not true:
        return exact, exact
    common = _longest_common_substring(true, pred)
    if common == 0:
        return exact, 0.0
    precision, recall = common / len(pred), common / len(true)
    return exact, 2 * precision * recall / (precision + recall)


def qa_metrics(predictions: Sequence[str], gold_answers: Sequence[Sequence[str]], language: str) -> dict:
    """{"exact_match", "f1"}: means over examples (0..1) of the best score over each example's golds."""
    if len(predictions) != len(gold_answers):
        raise ValueError(f"{len(predictions)} predictions for {len(gold_answers)} examples")
    if not predictions:
        raise ValueError("no predictions to score")
    scores = _cmrc_scores if language == "zh" else _squad_scores
    exact, f1 = [], []
    for prediction, golds in zip(predictions, gold_answers):
        pairs = [scores(prediction, gold) for gold in (list(golds) or [""])]
        exact.append(max(p[0] for p in pairs))
        f1.append(max(p[1] for p in pairs))
    return {"exact_match": float(np.mean(exact)), "f1": float(np.mean(f1))}


def guess_language(contexts: Sequence[str]) -> str:
    """"zh" when Chinese characters make up a fifth of the sampled text, else "en"."""
    sample = "".join(contexts[:50])
    return "zh" if sample and len(_CJK.findall(sample)) >= 0.2 * len(sample) else "en"


# ---------------------------------------------------------------- features

def check_answers(contexts: Sequence[str], answers: Sequence[dict], split: str, first_row: int = 0) -> None:
    """Every answer's text must be the context at its answer_start (one-line DataError otherwise)."""
    for offset, (context, answer) in enumerate(zip(contexts, answers)):
        row = first_row + offset
        if not isinstance(answer, dict) or "text" not in answer or "answer_start" not in answer:
            raise DataError(f"task.{split}: row {row}: answers needs 'text' and 'answer_start' lists, got {answer!r}")
        if len(answer["text"]) != len(answer["answer_start"]):
            raise DataError(f"task.{split}: row {row}: {len(answer['text'])} answer texts but "
                            f"{len(answer['answer_start'])} answer_start values")
        for text, start in zip(answer["text"], answer["answer_start"]):
            if context[start : start + len(text)] != text:
                raise DataError(f"task.{split}: row {row}: answer_start {start} does not match the answer "
                                f"{text!r} (the context there reads {context[start : start + len(text)]!r})")


def qa_windows(tokenizer, questions: Sequence[str], contexts: Sequence[str], answers: Sequence[dict] | None,
               max_seq_len: int, doc_stride: int) -> dict[str, list]:
    """Windows of question + context: input_ids, token_type_ids, window_example (the example's index in
    the batch), offsets ((start, end) characters of context tokens, (-1, -1) elsewhere), position_mask
    (1 on [CLS] and context tokens: the positions a span may use) and, with answers, start/end positions."""
    try:
        encoded = tokenizer(list(questions), list(contexts), truncation="only_second", max_length=max_seq_len,
                            stride=doc_stride, return_overflowing_tokens=True, return_offsets_mapping=True)
    except Exception as err:  # noqa: BLE001 - tokenizers raise plain Exceptions for an impossible stride
        raise DataError(f"task.doc_stride: {doc_stride} does not fit windows of {max_seq_len} tokens with these "
                        f"questions ({str(err).splitlines()[0]})") from None
    out: dict[str, list] = {"input_ids": [], "token_type_ids": [], "window_example": [], "offsets": [],
                            "position_mask": []}
    if answers is not None:
        out.update(start_positions=[], end_positions=[])
    for window, example in enumerate(encoded["overflow_to_sample_mapping"]):
        sequence_ids = encoded.sequence_ids(window)
        offsets = [tuple(o) if s == 1 else (-1, -1) for o, s in zip(encoded["offset_mapping"][window], sequence_ids)]
        out["input_ids"].append(encoded["input_ids"][window])
        types = encoded.get("token_type_ids")
        out["token_type_ids"].append(types[window] if types else [0] * len(offsets))
        out["window_example"].append(example)
        out["offsets"].append(offsets)
        out["position_mask"].append([int(k == 0 or s == 1) for k, s in enumerate(sequence_ids)])
        if answers is not None:
            start, end = _gold_span(answers[example], offsets)
            out["start_positions"].append(start)
            out["end_positions"].append(end)
    return out


def _gold_span(answer: dict, offsets: list[tuple[int, int]]) -> tuple[int, int]:
    """Token (start, end) of the first gold answer inside this window, or (0, 0): [CLS], none here."""
    for text, char_start in zip(answer["text"], answer["answer_start"]):
        char_end = char_start + len(text)
        starts = [k for k, (a, b) in enumerate(offsets) if a != -1 and a <= char_start < b]
        ends = [k for k, (a, b) in enumerate(offsets) if a != -1 and a < char_end <= b]
        if starts and ends and starts[0] <= ends[-1]:
            return starts[0], ends[-1]
    return 0, 0


# ---------------------------------------------------------------- decoding

def best_answers(start_logits: Sequence[np.ndarray], end_logits: Sequence[np.ndarray], windows,
                 contexts: Sequence[str], n_best: int = 20, max_answer_len: int = 30,
                 null_threshold: float | None = None) -> list[str]:
    """The predicted answer text per example from per-window logits (`windows`: rows with
    `example_index` and `offsets`, in the logits' order)."""
    best: dict[int, tuple[float, str]] = {}
    null: dict[int, float] = {}
    for starts, ends, window in zip(start_logits, end_logits, windows):
        example, offsets = window["example_index"], window["offsets"]
        null[example] = min(null.get(example, np.inf), float(starts[0] + ends[0]))
        top_starts = np.argsort(starts)[::-1][:n_best]
        top_ends = np.argsort(ends)[::-1][:n_best]
        for s in top_starts:
            if s >= len(offsets) or offsets[s][0] == -1:
                continue
            for e in top_ends:
                if e >= len(offsets) or offsets[e][0] == -1 or e < s or e - s + 1 > max_answer_len:
                    continue
                score = float(starts[s] + ends[e])
                if example not in best or score > best[example][0]:
                    best[example] = (score, contexts[example][offsets[s][0] : offsets[e][1]])
    answers = []
    for example in range(len(contexts)):
        score, text = best.get(example, (-np.inf, ""))
        if null_threshold is not None and null.get(example, -np.inf) > score + null_threshold:
            text = ""
        answers.append(text)
    return answers


# ---------------------------------------------------------------- the task type

def tokenize_qa(dataset, tokenizer, cfg, split: str, need_labels: bool = True):
    """The windows of a split (`cfg`: a qa TaskConfig) as a dataset: `qa_windows`' columns plus
    `example_index` (the example's row), `context` and, with answers, `answer_texts` (for scoring)."""
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError(f"extractive QA needs a fast tokenizer (character offsets); {type(tokenizer).__name__} "
                         "is not one (save the model with a tokenizer.json)")
    has_answers = need_labels or cfg.answers in dataset.column_names

    def encode(batch, indices):
        contexts, answers = batch[cfg.context], batch[cfg.answers] if has_answers else None
        for offset, (question, context) in enumerate(zip(batch[cfg.question], contexts)):
            if not isinstance(question, str) or not isinstance(context, str) or not context:
                raise DataError(f"task.{split}: row {indices[offset]}: question and context must be non-empty "
                                f"text, got {question!r} and {context!r}")
        if answers is not None:
            check_answers(contexts, answers, split, indices[0])
        windows = qa_windows(tokenizer, batch[cfg.question], contexts, answers, cfg.max_seq_len, cfg.doc_stride)
        example = windows.pop("window_example")
        windows["example_index"] = [indices[k] for k in example]
        windows["context"] = [contexts[k] for k in example]
        if answers is not None:
            windows["answer_texts"] = [list(answers[k]["text"]) for k in example]
        return windows

    return dataset.map(encode, batched=True, with_indices=True, remove_columns=dataset.column_names,
                       cache_file_name=map_cache_file(dataset), desc=f"windows of {split}")


def score_qa(cfg, logits: Sequence[np.ndarray], windows) -> dict:
    """EM and F1 of the best spans (`best_answers`) from per-window (L, 2) logits against the gold answers."""
    rows = windows.select_columns(["example_index", "offsets", "context", "answer_texts"]).to_list()
    order = {example: k for k, example in enumerate(sorted({row["example_index"] for row in rows}))}
    contexts, golds = [""] * len(order), [[] for _ in order]
    for row in rows:
        row["example_index"] = order[row["example_index"]]
        contexts[row["example_index"]], golds[row["example_index"]] = row["context"], row["answer_texts"]
    predictions = best_answers([x[:, 0] for x in logits], [x[:, 1] for x in logits], rows, contexts, cfg.n_best,
                               cfg.max_answer_len, cfg.null_threshold)
    language = guess_language(contexts) if cfg.language == "auto" else cfg.language
    return qa_metrics(predictions, golds, language)
