"""The BiLSTM student (Tang et al. 2019): shapes, padding, vocabulary, distillation, save/load, errors, evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import CHINESE_SENTENCES, save_tokenizer
from test_task import SENTIMENT, quiet_train, task_section, write_jsonl
from transformers import BertConfig, BertForSequenceClassification

from pipeline.config import from_dict
from pipeline.errors import ConfigError, ModelError
from pipeline.models.bilstm import BiLSTMClassifier, BiLSTMModelConfig, BiLSTMVocab, load_bilstm
from pipeline.tasks.data import collate
from stages.bilstm import BiLSTMConfig, run_bilstm


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """A tiny LSTM's ops are too small to split across threads: on a busy 2-core machine intra-op threads
    spin against each other (about 1 s per training step instead of 5 ms), so this module runs on one."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def sentiment_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sentiment")
    rows = [{"text": s, "label": label} for s, label in zip(CHINESE_SENTENCES, SENTIMENT)]
    return {"train": write_jsonl(root / "train.jsonl", rows * 4), "dev": write_jsonl(root / "dev.jsonl", rows)}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """A random 2-layer BERT classifier with a named label map; its head is scaled up so its logits spread
    over a few units, as a fine-tuned teacher's do (fine-tuning one costs a minute on two cores)."""
    directory = tmp_path_factory.mktemp("teacher")
    tokenizer = save_tokenizer(directory, CHINESE_SENTENCES)
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
        max_position_embeddings=64, id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1}))
    with torch.no_grad():
        model.classifier.weight.mul_(30.0)
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def distilled(teacher, sentiment_files, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bilstm") / "student"
    return run_bilstm(from_dict(BiLSTMConfig, bilstm_config(teacher, sentiment_files, out)))


def tiny_config(pair: bool, **extra) -> BiLSTMModelConfig:
    return BiLSTMModelConfig(vocab_size=20, num_labels=3, id2label={0: "a", 1: "b", 2: "c"},
                             label2id={"a": 0, "b": 1, "c": 2}, pair=pair, embedding_dim=8, hidden_size=6,
                             mlp_hidden=5, dropout=0.0, **extra)


def bilstm_config(teacher: Path, files: dict, out: Path, **overrides) -> dict:
    return {"teacher": str(teacher), "task": task_section(files), "output_dir": str(out), "unit": "char",
            "embedding_dim": 16, "hidden_size": 16, "mlp_hidden": 16, "dropout": 0.0,
            "train": quiet_train(max_steps=30, lr=1e-2, warmup_ratio=0.0, schedule="constant"), "eval_every": 10,
            "cache_dir": str(out.parent / "logits_cache"), **overrides}


@pytest.mark.parametrize("pair, features", [(False, 2 * 6), (True, 4 * 2 * 6)])
def test_forward_shapes_for_single_sentences_and_pairs(pair, features):
    torch.manual_seed(0)
    model = BiLSTMClassifier(tiny_config(pair))
    # Two rows, right-padded; a pair row is sentence 1 (type 0) then sentence 2 (type 1).
    ids = torch.tensor([[2, 3, 4, 5, 6], [7, 8, 9, 0, 0]])
    types = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 0, 0]]) if pair else torch.zeros_like(ids)
    mask = (ids != 0).long()
    assert model.classifier[0].in_features == features
    assert model.encode(ids, mask.sum(1)).shape == (2, 2 * 6)
    assert model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits.shape == (2, 3)


@pytest.mark.parametrize("pair", [False, True])
def test_logits_do_not_depend_on_padding_or_batch_neighbours(pair):
    torch.manual_seed(0)
    model = BiLSTMClassifier(tiny_config(pair, unit="char")).eval()
    vocab = BiLSTMVocab.build(["今天天气很好", "房间太小了隔音很差"], "char")
    first, second = ["很好"], ["房间太小"]
    alone = vocab(first, second if pair else None, padding=True, return_tensors="pt")
    batch = vocab(first + ["房间太小了隔音很差今天天气"], (second + ["天气很好很好很好"]) if pair else None,
                  padding=True, return_tensors="pt")
    assert batch["input_ids"].shape[1] > alone["input_ids"].shape[1]
    torch.testing.assert_close(model(**batch).logits[0], model(**alone).logits[0], rtol=0, atol=1e-6)


def test_pair_logits_depend_on_the_second_sentence():
    torch.manual_seed(0)
    model = BiLSTMClassifier(tiny_config(True)).eval()
    vocab = BiLSTMVocab.build(["很好", "太差", "房间"], "char")
    a = model(**vocab(["房间"], ["很好"], return_tensors="pt")).logits
    b = model(**vocab(["房间"], ["太差"], return_tensors="pt")).logits
    assert not torch.allclose(a, b)


