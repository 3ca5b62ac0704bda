"""Stage one end to end on tiny random BERTs: losses fall, resume is exact, bad inputs fail clearly."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import interrupt_after
from safetensors.torch import load_file

from pipeline.config import from_dict
from pipeline.errors import ConfigError, DataError, ModelError
from stages.general import GeneralConfig, run_general

REPO = Path(__file__).resolve().parent.parent
TINY_STUDENT = {"preset": None, "num_hidden_layers": 2, "hidden_size": 16, "intermediate_size": 32,
                "num_attention_heads": 4}


def general_config(teacher_dir, corpus, output_dir, **sections) -> dict:
    config = {
        "teacher": str(teacher_dir),
        "corpus": {"path": str(corpus), "max_seq_len": 32, "shuffle_buffer": 16},
        "output_dir": str(output_dir),
        "student": dict(TINY_STUDENT),
        "train": {"batch_size": 4, "max_steps": 12, "log_every": 2, "save_every": 4, "lr": 2e-3,
                  "warmup_ratio": 0.0, "progress_bar": False},
    }
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values} if isinstance(values, dict) else values
    return config


def read_log(output_dir: Path) -> list[dict]:
    lines = (output_dir / "train_log.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_short_run_lowers_every_loss_term_and_saves_a_loadable_student(teacher_dir, corpus_file, tmp_path):
    out = tmp_path / "run"
    cfg = from_dict(GeneralConfig, general_config(teacher_dir, corpus_file, out,
                                                  train={"max_steps": 40, "tensorboard": True}))
    assert run_general(cfg) == out
    steps = [r for r in read_log(out) if "step" in r]
    first, last = steps[0], steps[-1]
    for term in ("embedding", "hidden", "attention", "loss"):
        assert last[term] < first[term], term
    assert json.loads((out / "tinydistill_run.json").read_text())["finished"] is True
    assert (out / "projections.safetensors").is_file() and (out / "resolved_config.yaml").is_file()
    assert list((out / "tensorboard").rglob("events.out.tfevents.*")), "train.tensorboard wrote no events"
    from transformers import AutoModel, AutoTokenizer

    student = AutoModel.from_pretrained(out)
    assert student.config.num_hidden_layers == 2 and student.config.hidden_size == 16
    assert AutoTokenizer.from_pretrained(out).cls_token == "[CLS]"


def test_killed_and_resumed_run_equals_uninterrupted_run(teacher_dir, corpus_file, tmp_path, monkeypatch):
    # dropout on, a shuffle buffer and two micro-batches per step: RNG, data position and
    # accumulation all have to be restored for the weights to match exactly.
    overrides = {"student": {"dropout": 0.1}, "train": {"grad_accum": 2, "max_steps": 10}}
    straight = tmp_path / "straight"
    run_general(from_dict(GeneralConfig, general_config(teacher_dir, corpus_file, straight, **overrides)))

    resumed = tmp_path / "resumed"
    cfg = from_dict(GeneralConfig, general_config(teacher_dir, corpus_file, resumed, **overrides))
    interrupt_after(6, monkeypatch)  # checkpoint at step 4, killed two steps later
    with pytest.raises(KeyboardInterrupt):
        run_general(cfg)
    monkeypatch.undo()
    assert not (resumed / "tinydistill_run.json").exists()
    assert (resumed / "checkpoints" / "step_000004").is_dir()
    with pytest.raises(ConfigError, match="unfinished run with checkpoints; pass --resume"):
        run_general(cfg)
    resume_overrides = {**overrides, "train": {**overrides["train"], "resume_from": "auto"}}
    run_general(from_dict(GeneralConfig, general_config(teacher_dir, corpus_file, resumed, **resume_overrides)))

    expected, actual = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert expected.keys() == actual.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=0, msg=name)
    proj_expected = load_file(straight / "projections.safetensors")
    proj_actual = load_file(resumed / "projections.safetensors")
    for name in proj_expected:
        torch.testing.assert_close(proj_actual[name], proj_expected[name], rtol=0, atol=0, msg=name)


def test_student_from_teacher_layers_copies_the_chosen_layers(teacher_dir, corpus_file, tmp_path):
    out = tmp_path / "copied"
    config = general_config(teacher_dir, corpus_file, out, train={"max_steps": 1, "lr": 1e-12})
    config["student"] = {"init": "teacher_layers", "copy_teacher_layers": [2, 4]}
    run_general(from_dict(GeneralConfig, config))
    teacher, student = load_file(teacher_dir / "model.safetensors"), load_file(out / "model.safetensors")
    name = "encoder.layer.{}.attention.self.query.weight"
    torch.testing.assert_close(student[name.format(1)], teacher[name.format(3)], rtol=0, atol=1e-9)
    torch.testing.assert_close(student[name.format(0)], teacher[name.format(1)], rtol=0, atol=1e-9)


def test_student_from_checkpoint_continues_with_its_projections(teacher_dir, corpus_file, tmp_path):
    first = tmp_path / "first"
    run_general(from_dict(GeneralConfig, general_config(teacher_dir, corpus_file, first, train={"max_steps": 2})))
    second = tmp_path / "second"
    config = general_config(teacher_dir, corpus_file, second, train={"max_steps": 1, "lr": 1e-12})
    config["student"] = {"init": "checkpoint", "checkpoint": str(first)}
    run_general(from_dict(GeneralConfig, config))
    before, after = load_file(first / "projections.safetensors"), load_file(second / "projections.safetensors")
    torch.testing.assert_close(after["embedding.weight"], before["embedding.weight"], rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (lambda c, t: c.update(teacher=str(t / "missing_teacher")), ModelError, "teacher path not found"),
        (lambda c, t: c["corpus"].update(path=str(t / "missing.txt")), DataError, "corpus path not found"),
        (lambda c, t: c.update(mapping={"teacher_layers": [1, 9]}), ConfigError,
         "teacher layer 9 is out of range: the teacher has 4 layers"),
        (lambda c, t: c["student"].update(num_attention_heads=2), ModelError,
         "teacher has 4 attention heads, student 2"),
        (lambda c, t: c.update(loss={"projection": "none"}), ModelError, "projections are needed"),
        (lambda c, t: c["corpus"].update(max_seq_len=512), ModelError, "exceeds the teacher's max_position"),
        (lambda c, t: c["train"].update(group_by_length=True), ConfigError,
         "train.group_by_length: only for task data"),
    ],
    ids=["missing-teacher", "missing-corpus", "mapping-range", "head-mismatch", "width-mismatch", "too-long",
         "group-by-length"],
)
def test_bad_input_fails_before_compute_with_a_clear_message(teacher_dir, corpus_file, tmp_path, change, error,
                                                             message):
    config = general_config(teacher_dir, corpus_file, tmp_path / "out")
    change(config, tmp_path)
    with pytest.raises(error, match=message):
        run_general(from_dict(GeneralConfig, config))
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_empty_corpus_is_reported_with_skip_counts(teacher_dir, tmp_path):
    corpus = tmp_path / "empty.txt"
    corpus.write_bytes(b"\n\n   \n\xff\xfe broken\n")
    config = general_config(teacher_dir, corpus, tmp_path / "out")
    with pytest.raises(DataError, match=r"is empty: no usable text .*'empty': 3, 'invalid_utf8': 1"):
        run_general(from_dict(GeneralConfig, config))


def test_bad_lines_are_skipped_and_counted_not_fatal(teacher_dir, corpus_file, tmp_path):
    corpus = tmp_path / "mixed.txt"
    corpus.write_bytes(b"\xff\xfe not utf-8\n" + ("x" * 200).encode() + b"\n" + corpus_file.read_bytes())
    out = tmp_path / "out"
    config = general_config(teacher_dir, corpus, out, train={"max_steps": 2})
    config["corpus"].update(max_line_chars=100, shuffle_buffer=0)
    run_general(from_dict(GeneralConfig, config))
    skipped = next(r for r in read_log(out) if r.get("event") == "skipped_lines")
    assert skipped["invalid_utf8"] == 1 and skipped["too_long"] == 1


def _cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True, cwd=cwd,
                          check=False,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})


def test_cli_runs_stage_one_and_refuses_to_clobber_a_finished_run(teacher_dir, corpus_file, tmp_path):
    out = tmp_path / "cli_run"
    config_path = tmp_path / "general.yaml"
    config_path.write_text(yaml.safe_dump(general_config(teacher_dir, corpus_file, out, train={"max_steps": 2})))
    first = _cli("general", str(config_path), "train.log_every=1")
    assert first.returncode == 0, first.stderr
    saved = (out / "model.safetensors").read_bytes()

    again = _cli("general", str(config_path))
    assert again.returncode == 2
    assert again.stderr.strip().splitlines()[-1] == (
        f"tinydistill general: error: output_dir: {out} holds a finished run; "
        "pass --overwrite (overwrite: true) or pick another output_dir"
    )
    assert (out / "model.safetensors").read_bytes() == saved  # nothing already written is lost

    assert _cli("general", str(config_path), "--overwrite").returncode == 0


def test_cli_unknown_key_is_one_line_with_exit_code_2(tmp_path, teacher_dir, corpus_file):
    config_path = tmp_path / "general.yaml"
    config_path.write_text(yaml.safe_dump(general_config(teacher_dir, corpus_file, tmp_path / "o")))
    result = _cli("general", str(config_path), "train.bogus=1")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "tinydistill general: error: train.bogus: unknown key (known keys here: adam_betas, adam_eps, batch_size, cpu_retain_memory, "
        "epochs, grad_accum, group_by_length, keep_checkpoints, log_every, lr, max_grad_norm, max_nonfinite_steps, "
        "max_steps, mixed_precision, progress_bar, resume_from, save_every, schedule, seed, teacher_dtype, tensorboard, warmup_ratio, "
        "weight_decay)"
    )


def _student_with_other_vocab(config, tmp):
    from conftest import make_bert

    make_bert(tmp / "other_student", layers=2, hidden=16, heads=4, intermediate=32, vocab_size=40)
    config["student"] = {"init": "checkpoint", "checkpoint": str(tmp / "other_student")}


def _csv_without_text_column(config, tmp):
    (tmp / "corpus.csv").write_text("body\n这家酒店很好\n", encoding="utf-8")
    config["corpus"].update(path=str(tmp / "corpus.csv"))


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (_student_with_other_vocab, ModelError, r"teacher vocabulary has \d+ entries, student 40"),
        (lambda c, t: c["train"].update(resume_from=str(t)), ConfigError, "is not a tinydistill checkpoint"),
        (lambda c, t: (t / "empty_model").mkdir() or c.update(teacher=str(t / "empty_model")), ModelError,
         "has no config.json"),
        (lambda c, t: c.update(student={"init": "teacher_layers", "copy_teacher_layers": [2, 7]}), ModelError,
         r"teacher layer 7 is out of range \(the teacher has 4 layers\)"),
        (_csv_without_text_column, DataError, "has no column 'text'"),
    ],
    ids=["vocab-mismatch", "bad-resume-path", "teacher-without-config", "copied-layer-range", "csv-no-column"],
)
def test_more_bad_inputs_fail_with_a_clear_message(teacher_dir, corpus_file, tmp_path, change, error, message):
    config = general_config(teacher_dir, corpus_file, tmp_path / "out")
    change(config, tmp_path)
    with pytest.raises(error, match=message):
        run_general(from_dict(GeneralConfig, config))


def test_student_checkpoint_init_requires_a_path():
    config = general_config("t", "c.txt", "o")
    config["student"] = {"init": "checkpoint"}
    with pytest.raises(ConfigError, match=r"^student\.checkpoint: required when student\.init is 'checkpoint'"):
        from_dict(GeneralConfig, config)


def test_overwrite_refuses_a_directory_tinydistill_did_not_make(teacher_dir, corpus_file, tmp_path):
    out = tmp_path / "someone_elses"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    config = general_config(teacher_dir, corpus_file, out)
    config["overwrite"] = True
    with pytest.raises(ConfigError, match="not empty and was not made by tinydistill; refusing to delete it"):
        run_general(from_dict(GeneralConfig, config))
    assert (out / "notes.txt").read_text() == "keep me"


def test_fitnets_preset_resolves_to_the_hidden_loss_on_one_guided_pair_through_a_regressor():
    from pipeline.distill.intermediate import intermediate_layer_map
    from pipeline.schema import IntermediateLossConfig, MappingConfig

    loss = from_dict(GeneralConfig, {**general_config("t", "c.txt", "o"), "loss": {"preset": "fitnets"}}).loss
    assert (loss.embedding, loss.hidden, loss.attention, loss.projection) == (0.0, 1.0, 0.0, "linear")
    assert IntermediateLossConfig().projection == "auto" and IntermediateLossConfig().attention == 1.0
    # middle layers, 1-based: student 4 -> 2, teacher 12 -> 6; student 2 -> 1, teacher 4 -> 2; no embeddings
    layer_map = intermediate_layer_map(MappingConfig(), loss, 12, 4)
    assert layer_map.pairs == ((2, 6),) and not layer_map.embeddings
    assert intermediate_layer_map(MappingConfig(), loss, 4, 2).pairs == ((1, 2),)
    assert intermediate_layer_map(MappingConfig(pairs=[(1, 3)]), loss, 4, 2).pairs == ((1, 3),)
    assert IntermediateLossConfig(preset="fitnets", hidden=2.0, embedding=0.0).hidden == 2.0
    with pytest.raises(ConfigError, match="mapping.pairs: loss.preset fitnets guides one layer pair, got 2"):
        intermediate_layer_map(MappingConfig(pairs=[(1, 2), (2, 4)]), loss, 4, 2)
    with pytest.raises(ConfigError, match="mapping.teacher_layers: loss.preset fitnets guides one layer pair"):
        intermediate_layer_map(MappingConfig(teacher_layers=[2, 4]), loss, 4, 2)


@pytest.mark.parametrize("conflict, message", [
    ({"attention": 1.0}, r"loss\.attention: 1\.0 contradicts loss\.preset fitnets \(attention 0\.0\)"),
    ({"embedding": 0.5}, r"loss\.embedding: 0\.5 contradicts loss\.preset fitnets"),
    ({"projection": "none"}, r"loss\.projection: 'none' contradicts loss\.preset fitnets \(projection 'linear'\)"),
    ({"hidden": 0.0}, "every weight is 0"),
])
def test_fitnets_preset_with_conflicting_weights_is_refused(conflict, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(GeneralConfig, {**general_config("t", "c.txt", "o"), "loss": {"preset": "fitnets", **conflict}})


def test_fitnets_stage_one_logs_only_the_hidden_term(teacher_dir, corpus_file, tmp_path):
    out = tmp_path / "fitnets"
    run_general(from_dict(GeneralConfig, general_config(teacher_dir, corpus_file, out, loss={"preset": "fitnets"},
                                                        train={"max_steps": 4})))
    steps = [r for r in read_log(out) if "step" in r and "event" not in r]
    assert steps and all({"hidden", "loss"} <= set(r) and not {"embedding", "attention"} & set(r) for r in steps)
    start = next(r for r in read_log(out) if r.get("event") == "start")
    assert start["mapping (student->teacher)"] == "1->2"
    projections = json.loads((out / "projections.json").read_text())
    assert projections["linear"] is True and projections["student_layers"] == [1]


def test_layers_above_the_guided_one_and_an_unused_embedding_regressor_are_frozen():
    from transformers import BertConfig, BertModel

    from pipeline.distill.intermediate import (
        StudentWithProjections,
        freeze_unreached,
        hidden_projection_layers,
        intermediate_layer_map,
        intermediate_loss_terms,
        scored_layers,
    )
    from pipeline.distill.projections import build_projections
    from pipeline.schema import IntermediateLossConfig, MappingConfig

    torch.manual_seed(0)
    teacher = BertModel(BertConfig(vocab_size=20, hidden_size=16, num_hidden_layers=4, num_attention_heads=2,
                                   intermediate_size=16))
    batch = {"input_ids": torch.tensor([[2, 5, 6, 3]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}

    def frozen_for(loss):
        from pipeline.distill.capture import capture_attention_scores

        layer_map = intermediate_layer_map(MappingConfig(), loss, 4, 4)
        student = BertModel(BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=4, num_attention_heads=2,
                                       intermediate_size=16))
        model = StudentWithProjections(student, build_projections(8, 16, hidden_projection_layers(layer_map, loss),
                                                                  "linear", None))
        teacher_layers, student_layers = scored_layers(layer_map, loss)
        with capture_attention_scores(teacher, teacher_layers) as t_scores, \
                capture_attention_scores(student, student_layers) as s_scores:
            def loss_of(model):
                with torch.no_grad():
                    t_hidden = teacher(**batch, output_hidden_states=True).hidden_states
                projected = model(**batch)
                return intermediate_loss_terms(projected, dict(s_scores), t_hidden, dict(t_scores), layer_map,
                                               loss, batch["attention_mask"])["loss"]
            return freeze_unreached(model, loss_of)

    frozen = frozen_for(IntermediateLossConfig(preset="fitnets"))  # guided pair 2 -> 2
    assert {n.split(".")[3] for n in frozen if ".encoder.layer." in n} == {"2", "3"}  # student layers 3 and 4
    assert {n for n in frozen if n.startswith("projections.")} == {"projections.embedding.weight",
                                                                   "projections.embedding.bias"}
    # TinyBERT's map reaches everything but the pooler (no term reads it).
    assert {n.split(".")[1] for n in frozen_for(IntermediateLossConfig())} == {"pooler"}
    # Attention only: no W_h is built, and the top layer's value, output and FFN weights are frozen.
    frozen = frozen_for(IntermediateLossConfig(embedding=0.0, hidden=0.0))
    top = {n.split(".", 4)[4] for n in frozen if ".encoder.layer.3." in n}
    assert not any(".encoder.layer.2." in n for n in frozen) and "projections.hidden" not in " ".join(frozen)
    assert "attention.self.value.weight" in top and "output.dense.weight" in top
    assert not {"attention.self.query.weight", "attention.self.key.weight"} & top
