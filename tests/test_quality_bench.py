"""bench/quality.py builds a valid stage config for every row of every budget (the gpu one is not run here)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoTokenizer

from bench import quality
from pipeline.config import from_dict
from pipeline.run import STAGES, RunConfig


def with_references_filled(value):
    """`${stage}` in every string replaced by a stand-in path, as the run would by the stage's output."""
    if isinstance(value, dict):
        return {key: with_references_filled(item) for key, item in value.items()}
    if isinstance(value, list):
        return [with_references_filled(item) for item in value]
    return re.sub(r"\$\{([a-z_]+)\}", r"/refs/\1", value) if isinstance(value, str) else value


def stage_configs(run_config: dict) -> list[tuple[str, object]]:
    """Each stage section of a `tinydistill run` config, references replaced, built into its config class."""
    from_dict(RunConfig, run_config)
    built = []
    for name, spec in STAGES.items():
        section = run_config.get(name)
        if not section or "use" in section:
            continue
        resolved = with_references_filled(section)
        config_class = getattr(importlib.import_module(spec.module), spec.config_class)
        built.append((name, from_dict(config_class, {**resolved, "output_dir": "/refs/out"})))
    return built


@pytest.mark.parametrize("budget_name", sorted(quality.BUDGETS))
def test_every_row_of_every_budget_is_a_valid_run(budget_name, monkeypatch, tmp_path):
    budget = quality.BUDGETS[budget_name]
    layout = quality.Layout(str(tmp_path), budget)
    monkeypatch.setattr(quality, "random_student", lambda layout, budget, kind, seed: f"/refs/random{seed}")
    monkeypatch.setattr(quality, "teacher_init_student", lambda layout: "/refs/teacher_init")
    configs = [{"run_dir": str(layout.shared), **quality.shared_config(budget)}]
    objectives = ["tinybert", "tinybert_teacher_init", "minilmv2"] + ([] if layout.real else ["distilbert"])
    configs += [quality.general_config(layout, budget, objective) for objective in objectives]
    rows = [row for row in quality.selected_rows(quality.ALL_ROWS) if not (layout.real and row == "distilbert")]
    for kind in ("sentiment", "ner", "qa"):
        configs += [quality.teacher_config(layout, budget, kind, k) for k in range(budget["ensemble_k"])]
        configs.append(quality.transfer_config(layout, budget, kind))
        for row in rows:
            if row == "teacher" or (row == "bilstm" and kind != "sentiment"):
                continue
            config = quality.row_config(layout, budget, kind, row, quality.FIRST_SEED)
            config["evaluate"] = quality.evaluate_section(layout, budget, kind, row)
            configs.append(config)
    built = [stage for config in configs for stage in stage_configs(config)]
    plateau = [cfg for name, cfg in built if name == "finetune" and cfg.early_stopping.patience]
    direct = [cfg for cfg in plateau if cfg.model.startswith("/refs/random")]
    teacher_init = [cfg for cfg in plateau if cfg.model == "/refs/teacher_init"]
    teachers = [cfg for cfg in plateau if cfg not in direct and cfg not in teacher_init]
    assert len(teachers) == 3 * budget["ensemble_k"]  # every teacher, of every task
    # both direct students train to their own dev plateau, under the teacher's cap, on every task
    caps = [budget["teacher_epochs"][kind] for kind in ("sentiment", "ner", "qa")]
    assert [cfg.train.epochs for cfg in direct] == [cfg.train.epochs for cfg in teacher_init] == caps
    # the teacher-layer student trains directly at its task's teacher rate; patience is the task's too
    rates = [quality.for_task(budget, "teacher_lr", kind, 3e-4) for kind in ("sentiment", "ner", "qa")]
    assert [cfg.train.lr for cfg in teacher_init] == rates
    assert [cfg.train.lr for cfg in teachers] == [rate for rate in rates for _ in range(budget["ensemble_k"])]
    patience = [quality.for_task(budget, "patience", kind) for kind in ("sentiment", "ner", "qa")]
    assert [cfg.early_stopping.patience for cfg in direct] == [cfg.early_stopping.patience for cfg in teacher_init] == patience
    # NER and QA direct students count patience from epoch 4: their F1 starts on a floor (0.0 ties 0.0)
    starts = [quality.for_task(budget, "start_epoch", kind, 0) for kind in ("sentiment", "ner", "qa")]
    assert [cfg.early_stopping.start_epoch for cfg in direct] == [cfg.early_stopping.start_epoch for cfg in teacher_init] == starts
    if budget_name in ("real", "gpu"):
        assert starts == [0, 4, 4]
    assert {cfg.train.lr for cfg in direct} == {budget.get("direct_lr", 1e-3)}  # the random student's own rate
    assert {cfg.model for cfg in teachers if cfg.train.seed == quality.FIRST_SEED} == {str(layout.shared / layout.base)}
    ensembles = [cfg for name, cfg in built if name == "evaluate" and cfg.ensemble]
    assert [len(cfg.ensemble) for cfg in ensembles] == [budget["ensemble_k"]] * 3
    qa_tasks = {cfg.task.type for name, cfg in built if name in ("finetune", "task", "evaluate")}
    assert "qa" in qa_tasks
    stage_one = [cfg for name, cfg in built if name == "general"]
    assert any(cfg.student.init == "teacher_layers" and cfg.student.copy_teacher_layers == [3, 6, 9, 12]
               for cfg in stage_one)
    # the pretrained teacher-layer student trains at its own rate in stage one and both task steps
    init_lr = budget.get("teacher_init_lr", 1e-3)
    assert [cfg.train.lr for cfg in stage_one if cfg.student.copy_teacher_layers] == [init_lr]
    from_teacher_layers = [cfg for config in configs if "/two_stage_teacher_init/" in config["run_dir"] + "/"
                           for name, cfg in stage_configs(config) if name == "task"]
    assert len(from_teacher_layers) == 3
    assert {(cfg.intermediate.train.lr, cfg.prediction.train.lr) for cfg in from_teacher_layers} == {(init_lr, init_lr)}
    # every distilled row's prediction step runs its task's student epochs (NER and QA take more in `real`)
    for kind in ("sentiment", "ner", "qa"):
        steps = [cfg for config in configs if f"/{kind}/" in config["run_dir"] + "/"
                 for name, cfg in stage_configs(config) if name == "task"]
        assert steps and {cfg.prediction.train.epochs for cfg in steps} == {quality.for_task(budget, "student_epochs", kind)}
    if budget_name == "real":  # chosen on NER dev (4b, seed 42: 2 epochs 0.520, 4 0.590, 6 0.629); sentiment keeps 2
        assert [quality.for_task(budget, "student_epochs", kind) for kind in ("sentiment", "ner", "qa")] == [2, 6, 6]
    if layout.real:  # the packaged teacher, imported and pruned to the corpus and the train reviews
        # per-head attention losses need the teacher's head count (stage one refuses other students)
        assert budget["student"]["num_attention_heads"] == quality.E5_SMALL[3]
        shared = dict(stage_configs(configs[0]))
        assert shared["teacher"].name == "e5-small" and shared["prune"].model == "/refs/teacher"
        assert [Path(p).name for p in shared["prune"].texts] == ["peoples_daily.txt", "train.jsonl"]


