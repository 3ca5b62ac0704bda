"""The teacher-logits cache shared by concurrent runs (a learning-rate sweep): one run builds an entry,
the others wait and read it; nothing half-built is ever visible."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, BertForTokenClassification

ROWS = [[2, 5 + i % 7, 6 + i % 5, 3][: 3 + i % 2] for i in range(24)]


def small_dataset():
    import datasets

    return datasets.Dataset.from_dict({"input_ids": ROWS, "token_type_ids": [[0] * len(r) for r in ROWS],
                                       "example_index": list(range(len(ROWS)))})


def make_teacher(directory: Path, token: bool = False) -> Path:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=20, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=16, num_labels=3)
    (BertForTokenClassification if token else BertForSequenceClassification)(config).save_pretrained(directory)
    return directory


def build_entry(teacher_dir: str, cache_dir: str, start, messages) -> None:
    """One run's cache lookup, started together with the other run's."""
    from transformers import AutoModelForSequenceClassification

    from pipeline.training.logits_cache import with_teacher_logits
    from pipeline.training.runtime import process_state

    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_dir).eval()
    dataset = small_dataset()
    start.wait()
    logged = []
    with_teacher_logits(process_state(), dataset, teacher, "t", cache_dir, 4, 0, log=logged.append)
    messages.put(logged)


def test_two_processes_building_the_same_entry_at_once_compute_it_once(tmp_path):
    teacher = make_teacher(tmp_path / "teacher")
    cache = tmp_path / "cache"
    context = multiprocessing.get_context("spawn")
    start, messages = context.Barrier(2), context.Queue()
    runs = [context.Process(target=build_entry, args=(str(teacher), str(cache), start, messages)) for _ in range(2)]
    for run in runs:
        run.start()
    logs = [messages.get(timeout=300) for _ in runs]
    for run in runs:
        run.join(timeout=60)
        assert run.exitcode == 0
    computed = [log for log in logs if any("computing" in line for line in log)]
    assert len(computed) == 1, logs
    assert any("built by another run" in line for log in logs for line in log), logs
    leftovers = [p.name for p in cache.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock")]
    assert leftovers == []  # no temp or parts folders

    import datasets

    from pipeline.tasks.data import predict_logits

    entry = next(p for p in cache.iterdir() if len(p.name) == 24)
    cached = np.asarray(datasets.load_from_disk(str(entry / "logits"))["teacher_logits"])
    model = BertForSequenceClassification.from_pretrained(teacher).eval()
    expected = np.stack(predict_logits(model, small_dataset(), 4, 0, torch.device("cpu")))
    np.testing.assert_allclose(cached, expected, rtol=1e-6)


@pytest.mark.parametrize("token", [False, True], ids=["per_row", "per_token"])
def test_cached_logits_are_stored_as_arrow_lists_from_the_arrays(tmp_path, token):
    import datasets

    from pipeline.tasks.data import predict_logits
    from pipeline.training.logits_cache import with_teacher_logits
    from pipeline.training.runtime import process_state

    model_class = BertForTokenClassification if token else BertForSequenceClassification
    teacher = model_class.from_pretrained(make_teacher(tmp_path / "teacher", token)).eval()
    joined, entry = with_teacher_logits(process_state(), small_dataset(), teacher, "t", tmp_path / "cache", 5, 0,
                                        log=lambda _: None)
    expected = predict_logits(teacher, small_dataset(), 5, 0, torch.device("cpu"))
    feature = joined.features["teacher_logits"]
    assert isinstance(feature.feature, datasets.Sequence) == token
    for row, want in zip(joined["teacher_logits"], expected):
        np.testing.assert_allclose(np.asarray(row, dtype=np.float32), want, rtol=1e-6)
    assert sorted(p.name for p in entry.iterdir()) == ["logits", "meta.json"]
