"""Stage one with objective distilbert on tiny masked-LM BERTs: the loss falls, the student is a loadable
masked LM, resume is exact, and teachers or students that cannot work are refused clearly."""

import json
from pathlib import Path

import pytest
import torch
from conftest import CHINESE_SENTENCES, interrupt_after, make_bert, save_tokenizer
from safetensors.torch import load_file

from pipeline.config import from_dict
from pipeline.errors import ConfigError, ModelError
from stages.general import GeneralConfig, run_general


@pytest.fixture(scope="module")
def mlm_teacher_dir(tmp_path_factory) -> Path:
    """A 4-layer, hidden-32 random BertForMaskedLM (MLM head saved) with a character vocabulary."""
    directory = tmp_path_factory.mktemp("mlm_teacher")
    tokenizer = save_tokenizer(directory, CHINESE_SENTENCES)
    return make_bert(directory, vocab_size=len(tokenizer), layers=4, hidden=32, heads=4, masked_lm=True)


def distilbert_config(teacher_dir, corpus, output_dir, **sections) -> dict:
    config = {
        "teacher": str(teacher_dir),
        "objective": "distilbert",
        "corpus": {"path": str(corpus), "max_seq_len": 32, "shuffle_buffer": 16},
        "output_dir": str(output_dir),
        "student": {"init": "teacher_layers", "copy_teacher_layers": [2, 4]},
        "distilbert": {"mlm_probability": 0.3},
        "train": {"batch_size": 4, "max_steps": 12, "log_every": 1, "save_every": 4, "lr": 2e-3,
                  "warmup_ratio": 0.0, "progress_bar": False},
    }
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values} if isinstance(values, dict) else values
    return config


def step_records(output_dir: Path) -> list[dict]:
    lines = (output_dir / "train_log.jsonl").read_text().splitlines()
    return [record for record in map(json.loads, lines) if "step" in record and "loss" in record]


FRESH_STUDENT = {"init": "config", "copy_teacher_layers": None, "preset": None, "num_hidden_layers": 2,
                 "hidden_size": 32, "intermediate_size": 48, "num_attention_heads": 4}


def test_distilbert_run_lowers_the_loss_and_saves_a_masked_lm_student(mlm_teacher_dir, corpus_file, tmp_path):
    # A fresh student of the teacher's width starts far from it (cosine ~1). The random teacher's MLM
    # distribution is near uniform, so soft_ce starts near 0 and may grow as the student learns the MLM task.
    out = tmp_path / "run"
    config = distilbert_config(mlm_teacher_dir, corpus_file, out, student=FRESH_STUDENT, train={"max_steps": 20})
    assert run_general(from_dict(GeneralConfig, config)) == out
    steps = step_records(out)
    assert all({"soft_ce", "mlm", "cosine", "loss"} <= record.keys() for record in steps)
    assert steps[-1]["loss"] < steps[0]["loss"] and steps[-1]["cosine"] < steps[0]["cosine"]
    marker = json.loads((out / "tinydistill_run.json").read_text())
    assert marker["finished"] is True and marker["objective"] == "distilbert"
    assert not (out / "projections.safetensors").exists()
    from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer

    masked_lm = AutoModelForMaskedLM.from_pretrained(out)
    assert masked_lm.config.num_hidden_layers == 2 and masked_lm.config.hidden_size == 32
    encoder = AutoModel.from_pretrained(out)
    torch.testing.assert_close(encoder.embeddings.word_embeddings.weight,
                               masked_lm.bert.embeddings.word_embeddings.weight, rtol=0, atol=0)
    assert AutoTokenizer.from_pretrained(out).mask_token == "[MASK]"


def test_teacher_layers_student_starts_with_the_teachers_mlm_head(mlm_teacher_dir, corpus_file, tmp_path):
    out = tmp_path / "copied"
    run_general(from_dict(GeneralConfig, distilbert_config(mlm_teacher_dir, corpus_file, out,
                                                           train={"max_steps": 1, "lr": 1e-12})))
    teacher, student = load_file(mlm_teacher_dir / "model.safetensors"), load_file(out / "model.safetensors")
    head = "cls.predictions.transform.dense.weight"
    torch.testing.assert_close(student[head], teacher[head], rtol=0, atol=1e-9)
    layer = "bert.encoder.layer.{}.attention.self.query.weight"
    torch.testing.assert_close(student[layer.format(1)], teacher[layer.format(3)], rtol=0, atol=1e-9)