def test_the_teacher_layer_student_copies_teacher_layers_3_6_9_12(tmp_path):
    from conftest import CHINESE_SENTENCES, make_bert, save_tokenizer
    from safetensors.torch import load_file

    layout = quality.Layout(str(tmp_path), quality.BUDGETS["reference"])
    tokenizer = save_tokenizer(layout.shared / "vocab", CHINESE_SENTENCES)
    make_bert(layout.shared / "pretrain", layers=12, hidden=32, heads=4, vocab_size=len(tokenizer))
    student = Path(quality.teacher_init_student(layout))
    teacher, copied = load_file(layout.shared / "pretrain" / "model.safetensors"), load_file(student / "model.safetensors")
    assert AutoConfig.from_pretrained(student).num_hidden_layers == 4
    for index, layer in enumerate(quality.TEACHER_LAYERS):
        names = [n for n in teacher if n.startswith((f"bert.encoder.layer.{layer - 1}.", f"encoder.layer.{layer - 1}."))]
        assert names
        for name in names:
            own = name.replace(f"layer.{layer - 1}.", f"layer.{index}.").removeprefix("bert.")
            assert torch.equal(copied[own], teacher[name]), (own, name)
    embeddings = [n for n in teacher if "embeddings" in n]
    assert embeddings and all(torch.equal(copied[n.removeprefix("bert.")], teacher[n]) for n in embeddings)
    assert AutoTokenizer.from_pretrained(student).get_vocab() == tokenizer.get_vocab()