def test_vocab_encodes_pairs_like_a_tokenizer_and_round_trips(tmp_path):
    vocab = BiLSTMVocab.build(["好好好", "好坏", "坏 的"], "char")
    assert vocab.tokens == ["[PAD]", "[UNK]", "好", "坏", "的"]  # by count, then by character
    encoded = vocab(["好坏差"], ["的的的的的"], truncation=True, max_length=6)
    # longest_first: the pair loses from its longer side first; an unseen character is [UNK] = 1.
    assert encoded["input_ids"] == [[2, 3, 1, 4, 4, 4]] and encoded["token_type_ids"] == [[0, 0, 0, 1, 1, 1]]
    assert vocab([""])["input_ids"] == [[1]]
    vocab.save(tmp_path)
    loaded = BiLSTMVocab.load(tmp_path, "char")
    assert loaded.tokens == vocab.tokens and loaded(["好坏差"]) == vocab(["好坏差"])


def test_word_unit_uses_jieba_words():
    vocab = BiLSTMVocab.build(["房间干净，早餐不错", "房间很小"], "word")
    assert "房间" in vocab.tokens and "早餐" in vocab.tokens and "房" not in vocab.tokens
    assert len(vocab(["房间很小"])["input_ids"][0]) < len("房间很小")


def test_distillation_lowers_the_mse_and_saves_a_loadable_student(distilled):
    out = distilled
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    losses = [e["logits_mse"] for e in log if "logits_mse" in e]
    assert len(losses) == 30 and sum(losses[-5:]) / 5 < 0.25 * sum(losses[:5]) / 5
    assert sum(1 for e in log if e.get("event") == "dev") == 3
    assert {p.name for p in out.iterdir()} >= {"bilstm_config.json", "model.safetensors", "vocab.txt",
                                               "metrics.json", "tinydistill_run.json", "best"}
    model, vocab = load_bilstm(out)
    assert model.config.id2label == {0: "neg", 1: "pos"} and not model.config.pair
    best, _ = load_bilstm(out / "best")
    rows = [{"input_ids": vocab.encode(text), "token_type_ids": [0] * len(vocab.encode(text)), "example_index": i}
            for i, text in enumerate(["房间太小了", "早餐也不错"])]
    inputs = {k: v for k, v in collate(rows, vocab.pad_token_id).items() if k != "example_index"}
    torch.testing.assert_close(model(**inputs).logits, best(**inputs).logits, rtol=0, atol=0)


def test_teacher_with_another_label_map_is_refused(teacher, sentiment_files, tmp_path):
    cfg = bilstm_config(teacher, sentiment_files, tmp_path / "s")
    cfg["task"] = {**cfg["task"], "labels": ["pos", "neg", "meh"]}
    with pytest.raises(ModelError, match="teacher has 2 labels but the data has 3"):
        run_bilstm(from_dict(BiLSTMConfig, cfg))
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("task_type", ["token", "regression"])
def test_token_and_regression_tasks_are_refused_at_start_up(sentiment_files, tmp_path, task_type):
    cfg = bilstm_config(tmp_path / "teacher", sentiment_files, tmp_path / "s")
    cfg["task"] = {**cfg["task"], "type": task_type}
    with pytest.raises(ConfigError, match=rf"^task\.type: the BiLSTM student does classification only .* not "
                                          rf"{task_type}$"):
        from_dict(BiLSTMConfig, cfg)


def test_evaluate_reports_the_bilstm_student_with_latency(teacher, distilled, sentiment_files, tmp_path):
    from stages.evaluate import EvaluateConfig, run_evaluate

    table = run_evaluate(from_dict(EvaluateConfig, {
        "teacher": str(teacher), "student": str(distilled), "task": task_section(sentiment_files),
        "output_dir": str(tmp_path / "eval"), "latency": {"batch_sizes": [1, 4], "min_seconds": 0.0},
    }))
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    bilstm = report["models"]["student"]
    saved = json.loads((distilled / "metrics.json").read_text())["dev"]
    assert bilstm["metrics"]["accuracy"] == pytest.approx(saved["accuracy"])  # scored as training scored it
    assert set(bilstm["latency"]) == {"1", "4"} and bilstm["latency"]["1"]["ms_per_example"] > 0
    assert bilstm["parameters"] == sum(p.numel() for p in load_bilstm(distilled)[0].parameters())
    assert report["models"]["teacher"]["parameters"] > bilstm["parameters"] and "| student |" in table