def test_killed_and_resumed_distilbert_run_equals_uninterrupted_run(mlm_teacher_dir, corpus_file, tmp_path,
                                                                    monkeypatch):
    # dropout, a shuffle buffer, two micro-batches per step and fresh masks per micro-batch: RNG, data
    # position, accumulation and the masks all have to be restored for the weights to match exactly.
    overrides = {"student": {"dropout": 0.1}, "train": {"grad_accum": 2, "max_steps": 8}}
    straight = tmp_path / "straight"
    run_general(from_dict(GeneralConfig, distilbert_config(mlm_teacher_dir, corpus_file, straight, **overrides)))

    resumed = tmp_path / "resumed"
    interrupt_after(6, monkeypatch)  # checkpoint at step 4, killed two steps later
    with pytest.raises(KeyboardInterrupt):
        run_general(from_dict(GeneralConfig, distilbert_config(mlm_teacher_dir, corpus_file, resumed, **overrides)))
    monkeypatch.undo()
    assert not (resumed / "tinydistill_run.json").exists()
    resume_overrides = {**overrides, "train": {**overrides["train"], "resume_from": "auto"}}
    run_general(from_dict(GeneralConfig,
                          distilbert_config(mlm_teacher_dir, corpus_file, resumed, **resume_overrides)))

    expected, actual = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert expected.keys() == actual.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=0, msg=name)
    assert [r["loss"] for r in step_records(resumed)][-2:] == [r["loss"] for r in step_records(straight)][-2:]


def test_teacher_without_an_mlm_head_is_refused_before_the_output_dir_is_made(teacher_dir, corpus_file, tmp_path):
    out = tmp_path / "out"
    # teacher_dir holds a bare BertModel: no cls.predictions.* weights
    with pytest.raises(ModelError, match=r"has no masked-LM head weights \(missing cls\.predictions\."):
        run_general(from_dict(GeneralConfig, distilbert_config(teacher_dir, corpus_file, out)))
    assert not out.exists()


NARROW_STUDENT = {"init": "config", "preset": None, "num_hidden_layers": 2, "hidden_size": 16,
                  "intermediate_size": 32, "num_attention_heads": 4}


def test_student_of_another_width_is_refused_while_the_cosine_term_is_on(mlm_teacher_dir, corpus_file, tmp_path):
    config = distilbert_config(mlm_teacher_dir, corpus_file, tmp_path / "out")
    config["student"] = NARROW_STUDENT
    with pytest.raises(ConfigError, match=r"^student\.hidden_size: the distilbert cosine loss .* teacher's 32 "
                                          r"\(got 16\).*distilbert\.cosine: 0$"):
        run_general(from_dict(GeneralConfig, config))
    assert not (tmp_path / "out").exists()


def test_student_of_another_width_trains_without_the_cosine_term(mlm_teacher_dir, corpus_file, tmp_path):
    out = tmp_path / "narrow"
    config = distilbert_config(mlm_teacher_dir, corpus_file, out, distilbert={"cosine": 0.0},
                               train={"max_steps": 2})
    config["student"] = NARROW_STUDENT
    run_general(from_dict(GeneralConfig, config))
    assert all("cosine" not in record and "soft_ce" in record for record in step_records(out))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c.update(objective="distilbert_v2"), r"^objective: must be one of 'tinybert', 'distilbert'"),
        (lambda c: c["distilbert"].update(temperature=0), r"^distilbert\.temperature: must be > 0, got 0"),
        (lambda c: c["distilbert"].update(mlm=-1.0), r"^distilbert\.mlm: weight must be >= 0"),
        (lambda c: c["distilbert"].update(soft_ce=0, mlm=0, cosine=0), r"^distilbert: every weight is 0"),
        (lambda c: c["distilbert"].update(mlm_probability=0), r"^distilbert\.mlm_probability: must be in \(0, 1\]"),
        (lambda c: c.update(loss={"attention": 0}), r"^loss: only used with objective tinybert"),
        (lambda c: c.update(mapping={"teacher_layers": [2, 4]}), r"^mapping: only used with objective tinybert"),
        (lambda c: c.update(objective="tinybert"), r"^distilbert: only used with objective distilbert"),
    ],
    ids=["objective", "temperature", "negative-weight", "all-zero", "mlm-probability", "tinybert-loss",
         "tinybert-mapping", "distilbert-section-with-tinybert"],
)
def test_bad_distilbert_config_is_one_line_naming_the_key(change, message):
    config = distilbert_config("t", "c.txt", "o")
    change(config)
    with pytest.raises(ConfigError, match=message):
        from_dict(GeneralConfig, config)