def test_the_dev_selected_row_and_the_ensemble_need_row_4a():
    assert quality.selected_rows(["two_stage_hard"]) == ["teacher", "direct", "two_stage", "two_stage_hard"]
    assert quality.selected_rows(["ensemble"]) == ["teacher", "direct", "two_stage", "ensemble"]


@pytest.mark.parametrize(("error", "code", "line"), [
    ("preempted", 75, "bench/quality.py: stopped: stop signal: checkpoint saved at step 5; run the same command to resume"),
    ("config", 2, "bench/quality.py: error: teacher.name: unknown"),
])
def test_a_stopped_or_refused_bench_says_so_in_one_line(error, code, line, monkeypatch, tmp_path, capsys):
    """A preempted bench exits 75 (EX_TEMPFAIL, what a requeue script tests for) like the CLI, not with a traceback."""
    import pipeline.run
    from pipeline.errors import ConfigError
    from pipeline.training.guards import Preempted

    def stop(config):
        raise Preempted(line.split("stopped: ")[1]) if error == "preempted" else ConfigError("teacher.name: unknown")

    monkeypatch.setattr(pipeline.run, "run_pipeline", stop)
    assert quality.main(["--budget", "smoke", "--run-dir", str(tmp_path)]) == code
    assert capsys.readouterr().err.strip() == line


def every_run(layout, budget) -> dict[str, dict]:
    """Every run of a budget by name (`general/<objective>`, `<task>/<row>` at the first seed, evaluation included)."""
    runs = {"shared": {"run_dir": str(layout.shared), **quality.shared_config(budget)}}
    for objective in ["tinybert", "tinybert_teacher_init", "minilmv2"] + ([] if layout.real else ["distilbert"]):
        runs[f"general/{objective}"] = quality.general_config(layout, budget, objective)
    rows = [row for row in quality.selected_rows(quality.ALL_ROWS) if not (layout.real and row == "distilbert")]
    for kind in ("sentiment", "ner", "qa"):
        for k in range(budget["ensemble_k"]):
            runs[f"{kind}/teacher{k}"] = quality.teacher_config(layout, budget, kind, k)
        runs[f"{kind}/transfer"] = quality.transfer_config(layout, budget, kind)
        for row in rows:
            if row != "teacher" and not (row == "bilstm" and kind != "sentiment"):
                runs[f"{kind}/{row}"] = quality.row_config(layout, budget, kind, row, quality.FIRST_SEED)
                runs[f"{kind}/{row}"]["evaluate"] = quality.evaluate_section(layout, budget, kind, row)
    return runs


TRIAL_VALUES = {int: 7, float: 0.25}  # a value no budget uses


