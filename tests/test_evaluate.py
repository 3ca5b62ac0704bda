"""`evaluate`'s ensemble row: K models' averaged probabilities (T = 1), scored as one model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CHINESE_SENTENCES, save_tokenizer
from transformers import BertConfig, BertForSequenceClassification

from pipeline.config import from_dict
from pipeline.errors import ConfigError, ModelError
from stages.evaluate import EvaluateConfig, ensemble_predictions, run_evaluate

LABELS = ["pos", "neg", "pos", "neg", "neg", "pos", "pos", "pos"]
ID2LABEL = {0: "neg", 1: "pos"}


def classifier(directory: Path, seed: int, id2label: dict[int, str] = ID2LABEL, permutation=(0, 1)) -> Path:
    """A random 2-layer classifier whose head is scaled up and centred on the dev texts, so that its
    predictions differ from row to row (a random BERT's pooled outputs are nearly alike)."""
    tokenizer = save_tokenizer(directory, CHINESE_SENTENCES)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=48, max_position_embeddings=64, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, num_labels=2, id2label=id2label,
                        label2id={name: i for i, name in id2label.items()})
    model = BertForSequenceClassification(config)
    model.eval()
    with torch.no_grad():
        model.classifier.weight.mul_(40.0)
        logits = torch.cat([model(**tokenizer(text, return_tensors="pt")).logits for text in CHINESE_SENTENCES])
        model.classifier.bias.sub_(logits.median(dim=0).values)
        model.classifier.weight.copy_(model.classifier.weight[list(permutation)])
        model.classifier.bias.copy_(model.classifier.bias[list(permutation)])
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("ensemble")
    dev = root / "dev.jsonl"
    dev.write_text("".join(json.dumps({"text": s, "label": label}, ensure_ascii=False) + "\n"
                           for s, label in zip(CHINESE_SENTENCES, LABELS)), encoding="utf-8")
    members = [classifier(root / f"m{seed}", seed) for seed in range(3)]
    return {"root": root, "dev": dev, "members": members}


def evaluate(setup: dict, out: Path, ensemble: list) -> dict:
    members = setup["members"]
    run_evaluate(from_dict(EvaluateConfig, {
        "teacher": str(members[0]), "student": str(members[1]), "output_dir": str(out), "latency": {"enabled": False},
        "task": {"type": "classification", "dev": str(setup["dev"]), "labels": ["neg", "pos"], "max_seq_len": 32},
        "ensemble": [str(path) for path in ensemble]}))
    return json.loads((out / "report.json").read_text())


def hand_ensemble_accuracy(members: list[Path]) -> tuple[float, list[int]]:
    """Every dev text through every model, softmax, averaged, argmax: the accuracy against the labels."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(members[0])
    probabilities = 0
    for path in members:
        model = BertForSequenceClassification.from_pretrained(path).eval()
        with torch.no_grad():
            logits = torch.cat([model(**tokenizer(text, return_tensors="pt")).logits for text in CHINESE_SENTENCES])
        probabilities = probabilities + torch.softmax(logits, dim=-1) / len(members)
    predicted = probabilities.argmax(-1).tolist()
    gold = [0 if label == "neg" else 1 for label in LABELS]
    return float(np.mean([p == g for p, g in zip(predicted, gold)])), predicted


def test_averaged_probabilities_not_logits_decide_the_ensembles_label():
    # Member 1 is sure of class 1 (logit gap 10); members 2 and 3 lean to class 0 (gap 3). Mean
    # probabilities: class 0 (0.635); mean logits would say class 1 (2.0 vs 3.33).
    logits = [[np.array([0.0, 10.0])], [np.array([3.0, 0.0])], [np.array([3.0, 0.0])]]
    (averaged,) = ensemble_predictions(logits, "classification")
    p_sure, p_lean = 1 / (1 + np.exp(10.0)), 1 / (1 + np.exp(-3.0))
    np.testing.assert_allclose(averaged, [(p_sure + 2 * p_lean) / 3, 1 - (p_sure + 2 * p_lean) / 3], rtol=1e-6)
    assert averaged.argmax() == 0
    assert ensemble_predictions([[np.array([1.5])], [np.array([2.5])]], "regression")[0] == pytest.approx([2.0])
    token = ensemble_predictions([[np.zeros((3, 2))], [np.tile([0.0, np.log(3.0)], (3, 1))]], "token")[0]
    np.testing.assert_allclose(token, np.tile([0.375, 0.625], (3, 1)), rtol=1e-6)  # (1/2 + 1/4) / 2 per token


def test_the_ensemble_row_scores_the_argmax_of_the_averaged_probabilities(setup, tmp_path):
    report = evaluate(setup, tmp_path / "r", setup["members"])
    expected, predicted = hand_ensemble_accuracy(setup["members"])
    assert len(set(predicted)) == 2  # the members' heads are sharp enough to predict both labels
    row = report["models"]["ensemble"]
    assert row["metrics"]["accuracy"] == pytest.approx(expected)
    assert report["splits"]["ensemble"]["dev"]["accuracy"] == pytest.approx(expected)
    assert row["members"] == [str(path) for path in setup["members"]]
    assert row["parameters"] == sum(report["models"][role]["parameters"] for role in ("teacher", "student")) + \
        sum(p.numel() for p in BertForSequenceClassification.from_pretrained(setup["members"][2]).parameters())
    assert "| ensemble |" in (tmp_path / "r" / "report.md").read_text()


def test_a_member_with_another_label_order_is_put_in_the_teachers_order(setup, tmp_path):
    # The third member with its head rows and label names swapped: the same model, so the same score.
    swapped = classifier(setup["root"] / "swapped", 2, {0: "pos", 1: "neg"}, permutation=(1, 0))
    plain = evaluate(setup, tmp_path / "plain", setup["members"])
    reordered = evaluate(setup, tmp_path / "reordered", [*setup["members"][:2], swapped])
    assert reordered["models"]["ensemble"]["metrics"] == plain["models"]["ensemble"]["metrics"]


def test_a_member_whose_label_names_disagree_is_refused_before_anything_is_written(setup, tmp_path):
    renamed = classifier(setup["root"] / "renamed", 2, {0: "negative", 1: "positive"})
    with pytest.raises(ModelError, match=r"^ensemble\[1\]'s label map \{0: 'negative', 1: 'positive'\} disagrees "
                                         r"with the data's labels \['neg', 'pos'\]$"):
        evaluate(setup, tmp_path / "r", [setup["members"][0], renamed])
    assert not (tmp_path / "r").exists()


def test_an_ensemble_of_one_is_refused():
    with pytest.raises(ConfigError, match=r"^ensemble: needs at least 2 models, got 1$"):
        from_dict(EvaluateConfig, {"teacher": "t", "student": "s", "output_dir": "o", "ensemble": ["t"],
                                   "task": {"type": "classification", "dev": "d.jsonl"}})
