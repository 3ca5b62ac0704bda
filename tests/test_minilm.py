"""MiniLMv2 relation distillation: the loss by hand, its properties, and stage one with objective minilmv2."""

import json
import math

import pytest
import torch
from conftest import CHINESE_SENTENCES, interrupt_after, make_bert, save_tokenizer
from safetensors.torch import load_file
from test_general import general_config

from pipeline.config import from_dict
from pipeline.distill.losses import relation_kl, relation_scores
from pipeline.distill.minilm import MiniLMv2Config
from pipeline.errors import ConfigError
from stages.general import GeneralConfig, run_general


def _softmax(row):
    top = max(row)
    exps = [math.exp(v - top) for v in row]
    return [e / sum(exps) for e in exps]


def test_relation_kl_by_hand_three_tokens_two_relation_heads_one_padded():
    # One attention head of width 4 per side, so the concatenation is the vectors themselves; R = 2 splits
    # them into widths 2 (d_r = 2). Token 3 is padding: out of every softmax and of the mean.
    teacher = [[1.0, 0.0, 2.0, 1.0], [0.0, 1.0, 1.0, -1.0], [5.0, 5.0, 5.0, 5.0]]
    student = [[0.5, 0.5, 1.0, 0.0], [1.0, -1.0, 0.0, 2.0], [-3.0, 2.0, 1.0, 0.0]]
    expected = 0.0
    for head in range(2):
        t = [v[2 * head : 2 * head + 2] for v in teacher[:2]]
        s = [v[2 * head : 2 * head + 2] for v in student[:2]]
        for i in range(2):
            p_t = _softmax([sum(a * b for a, b in zip(t[i], t[j])) / math.sqrt(2) for j in range(2)])
            p_s = _softmax([sum(a * b for a, b in zip(s[i], s[j])) / math.sqrt(2) for j in range(2)])
            expected += sum(pt * (math.log(pt) - math.log(ps)) for pt, ps in zip(p_t, p_s))
    expected /= 2 * 2  # relation heads x real queries
    as_heads = lambda rows: torch.tensor([[rows]])
    mask = torch.tensor([[1, 1, 0]])
    assert relation_kl(as_heads(student), as_heads(teacher), mask, 2).item() == pytest.approx(expected, rel=1e-5)


def test_relation_scores_concatenate_heads_before_splitting():
    vectors = torch.randn(2, 3, 5, 4)  # 3 heads of 4 -> width 12 -> 2 relation heads of 6
    concatenated = vectors.transpose(1, 2).reshape(2, 5, 12)
    first = concatenated[..., :6]
    torch.testing.assert_close(relation_scores(vectors, 2)[:, 0], first @ first.transpose(-1, -2) / 6**0.5)


def test_relation_kl_is_zero_for_equal_inputs_and_positive_otherwise():
    torch.manual_seed(0)
    vectors, mask = torch.randn(2, 4, 6, 8), torch.tensor([[1, 1, 1, 1, 0, 0], [1] * 6])
    assert relation_kl(vectors, vectors.clone(), mask, 4).item() == pytest.approx(0.0, abs=1e-6)
    other = torch.randn(2, 2, 6, 16)  # another head count and width: 32 / 4 = 8 per relation head
    assert relation_kl(other, vectors, mask, 4).item() > 0.01


@pytest.fixture(scope="module")
def wide_teacher(tmp_path_factory):
    """12 heads of width 64 (768 wide): a student of 4 heads of width 32 (128 wide) shares neither."""
    directory = tmp_path_factory.mktemp("wide_teacher")
    tokenizer = save_tokenizer(directory, CHINESE_SENTENCES)
    return make_bert(directory, vocab_size=len(tokenizer), layers=3, hidden=768, heads=12, intermediate=96)


MINILM_STUDENT = {"preset": None, "num_hidden_layers": 2, "hidden_size": 128, "intermediate_size": 48,
                  "num_attention_heads": 4}


def minilm_config(teacher, corpus, out, **sections):
    sections = {"student": dict(MINILM_STUDENT), "objective": "minilmv2", "minilmv2": {"relation_heads": 4},
                **sections}
    return general_config(teacher, corpus, out, **sections)


def read_steps(out):
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines() if '"step"' in line]


def test_minilmv2_run_with_other_heads_and_widths_lowers_every_relation(wide_teacher, corpus_file, tmp_path):
    out = tmp_path / "out"
    run_general(from_dict(GeneralConfig, minilm_config(wide_teacher, corpus_file, out,
                                                       train={"max_steps": 30, "lr": 3e-3, "log_every": 1})))
    steps = read_steps(out)
    for term in ("qq", "kk", "vv"):
        first, last = sum(s[term] for s in steps[:3]) / 3, sum(s[term] for s in steps[-3:]) / 3
        assert last < 0.8 * first, term
    header = json.loads((out / "train_log.jsonl").read_text().splitlines()[0])
    assert header["relations (student->teacher layer)"] == "2->3" and header["frozen_params"] > 0
    assert not (out / "projections.safetensors").exists()
    from transformers import AutoModel

    assert AutoModel.from_pretrained(out).config.hidden_size == 128


def test_minilmv2_resumes_exactly(wide_teacher, corpus_file, tmp_path, monkeypatch):
    overrides = {"train": {"max_steps": 8, "grad_accum": 2}, "minilmv2": {"relation_heads": 4, "teacher_layer": 2}}
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_general(from_dict(GeneralConfig, minilm_config(wide_teacher, corpus_file, straight, **overrides)))
    interrupt_after(6, monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        run_general(from_dict(GeneralConfig, minilm_config(wide_teacher, corpus_file, resumed, **overrides)))
    monkeypatch.undo()
    again = {**overrides, "train": {**overrides["train"], "resume_from": "auto"}}
    run_general(from_dict(GeneralConfig, minilm_config(wide_teacher, corpus_file, resumed, **again)))
    expected, actual = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("change, message", [
    ({"minilmv2": {"relation_heads": 5}}, r"minilmv2.relation_heads: 5 does not divide the teacher's width 768"),
    ({"minilmv2": {"teacher_layer": 4}}, r"minilmv2.teacher_layer: 4 is out of range: the teacher has 3 layers"),
    ({"minilmv2": {"qq": 0, "kk": 0, "vv": 0}}, "nothing would be learned"),
    ({"loss": {"hidden": 0}}, "loss: only used with objective tinybert"),
])
def test_bad_minilmv2_settings_are_one_line_errors(wide_teacher, corpus_file, tmp_path, change, message):
    config = minilm_config(wide_teacher, corpus_file, tmp_path / "out")
    for key, value in change.items():
        config[key] = {**config.get(key, {}), **value}
    with pytest.raises(ConfigError, match=message):
        run_general(from_dict(GeneralConfig, config))
    assert not (tmp_path / "out").exists()


def test_minilmv2_section_without_the_objective_is_refused(teacher_dir, corpus_file, tmp_path):
    config = general_config(teacher_dir, corpus_file, tmp_path / "out", minilmv2={"relation_heads": 4})
    with pytest.raises(ConfigError, match="minilmv2: only used with objective minilmv2"):
        from_dict(GeneralConfig, config)
    assert MiniLMv2Config().relation_heads == 48