@pytest.mark.parametrize("budget_name", ["real", "reference"])
@pytest.mark.parametrize("setting", sorted(quality.TRIAL_SETTINGS))
def test_a_trial_reruns_exactly_the_runs_its_setting_changes(setting, budget_name, monkeypatch, tmp_path):
    """A run a trial leaves untagged is reused from the budget's run, so its config must be the same; a run it tags
    must really change (else it re-runs for nothing)."""
    monkeypatch.setattr(quality, "random_student", lambda layout, budget, kind, seed: f"/refs/random{seed}")
    monkeypatch.setattr(quality, "teacher_init_student", lambda layout: "/refs/teacher_init")
    budget = quality.BUDGETS[budget_name]
    trial = {setting: TRIAL_VALUES[quality.TRIAL_SETTINGS[setting]]}
    before = every_run(quality.Layout(str(tmp_path), budget), budget)
    after = every_run(quality.Layout(str(tmp_path), {**budget, **trial}, trial), {**budget, **trial})
    tagged = set()
    for name, config in after.items():
        if config["run_dir"] == before[name]["run_dir"]:
            assert config == before[name], name
        else:
            tagged.add(name)
            assert Path(config["run_dir"]).relative_to(tmp_path).parts[1].endswith(f"@{setting}={trial[setting]:g}")
            assert {**config, "run_dir": None} != {**before[name], "run_dir": None}, name
            stage_configs(config)  # still a valid run
    assert tagged  # every setting changes some run
    assert not {name for name in tagged if name.endswith(("/direct", "/direct_teacher_init", "shared")) or "/teacher" in name}


def test_a_trial_runs_the_rows_asked_for_at_the_seeds_asked_for(monkeypatch, tmp_path, capsys):
    import pipeline.run

    ran = []
    monkeypatch.setattr(pipeline.run, "run_pipeline", lambda config: ran.append(config.run_dir))
    monkeypatch.setattr(quality, "random_student", lambda layout, budget, kind, seed: f"/refs/random{seed}")
    monkeypatch.setattr(quality, "task_result", lambda layout, budget, kind, rows, seeds: (kind, rows, seeds))
    monkeypatch.setattr(quality, "format_table", lambda results: f"table of {results}")
    assert quality.main(["--budget", "smoke", "--run-dir", str(tmp_path), "--tasks", "ner", "--only", "two_stage_hard",
                         "--seeds", "43", "--set", "temperature=2", "general_steps=40"]) == 0
    trial = "@general_steps=40,temperature=2"
    assert [str(Path(d).relative_to(tmp_path)) for d in ran] == [
        "shared", "general/tinybert@general_steps=40", "ner/teacher", "ner/transfer",
        "ner/direct/seed43", f"ner/two_stage{trial}/seed43", f"ner/two_stage_hard{trial}/seed43"]
    out = capsys.readouterr().out
    assert "trial: temperature=2, general_steps=40" in out
    assert "table of [('ner', ['teacher', 'direct', 'two_stage', 'two_stage_hard'], [43])]" in out


@pytest.mark.parametrize(("item", "message"), [
    ("lr=1e-4", "--set lr=1e-4: expected KEY=VALUE with KEY one of general_steps, variants"),
    ("general_steps", "--set general_steps: expected KEY=VALUE"),
    ("general_steps=1.5", "--set general_steps=1.5: general_steps takes an integer"),
    ("temperature=hot", "--set temperature=hot: temperature takes a number"),
    ("temperature=0", "--set temperature=0: temperature must be > 0"),
    ("hard_weight=-1", "--set hard_weight=-1: hard_weight must be >= 0"),
])
def test_a_bad_trial_setting_is_refused_in_one_line_before_any_run(item, message, monkeypatch, tmp_path, capsys):
    import pipeline.run

    monkeypatch.setattr(pipeline.run, "run_pipeline", lambda config: pytest.fail("ran"))
    with pytest.raises(SystemExit) as exit_:
        quality.main(["--budget", "smoke", "--run-dir", str(tmp_path), "--set", item])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize("budget_name", ["real", "reference"])
def test_the_gold_label_row_is_labelled_with_the_weight_it_ran_with(budget_name):
    """Row 4b's label names its gold-label weight: a trial's `--set hard_weight=1` table must not say 0.5."""
    budget = quality.BUDGETS[budget_name]
    assert quality.row_label("two_stage_hard", budget) == f"4b. two-stage, gold CE {quality.HARD_WEIGHT:g}"
    assert quality.row_label("two_stage_hard", {**budget, "hard_weight": 1.0}) == "4b. two-stage, gold CE 1"
    assert quality.row_label("direct", {**budget, "hard_weight": 1.0}) == quality.LABELS["direct"]
