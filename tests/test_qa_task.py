"""The extractive-QA task type through every stage: finetune -> task -> export -> evaluate, and its bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import make_bert, save_tokenizer
from test_task import write_jsonl
from transformers import AutoModelForQuestionAnswering, AutoTokenizer

from pipeline.config import from_dict
from pipeline.errors import ConfigError, DataError, ModelError
from pipeline.run import _file_stamp
from pipeline.tasks.data import TaskConfig, collate, load_task_split, load_transfer, tokenize_task
from stages.evaluate import EvaluateConfig, run_evaluate
from stages.export import ExportConfig, run_export
from stages.finetune import FinetuneConfig, run_finetune
from stages.task import TaskDistillConfig, run_task

# context, the question's entity type, its answers: a small MRC-style NER set (people and places)
EXAMPLES = [
    ("张伟在上海开了一家小餐馆。", {"人": ["张伟"], "地": ["上海"]}),
    ("李娜昨天去北京看望父母。", {"人": ["李娜"], "地": ["北京"]}),
    ("王芳和刘洋在广州工作。", {"人": ["王芳", "刘洋"], "地": ["广州"]}),
    ("今天的天气很好，适合散步。", {"人": [], "地": []}),
    ("陈明从南京回到了杭州。", {"人": ["陈明"], "地": ["南京", "杭州"]}),
    ("这本书写得非常精彩。", {"人": [], "地": []}),
]
QUESTIONS = {"人": "文中提到了哪些人名？", "地": "文中提到了哪些地名？"}


def qa_rows() -> list[dict]:
    rows = []
    for context, answers in EXAMPLES:
        for kind, question in QUESTIONS.items():
            texts = answers[kind]
            rows.append({"context": context, "question": question,
                         "answers": {"text": texts, "answer_start": [context.index(t) for t in texts]}})
    return rows


def qa_tokenizer(directory: Path):
    save_tokenizer(directory, [c for c, _ in EXAMPLES] + list(QUESTIONS.values()))
    return AutoTokenizer.from_pretrained(directory)


@pytest.fixture(scope="module")
def qa_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("qa")
    rows = qa_rows()
    return {"train": write_jsonl(root / "train.jsonl", rows * 4), "dev": write_jsonl(root / "dev.jsonl", rows)}


def qa_task(files: dict, **extra) -> dict:
    return {"type": "qa", "train": str(files["train"]), "dev": str(files["dev"]), "max_seq_len": 32,
            "doc_stride": 8, "null_threshold": 0.0, "max_answer_len": 6, **extra}


def quiet_train(**extra) -> dict:
    return {"batch_size": 8, "lr": 1e-3, "progress_bar": False, "log_every": 1, "save_every": 1000, **extra}


@pytest.fixture(scope="module")
def qa_teacher(tmp_path_factory, qa_files) -> Path:
    base = tmp_path_factory.mktemp("qa_pretrained")
    make_bert(base, vocab_size=len(qa_tokenizer(base)), layers=4, hidden=32, heads=4)
    out = tmp_path_factory.mktemp("qa_teacher") / "ft"
    run_finetune(from_dict(FinetuneConfig, {
        "model": str(base), "task": qa_task(qa_files), "output_dir": str(out),
        "train": quiet_train(epochs=20, lr=3e-3, warmup_ratio=0.0), "early_stopping": {"patience": 20},
    }))
    return out


def test_config_refuses_a_stride_that_does_not_fit_the_window():
    with pytest.raises(ConfigError, match=r"task.doc_stride: 32 must be smaller than task.max_seq_len 32"):
        TaskConfig(type="qa", max_seq_len=32, doc_stride=32)
    with pytest.raises(ConfigError, match=r"task.doc_stride: only used when task.type is qa"):
        TaskConfig(type="classification", doc_stride=16)
    assert TaskConfig(type="qa", max_seq_len=384).doc_stride == 96


def test_a_missing_column_and_a_wrong_answer_start_are_named(qa_files, tmp_path):
    rows = qa_rows()
    with pytest.raises(DataError, match=r"task.question: column 'query' is not in the train split"):
        load_task_split(TaskConfig(**qa_task(qa_files, question="query")), "train")
    rows[2]["answers"]["answer_start"] = [5]  # 李娜 is at 0
    bad = write_jsonl(tmp_path / "bad.jsonl", rows)
    cfg = TaskConfig(**qa_task({"train": bad, "dev": bad}))
    tokenizer = qa_tokenizer(tmp_path / "tok")
    with pytest.raises(DataError, match=r"task.train: row 2: answer_start 5 does not match the answer '李娜'"):
        tokenize_task(load_task_split(cfg, "train"), tokenizer, cfg, None, "train")


def test_windows_collate_to_gold_spans_and_a_position_mask(qa_files, tmp_path):
    cfg = TaskConfig(**qa_task(qa_files))
    tokenizer = qa_tokenizer(tmp_path / "tok")
    windows = tokenize_task(load_task_split(cfg, "dev"), tokenizer, cfg, None, "dev")
    assert len(windows) == len(qa_rows())  # these contexts fit one window each
    batch = collate(windows.select(range(4)).to_list(), tokenizer.pad_token_id)
    assert batch["labels"].shape == (4, 2) and batch["position_mask"].shape == batch["input_ids"].shape
    for i, row in enumerate(windows.select(range(4))):
        start, end = batch["labels"][i].tolist()
        gold = row["answer_texts"]
        if gold:
            assert row["context"][row["offsets"][start][0]: row["offsets"][end][1]] == gold[0]
        else:
            assert (start, end) == (0, 0)
        assert batch["position_mask"][i, 0] == 1 and batch["position_mask"][i].sum() == len(row["context"]) + 1


def test_finetune_task_and_evaluate_an_extractive_qa_student(qa_teacher, qa_files, tmp_path):
    saved = json.loads((qa_teacher / "metrics.json").read_text())
    teacher_metrics = saved["dev"]
    assert set(teacher_metrics) == {"exact_match", "f1"} and saved["epochs_cap"] == 20  # early stopping reads dev F1
    assert teacher_metrics["f1"] > 0.8  # 20 epochs on its own dev rows: the gold spans were learned
    model = AutoModelForQuestionAnswering.from_pretrained(qa_teacher)
    assert model.config.num_labels == 2

    out = tmp_path / "student"
    run_task(from_dict(TaskDistillConfig, {
        "teacher": str(qa_teacher), "task": qa_task(qa_files), "output_dir": str(out),
        "student": {"preset": None, "num_hidden_layers": 2, "hidden_size": 32, "intermediate_size": 48,
                    "num_attention_heads": 4},
        "intermediate": {"train": quiet_train(max_steps=10, schedule="constant", warmup_ratio=0.0, lr=3e-3)},
        "prediction": {"train": quiet_train(max_steps=60, lr=3e-3, warmup_ratio=0.0), "eval_every": 20},
        "cache_dir": str(tmp_path / "cache"),
    }))
    student = AutoModelForQuestionAnswering.from_pretrained(out)
    assert student.config.num_hidden_layers == 2
    metrics = json.loads((out / "metrics.json").read_text())["dev"]
    assert metrics["f1"] > 0.5  # the teacher's spans reached the student through the soft start/end targets
    import datasets

    cached = next(p for p in (tmp_path / "cache").iterdir() if not p.name.startswith("."))
    logits = datasets.load_from_disk(str(cached / "logits"))["teacher_logits"]
    assert len(logits) == len(qa_rows()) * 4 and all(len(row[0]) == 2 for row in logits)  # (L, 2) per window

    run_export(from_dict(ExportConfig, {"model": str(out), "output_dir": str(tmp_path / "onnx"), "int8": True,
                                        "task": qa_task(qa_files)}))
    validation = json.loads((tmp_path / "onnx" / "export.json").read_text())
    assert validation["validation"]["inputs"].startswith("dev split")  # validated on the dev windows

    table = run_evaluate(from_dict(EvaluateConfig, {
        "teacher": str(qa_teacher), "student": str(out), "task": qa_task(qa_files), "onnx_dir": str(tmp_path / "onnx"),
        "output_dir": str(tmp_path / "eval"), "latency": {"batch_sizes": [1], "min_seconds": 0.05, "rounds": 1},
    }))
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["main_metric"] == "f1"
    models = report["models"]
    assert models["teacher"]["metrics"]["f1"] == pytest.approx(teacher_metrics["f1"])
    assert models["student"]["metrics"]["f1"] == pytest.approx(metrics["f1"])
    assert models["student onnx"]["metrics"]["f1"] == pytest.approx(metrics["f1"], abs=1e-6)
    assert "student onnx int8" in models and "f1" in table


def test_a_classification_teacher_is_refused_for_qa(qa_files, tmp_path):
    from transformers import AutoModelForSequenceClassification

    base = tmp_path / "cls"
    tokenizer = save_tokenizer(base, [c for c, _ in EXAMPLES])
    make_bert(base, vocab_size=len(tokenizer))
    AutoModelForSequenceClassification.from_pretrained(base, num_labels=3).save_pretrained(base)
    with pytest.raises(ModelError, match=r"teacher is a BertForSequenceClassification with 3 outputs; an "
                                         r"extractive-QA task needs a question-answering head"):
        run_task(from_dict(TaskDistillConfig, {"teacher": str(base), "task": qa_task(qa_files),
                                                "output_dir": str(tmp_path / "o")}))


def test_qa_windows_of_an_unlabelled_transfer_set_carry_no_spans(qa_files, tmp_path):
    cfg = TaskConfig(**qa_task(qa_files))
    rows = [{k: v for k, v in r.items() if k != "answers"} for r in qa_rows()]
    transfer = write_jsonl(tmp_path / "transfer.jsonl", rows)
    tokenizer = qa_tokenizer(tmp_path / "tok")

    windows = tokenize_task(load_transfer(cfg, str(transfer)), tokenizer, cfg, None, "transfer", need_labels=False)
    batch = collate(windows.select(range(2)).to_list(), tokenizer.pad_token_id)
    assert "labels" not in batch and torch.equal(batch["position_mask"][:, 0], torch.ones(2, dtype=torch.long))


def test_augment_varies_the_question_and_keeps_context_and_answers(qa_files, tmp_path):
    from augment.build import run_augment
    from augment.config import AugmentConfig

    synonyms = tmp_path / "synonyms.txt"
    synonyms.write_text("Xx01A01= 提到 提及 说到 谈到\nXx01A02= 人名 姓名 名字\nXx01A03= 地名 地点\n", encoding="utf-8")
    out = run_augment(from_dict(AugmentConfig, {
        "output_dir": str(tmp_path / "transfer"), "input": {"path": str(qa_files["dev"])},
        "columns": {"text": "question"}, "candidates": {"dictionary": {"path": str(synonyms)}},
        "ops": {"n_variants": 4, "p_mask": 0.0, "p_ng": 0.0, "p_pos": 0.9}, "batch_size": 4,
    }))
    import datasets

    sources, transfer = qa_rows(), datasets.load_from_disk(str(out / "dataset")).to_list()
    assert {r["question"] for r in transfer} - set(QUESTIONS.values())  # some questions were rewritten
    for row in transfer:
        source = sources[row["source_index"]]
        assert row["context"] == source["context"] and row["answers"] == source["answers"]
        assert row["augmented"] in ("", "question")
    cfg = TaskConfig(**qa_task(qa_files))
    written = _file_stamp(out)
    windows = tokenize_task(load_transfer(cfg, str(out)), qa_tokenizer(tmp_path / "tok"), cfg, None, "transfer")
    assert len(windows) == len(transfer)  # every answer_start still matches its context
    assert _file_stamp(out) == written  # no cache file written into the augment stage's folder


def test_an_ensemble_averages_start_and_end_distributions_over_positions():
    import numpy as np

    from stages.evaluate import ensemble_predictions

    # member 1: uniform starts; member 2: starts 1:4:1. Mean start distribution 1/4, 1/2, 1/4; ends uniform.
    member_1 = [np.zeros((3, 2), dtype=np.float32)]
    member_2 = [np.stack([np.log([1.0, 4.0, 1.0]), np.zeros(3)], axis=-1).astype(np.float32)]
    (combined,) = ensemble_predictions([member_1, member_2], "qa")
    np.testing.assert_allclose(np.exp(combined[:, 0]), [0.25, 0.5, 0.25], rtol=1e-6)
    np.testing.assert_allclose(np.exp(combined[:, 1]), [1 / 3] * 3, rtol=1e-6)


def test_a_qa_student_pruned_to_its_transfer_set_reads_questions_and_contexts(qa_teacher, qa_files, tmp_path):
    out = tmp_path / "pruned"
    run_task(from_dict(TaskDistillConfig, {
        "teacher": str(qa_teacher), "task": qa_task(qa_files), "output_dir": str(out),
        "student": {"preset": None, "num_hidden_layers": 2, "hidden_size": 32, "intermediate_size": 48,
                    "num_attention_heads": 4, "vocab": "prune"},
        "intermediate": {"enabled": False},
        "prediction": {"train": quiet_train(max_steps=4)}, "cache_dir": str(tmp_path / "cache"),
    }))
    chars = {ch for context, _ in EXAMPLES for ch in context} | {ch for q in QUESTIONS.values() for ch in q}
    vocab = AutoTokenizer.from_pretrained(out).get_vocab()
    assert set(vocab) == chars | {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"}
    assert AutoModelForQuestionAnswering.from_pretrained(out).config.vocab_size == len(vocab)
    assert set(json.loads((out / "metrics.json").read_text())["dev"]) == {"exact_match", "f1"}


@pytest.mark.parametrize("fields, match", [
    ({"labels": ["a"]}, r"task.labels: extractive QA has no label names"),
    ({"n_best": 0}, r"task.n_best: must be >= 1, got 0"),
    ({"max_answer_len": 0}, r"task.max_answer_len: must be >= 1, got 0"),
], ids=["labels", "n_best", "max_answer_len"])
def test_bad_qa_settings_are_one_line_errors(fields, match):
    with pytest.raises(ConfigError, match=match):
        TaskConfig(type="qa", **fields)


def test_an_empty_context_and_a_slow_tokenizer_are_refused(qa_files, tmp_path):
    import types

    rows = qa_rows()
    rows[1]["context"], rows[1]["answers"] = "", {"text": [], "answer_start": []}
    bad = write_jsonl(tmp_path / "empty.jsonl", rows)
    cfg = TaskConfig(**qa_task({"train": bad, "dev": bad}))
    with pytest.raises(DataError, match=r"task.train: row 1: question and context must be non-empty text"):
        tokenize_task(load_task_split(cfg, "train"), qa_tokenizer(tmp_path / "tok"), cfg, None, "train")
    with pytest.raises(ModelError, match=r"extractive QA needs a fast tokenizer \(character offsets\)"):
        tokenize_task(load_task_split(cfg, "dev"), types.SimpleNamespace(is_fast=False), cfg, None, "dev")
