"""The command line: overrides and flags in any order, `--resume` that never swallows an override,
`--version`, and stage help that points to the config reference."""

from __future__ import annotations

import importlib

import pytest

import pipeline.config
from pipeline.cli import STAGE_COMMANDS, main


def flags_of(name: str) -> list[list[str]]:
    """Each flag of a stage command, as the separate words a user types."""
    spec = STAGE_COMMANDS[name]
    flags = [["--overwrite"]]
    if spec.resume_key:
        flags.append(["--resume"])
    if spec.shardable:
        flags.append(["--shard", "0/8"])
    return flags


def expected_from_flags(name: str) -> set[str]:
    spec = STAGE_COMMANDS[name]
    expected = {"overwrite=true"}
    if spec.resume_key:
        expected.add(f"{spec.resume_key}=auto")
    if spec.shardable:
        expected.add("shard=0/8")
    return expected


@pytest.fixture
def captured(monkeypatch):
    """Run `main` without running a stage: record the overrides the stage would have been given."""
    seen = {}

    def fake_load_config(cls, path, overrides=None):
        seen["config_class"], seen["path"], seen["overrides"] = cls.__name__, str(path), list(overrides or [])
        return "config"

    monkeypatch.setattr(pipeline.config, "load_config", fake_load_config)
    for spec in STAGE_COMMANDS.values():
        monkeypatch.setattr(importlib.import_module(spec.module), spec.function, lambda config: None)
    return seen


@pytest.mark.parametrize("name", sorted(STAGE_COMMANDS))
@pytest.mark.parametrize("placement", ["flags_first", "flags_last", "flags_between"])
def test_overrides_and_flags_combine_in_any_order(name, placement, captured):
    flags = [word for flag in flags_of(name) for word in flag]
    overrides = ["output_dir=runs/x", "train.lr=1"]
    argv = {
        "flags_first": [name, "cfg.yaml", *flags, *overrides],
        "flags_last": [name, "cfg.yaml", *overrides, *flags],
        "flags_between": [name, "cfg.yaml", overrides[0], *flags, overrides[1]],
    }[placement]
    assert main(argv) == 0
    assert captured["path"] == "cfg.yaml"
    assert captured["overrides"][:2] == overrides
    assert set(captured["overrides"][2:]) == expected_from_flags(name)


def test_readmes_sharding_example_parses(captured):
    assert main(["augment", "cfg.yaml", "--shard", "0/8", "output_dir=X"]) == 0
    assert captured["overrides"] == ["output_dir=X", "shard=0/8"]


@pytest.mark.parametrize("argv, resume", [
    (["task", "cfg.yaml", "--resume", "train.lr=1"], "auto"),
    (["task", "cfg.yaml", "--resume=runs/t/checkpoints/step_000010", "train.lr=1"], "runs/t/checkpoints/step_000010"),
    (["task", "cfg.yaml", "--resume", "runs/t/checkpoints/step_000010"], "runs/t/checkpoints/step_000010"),
    (["general", "cfg.yaml", "--resume", "--overwrite", "train.lr=1"], "auto"),
])
def test_resume_never_takes_an_override_for_a_checkpoint(argv, resume, captured):
    assert main(argv) == 0
    key = STAGE_COMMANDS[argv[0]].resume_key
    assert f"{key}={resume}" in captured["overrides"]
    if "train.lr=1" in argv:
        assert "train.lr=1" in captured["overrides"]


def test_an_unknown_flag_is_still_refused(captured, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["general", "cfg.yaml", "--bogus", "train.lr=1"])
    assert exit_info.value.code == 2 and "--bogus" in capsys.readouterr().err


def test_version_flag_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("tinydistill ")


@pytest.mark.parametrize("name", sorted(STAGE_COMMANDS))
def test_stage_help_points_to_its_config_reference(name, capsys):
    spec = STAGE_COMMANDS[name]
    with pytest.raises(SystemExit):
        main([name, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"{spec.module}.{spec.config_class}" in text and "key.sub=value" in text and "configs/" in text
