"""Settings that apply where they are given: the launcher's mixed precision and accumulation where the
YAML leaves them unset, the YAML's where it sets them (each step of `task`: tests/test_task.py)."""

from __future__ import annotations

import json
from pathlib import Path

from test_general import general_config

from pipeline.config import from_dict
from stages.general import GeneralConfig, run_general


def start_event(directory: Path) -> dict:
    events = [json.loads(line) for line in (directory / "train_log.jsonl").read_text().splitlines()]
    return next(e for e in events if e.get("event") == "start")


def test_the_launchers_precision_and_accumulation_apply_when_the_yaml_is_silent(teacher_dir, corpus_file,
                                                                                  tmp_path, monkeypatch):
    # `accelerate launch --mixed_precision bf16 --gradient_accumulation_steps 2` sets these variables.
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "2")
    silent = tmp_path / "silent"
    cfg = from_dict(GeneralConfig, general_config(teacher_dir, corpus_file, silent, train={"max_steps": 2}))
    assert cfg.train.mixed_precision is None and cfg.train.grad_accum is None
    run_general(cfg)
    header = start_event(silent)
    assert (header["mixed_precision"], header["grad_accum"], header["effective_batch"]) == ("bf16", 2, 8)

    # A value the YAML sets wins over the launcher's.
    explicit = tmp_path / "explicit"
    run_general(from_dict(GeneralConfig, general_config(teacher_dir, corpus_file, explicit, train={
        "max_steps": 2, "mixed_precision": "no", "grad_accum": 1})))
    header = start_event(explicit)
    assert (header["mixed_precision"], header["grad_accum"], header["effective_batch"]) == ("no", 1, 4)


def test_without_launcher_or_yaml_settings_runs_are_fp32_without_accumulation(teacher_dir, corpus_file, tmp_path,
                                                                             monkeypatch):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    monkeypatch.delenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", raising=False)
    out = tmp_path / "run"
    run_general(from_dict(GeneralConfig, general_config(teacher_dir, corpus_file, out, train={"max_steps": 1})))
    header = start_event(out)
    assert (header["mixed_precision"], header["grad_accum"]) == ("no", 1)
