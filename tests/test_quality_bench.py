"""bench/quality.py builds a valid stage config for every row of every budget (the gpu one is not run here)."""

from __future__ import annotations

import importlib
import re

import pytest

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
    layout = quality.Layout(str(tmp_path))
    monkeypatch.setattr(quality, "random_student", lambda layout, budget, kind, seed: f"/refs/random{seed}")
    configs = [{"run_dir": str(layout.shared), **quality.shared_config(budget)}]
    configs += [quality.general_config(layout, budget, objective) for objective in ("tinybert", "distilbert", "minilmv2")]
    for kind in ("sentiment", "ner", "qa"):
        configs += [quality.teacher_config(layout, budget, kind, k) for k in range(budget["ensemble_k"])]
        configs.append(quality.transfer_config(layout, budget, kind))
        for row in quality.selected_rows(quality.ALL_ROWS):
            if row == "teacher" or (row == "bilstm" and kind != "sentiment"):
                continue
            config = quality.row_config(layout, budget, kind, row, quality.FIRST_SEED)
            config["evaluate"] = quality.evaluate_section(layout, budget, kind, row)
            configs.append(config)
    built = [stage for config in configs for stage in stage_configs(config)]
    plateau = [cfg for name, cfg in built if name == "finetune" and cfg.early_stopping.patience]
    direct = [cfg for cfg in plateau if cfg.model.startswith("/refs/random")]
    assert len(plateau) - len(direct) == 3 * budget["ensemble_k"]  # every teacher, of every task
    # the direct student trains to its own dev plateau, under the teacher's cap, on every task
    assert [cfg.train.epochs for cfg in direct] == [budget["teacher_epochs"][kind] for kind in ("sentiment", "ner", "qa")]
    ensembles = [cfg for name, cfg in built if name == "evaluate" and cfg.ensemble]
    assert [len(cfg.ensemble) for cfg in ensembles] == [budget["ensemble_k"]] * 3
    qa_tasks = {cfg.task.type for name, cfg in built if name in ("finetune", "task", "evaluate")}
    assert "qa" in qa_tasks


def test_the_dev_selected_row_and_the_ensemble_need_row_4a():
    assert quality.selected_rows(["two_stage_hard"]) == ["teacher", "direct", "two_stage", "two_stage_hard"]
    assert quality.selected_rows(["ensemble"]) == ["teacher", "direct", "two_stage", "ensemble"]
