"""Encoders beyond BertModel, each a tiny random model through stage one and stage two; any other
architecture refused up front with a one-line error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import CHINESE_SENTENCES, save_tokenizer
from safetensors.torch import load_file
from test_general import general_config
from test_task import SENTIMENT, quiet_train, task_config, write_jsonl
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

from pipeline.config import from_dict
from pipeline.errors import ModelError
from stages.general import GeneralConfig, run_general
from stages.task import TaskDistillConfig, run_task

SIZES = {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 48}
ARCHITECTURES = {
    "roberta": {},
    "xlm-roberta": {},
    "electra": {"embedding_size": 16},  # factorised embeddings: embeddings_project 16 -> 32
    "albert": {"embedding_size": 16},  # one shared layer, run 4 times
    "distilbert": {"hidden_dim": 48},  # DistilBERT's name for the FFN width
    "ernie": {},
}

TEACHER_LAYERS = {"init": "teacher_layers", "preset": None, "num_hidden_layers": 2, "hidden_size": None,
                  "intermediate_size": None, "num_attention_heads": None}
FROM_CHECKPOINT = {**TEACHER_LAYERS, "init": "checkpoint", "num_hidden_layers": None}


@pytest.fixture(scope="module")
def task_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sentiment")
    rows = [{"text": s, "label": label} for s, label in zip(CHINESE_SENTENCES, SENTIMENT)]
    return {"train": write_jsonl(root / "train.jsonl", rows * 4), "dev": write_jsonl(root / "dev.jsonl", rows)}


def make_teacher(directory: Path, model_type: str, max_positions: int = 128, pad_token_id: int = 0,
                 **extra) -> Path:
    """A random `model_type` classifier (labels neg/pos) with the tests' character tokenizer."""
    tokenizer = save_tokenizer(directory, CHINESE_SENTENCES)
    torch.manual_seed(0)
    config = AutoConfig.for_model(
        model_type, vocab_size=len(tokenizer), max_position_embeddings=max_positions, pad_token_id=pad_token_id,
        id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1}, **SIZES, **extra)
    for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout"):
        if hasattr(config, name):
            setattr(config, name, 0.0)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(directory)
    return directory


def read_steps(directory: Path) -> list[dict]:
    lines = (directory / "train_log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "step" in r and "event" not in r]


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_architecture_distils_through_stage_one_and_stage_two(model_type, task_files, corpus_file,
                                                              tmp_path):
    teacher = make_teacher(tmp_path / "teacher", model_type, **ARCHITECTURES[model_type])
    general = tmp_path / "general"
    run_general(from_dict(GeneralConfig, general_config(teacher, corpus_file, general, train={"max_steps": 3})))
    steps = read_steps(general)
    assert len(steps) == 2 and all(torch.isfinite(torch.tensor(s["attention"])) for s in steps)
    student = AutoModel.from_pretrained(general)
    assert student.config.model_type == model_type and student.config.num_hidden_layers == 2

    out = tmp_path / "task"
    run_task(from_dict(TaskDistillConfig, task_config(
        teacher, task_files, out, student={**FROM_CHECKPOINT, "checkpoint": str(general)},
        intermediate={"train": quiet_train(max_steps=2)}, prediction={"train": quiet_train(max_steps=2)})))
    assert {"hidden", "attention"} <= set(read_steps(out / "intermediate")[-1])
    assert "accuracy" in json.loads((out / "metrics.json").read_text())["dev"]
    assert AutoModelForSequenceClassification.from_pretrained(out).config.model_type == model_type


def test_electra_student_gets_embeddings_as_wide_as_its_layers(corpus_file, tmp_path):
    teacher = make_teacher(tmp_path / "teacher", "electra", embedding_size=24)  # student hidden 16
    out = tmp_path / "general"
    run_general(from_dict(GeneralConfig, general_config(teacher, corpus_file, out, train={"max_steps": 1})))
    student = AutoModel.from_pretrained(out)
    assert student.config.embedding_size == student.config.hidden_size == 16
    assert not hasattr(student, "embeddings_project")


def test_electra_embedding_projection_trains_with_teacher_layers(corpus_file, tmp_path):
    teacher = make_teacher(tmp_path / "teacher", "electra", embedding_size=16)
    out = tmp_path / "general"
    run_general(from_dict(GeneralConfig, general_config(teacher, corpus_file, out,
                                                        student=TEACHER_LAYERS,
                                                        train={"max_steps": 2})))
    before = load_file(teacher / "model.safetensors")
    after = load_file(out / "model.safetensors")
    name = next(k for k in after if "embeddings_project.weight" in k)
    assert not torch.equal(after[name], before[f"electra.{name}" if f"electra.{name}" in before else name])


def test_roberta_positions_stop_two_short_of_max_position_embeddings(corpus_file, tmp_path):
    teacher = make_teacher(tmp_path / "teacher", "roberta", max_positions=34, pad_token_id=1)
    config = general_config(teacher, corpus_file, tmp_path / "run")
    config["corpus"]["max_seq_len"] = 33
    with pytest.raises(ModelError, match=r"exceeds the teacher's max_position_embeddings 34 less 2 .* at most 32"):
        run_general(from_dict(GeneralConfig, config))
    assert not (tmp_path / "run").exists()


def test_albert_refuses_teacher_layers_init(corpus_file, tmp_path):
    teacher = make_teacher(tmp_path / "teacher", "albert", embedding_size=16)
    config = general_config(teacher, corpus_file, tmp_path / "run",
                            student=TEACHER_LAYERS)
    with pytest.raises(ModelError, match="shares one set of weights across its layers"):
        run_general(from_dict(GeneralConfig, config))


@pytest.mark.parametrize("model_type", ["megatron-bert", "mpnet"])
def test_an_architecture_outside_attention_interface_is_refused_up_front(model_type, task_files, corpus_file,
                                                                         tmp_path):
    teacher = make_teacher(tmp_path / "teacher", model_type)
    with pytest.raises(ModelError, match=rf"teacher architecture '{model_type}' .* AttentionInterface"):
        run_general(from_dict(GeneralConfig, general_config(teacher, corpus_file, tmp_path / "general")))
    with pytest.raises(ModelError, match=rf"teacher architecture '{model_type}'"):
        run_task(from_dict(TaskDistillConfig, task_config(teacher, task_files, tmp_path / "task")))
    assert not (tmp_path / "general").exists() and not (tmp_path / "task").exists()
