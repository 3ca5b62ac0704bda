"""Configs: unknown keys and wrong types name their dotted path; overrides; every YAML in configs/ loads."""

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pipeline.config import apply_overrides, from_dict, load_config, to_dict
from pipeline.errors import ConfigError
from pipeline.schema import TrainConfig
from stages.general import GeneralConfig

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
BASE = {"teacher": "bert-base-chinese", "corpus": {"path": "corpus.txt"}, "output_dir": "out"}


def test_unknown_key_is_rejected_with_its_dotted_path():
    with pytest.raises(ConfigError, match=r"^train\.learning_rate: unknown key"):
        from_dict(GeneralConfig, {**BASE, "train": {"learning_rate": 1e-4}})


def test_wrong_type_is_rejected_with_its_dotted_path():
    with pytest.raises(ConfigError, match=r"^train\.batch_size: expected an integer, got str 'big'"):
        from_dict(GeneralConfig, {**BASE, "train": {"batch_size": "big"}})


def test_a_switch_takes_only_true_or_false():
    with pytest.raises(ConfigError, match=r"^train\.cpu_retain_memory: expected true or false, got str 'maybe'$"):
        from_dict(GeneralConfig, {**BASE, "train": {"cpu_retain_memory": "maybe"}})


def test_bad_choice_lists_the_choices():
    with pytest.raises(ConfigError, match=r"^loss\.attention_loss: must be one of 'mse', 'kl'"):
        from_dict(GeneralConfig, {**BASE, "loss": {"attention_loss": "cosine"}})


def test_value_checks_carry_the_section_path():
    with pytest.raises(ConfigError, match=r"^train\.warmup_ratio: must be in \[0, 1\)"):
        from_dict(GeneralConfig, {**BASE, "train": {"warmup_ratio": 1.5}})


def test_missing_required_key_is_named():
    with pytest.raises(ConfigError, match=r"^teacher: required key is missing"):
        from_dict(GeneralConfig, {"corpus": {"path": "x"}, "output_dir": "out"})


def test_dotted_overrides_parse_yaml_values():
    data = apply_overrides(BASE, ["train.lr=3e-5", "train.max_steps=10", "loss.attention=0", "student.preset=null"])
    cfg = from_dict(GeneralConfig, data)
    assert cfg.train.lr == pytest.approx(3e-5)
    assert cfg.train.max_steps == 10
    assert cfg.loss.attention == 0.0
    assert cfg.student.preset is None


def test_override_without_equals_sign_is_rejected():
    with pytest.raises(ConfigError, match="must look like key.sub=value"):
        apply_overrides(BASE, ["train.lr"])


def test_tuples_and_optional_values_round_trip():
    cfg = from_dict(TrainConfig, {"adam_betas": [0.9, 0.98], "max_grad_norm": None})
    assert cfg.adam_betas == (0.9, 0.98) and cfg.max_grad_norm is None
    assert from_dict(TrainConfig, to_dict(cfg)) == cfg


def test_missing_config_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(GeneralConfig, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(GeneralConfig, bad)


@dataclass(frozen=True)
class _Inner:
    size: int = 1


@dataclass(frozen=True)
class _Outer:
    inner: _Inner = field(default_factory=_Inner)
    names: list[str] = field(default_factory=list)


def test_list_items_are_checked_by_index():
    with pytest.raises(ConfigError, match=r"^names\[1\]: expected a string"):
        from_dict(_Outer, {"names": ["a", 2]})


def _config_classes():
    import importlib

    from pipeline.cli import STAGE_COMMANDS

    return {name: getattr(importlib.import_module(spec.module), spec.config_class)
            for name, spec in STAGE_COMMANDS.items()}


@pytest.mark.parametrize("path", sorted(CONFIGS.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_shipped_yaml_validates(path):
    """Each YAML under configs/ names its command in its first comment line or its file name."""
    if "accelerate" in path.parts or "slurm" in path.parts:
        import yaml

        assert isinstance(yaml.safe_load(path.read_text()), dict)
        return
    classes = _config_classes()
    command = next((c for c in ("general", "pretrain", "augment", "finetune", "task", "evaluate", "bilstm") if path.stem.startswith(c)),
                   "run")
    assert command in classes, f"no config class for {path.name}"
    load_config(classes[command], path)
