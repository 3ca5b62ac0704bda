"""`torchrun --nproc_per_node 2` (gloo, CPU) trains the same student as one process with the doubled batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import CHINESE_SENTENCES
from safetensors.torch import load_file
from test_general import general_config

REPO = Path(__file__).resolve().parent.parent


def _launch(args, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600,
                            check=False)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize("objective", [{}, {"objective": "minilmv2", "minilmv2": {"relation_heads": 4}}],
                         ids=["tinybert", "minilmv2"])
def test_two_processes_match_one_process_with_the_doubled_batch(teacher_dir, tmp_path, objective):
    # Every line is longer than max_seq_len, so every sequence is full: each rank's loss is a mean over
    # the same number of tokens and DDP's gradient average equals the one-process mean exactly. A prepared
    # corpus gives the two ranks' batches at a step the rows of the one-process batch.
    from pipeline.data.corpus.prepare import prepare_corpus

    lines = [CHINESE_SENTENCES[i % 8] + CHINESE_SENTENCES[(i + 3) % 8] for i in range(64)]
    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(lines) + "\n", encoding="utf-8")
    corpus = prepare_corpus([str(text)], str(teacher_dir), tmp_path / "prepared", max_seq_len=32, packing="lines",
                            progress_bar=False)

    def write_config(name, batch_size):
        config = general_config(teacher_dir, corpus, tmp_path / name,
                                train={"batch_size": batch_size, "max_steps": 4, "save_every": 100})
        config["corpus"] = {"path": str(corpus), "max_seq_len": 32, "packing": False}
        config.update(objective)
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    two = write_config("two_processes", batch_size=4)
    one = write_config("one_process", batch_size=8)
    _launch([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29561",
             "-m", "pipeline.cli", "general", str(two)], tmp_path)
    _launch([sys.executable, "-m", "pipeline.cli", "general", str(one)], tmp_path)

    log = (tmp_path / "two_processes" / "train_log.jsonl").read_text()
    assert '"processes": 2' in log and '"effective_batch": 8' in log
    expected = load_file(tmp_path / "one_process" / "model.safetensors")
    actual = load_file(tmp_path / "two_processes" / "model.safetensors")
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=1e-5, msg=name)
    if not objective:
        moved = load_file(tmp_path / "one_process" / "projections.safetensors")["embedding.weight"]
        assert moved.abs().sum() > 0


def test_two_process_task_distillation_matches_one_process(tmp_path):
    """Both steps of `tinydistill task` plus the sharded teacher-logits cache, on 2 ranks vs 1."""
    import json

    from conftest import make_bert, save_tokenizer
    from transformers import BertConfig, BertForSequenceClassification

    # Equal-length texts: every rank's token-mean loss is over the same token count, so DDP's gradient
    # average equals the one-process mean exactly.
    texts = [s[:12] for s in CHINESE_SENTENCES]
    rows = [{"text": t, "label": "pos" if i % 3 else "neg"} for i, t in enumerate(texts)]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows * 4), encoding="utf-8")
    teacher = tmp_path / "teacher"
    tokenizer = save_tokenizer(teacher, CHINESE_SENTENCES)
    make_bert(teacher, vocab_size=len(tokenizer), layers=2, hidden=32, heads=4)
    config = BertConfig.from_pretrained(teacher)
    config.update({"id2label": {0: "neg", 1: "pos"}, "label2id": {"neg": 0, "pos": 1}})
    BertForSequenceClassification(config).save_pretrained(teacher)

    def write_config(name, batch_size):
        train_cfg = {"batch_size": batch_size, "max_steps": 3, "lr": 1e-3, "progress_bar": False, "save_every": 100}
        config = {
            "teacher": str(teacher), "output_dir": str(tmp_path / name), "cache_dir": str(tmp_path / f"cache_{name}"),
            "task": {"type": "classification", "train": str(train), "max_seq_len": 32},
            "student": {"preset": None, "num_hidden_layers": 1, "hidden_size": 16, "intermediate_size": 24,
                        "num_attention_heads": 4},
            "intermediate": {"train": train_cfg}, "prediction": {"train": train_cfg},
        }
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    two, one = write_config("two", 4), write_config("one", 8)
    _launch([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29563",
             "-m", "pipeline.cli", "task", str(two)], tmp_path)
    _launch([sys.executable, "-m", "pipeline.cli", "task", str(one)], tmp_path)
    assert '"processes": 2' in (tmp_path / "two" / "prediction" / "train_log.jsonl").read_text()
    expected = load_file(tmp_path / "one" / "model.safetensors")
    actual = load_file(tmp_path / "two" / "model.safetensors")
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=1e-5, msg=name)


@pytest.mark.parametrize("zero", ["embedding", "hidden", "attention"])
def test_two_processes_train_with_a_loss_weight_at_zero(zero, teacher_dir, tmp_path):
    """DDP fails on the step after one where a trainable parameter got no gradient: with a term off,
    what no remaining term reaches (W_h, the top layer's value and FFN weights) must be frozen."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CHINESE_SENTENCES * 4) + "\n", encoding="utf-8")
    config = general_config(teacher_dir, corpus, tmp_path / "run", loss={zero: 0.0},
                            train={"batch_size": 2, "max_steps": 3, "save_every": 100, "log_every": 1})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    _launch([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29565",
             "-m", "pipeline.cli", "general", str(path)], tmp_path)
    steps = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()
             if '"step"' in line and '"event"' not in line]
    assert [s["step"] for s in steps] == [1, 2, 3]
    assert all(zero not in s for s in steps)
