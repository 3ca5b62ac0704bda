"""Every config field is read by the code, or refused where it would mean nothing: never ignored."""

from __future__ import annotations

import dataclasses
import importlib
import re
import typing
from pathlib import Path

import pytest

from pipeline.cli import STAGE_COMMANDS
from pipeline.config import from_dict
from pipeline.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
SOURCES = {path: path.read_text(encoding="utf-8")
           for folder in ("pipeline", "stages", "augment") for path in (REPO / folder).rglob("*.py")}

# Fields the grep below cannot see being read, each with where it is read. Empty today; an entry needs a reason.
READ_INDIRECTLY: dict[str, str] = {}


def config_classes() -> list[type]:
    """Every dataclass reachable from a command's config, nested sections included."""
    found: list[type] = []

    def walk(cls: type) -> None:
        if cls in found:
            return
        found.append(cls)
        for hint in typing.get_type_hints(cls).values():
            for option in (hint, *typing.get_args(hint)):
                for inner in (option, *typing.get_args(option)):
                    if dataclasses.is_dataclass(inner):
                        walk(inner)

    for spec in STAGE_COMMANDS.values():
        walk(getattr(importlib.import_module(spec.module), spec.config_class))
    return found


def reads_of(name: str) -> list[str]:
    """Where a field is read: `x.name` (not `self.name`, which a dataclass's own checks use), or the
    name as a string (getattr over a tuple of names, `.get("name")`)."""
    pattern = re.compile(rf"(?<!self)\.{name}\b|[\"']{name}[\"']")
    return [str(path.relative_to(REPO)) for path, text in SOURCES.items() if pattern.search(text)]


FIELDS = [(cls, field.name) for cls in config_classes() for field in dataclasses.fields(cls)]


def test_the_walk_reaches_every_section():
    names = {cls.__name__ for cls, _ in FIELDS}
    assert {"TrainConfig", "StudentConfig", "CorpusConfig", "IntermediateLossConfig", "TaskConfig",
            "PredictionLossConfig", "AugmentConfig", "RunConfig"} <= names
    assert len(FIELDS) > 150


@pytest.mark.parametrize("cls, name", FIELDS, ids=[f"{cls.__name__}.{name}" for cls, name in FIELDS])
def test_every_config_field_is_read_somewhere(cls, name):
    key = f"{cls.__name__}.{name}"
    assert reads_of(name) or key in READ_INDIRECTLY, f"{key}: no code reads it; use it or refuse it"


@pytest.mark.parametrize("section, change, message", [
    # Sizes of a student loaded from a checkpoint would be ignored: it keeps its own.
    ("general", {"student": {"init": "checkpoint", "checkpoint": "runs/s", "preset": None, "hidden_size": 64}},
     r"student\.hidden_size: a checkpoint student keeps its own sizes"),
    ("general", {"student": {"init": "teacher_layers", "preset": "tinybert6"}},
     r"student\.preset: only used when student\.init is 'config'"),
    # Stages without a teacher have no use for its dtype.
    ("finetune", {"train": {"teacher_dtype": "bfloat16"}}, r"train\.teacher_dtype: this stage has no teacher"),
    ("pretrain", {"train": {"teacher_dtype": "bfloat16"}}, r"train\.teacher_dtype: this stage has no teacher"),
    # A corpus stream is packed: grouping by length means nothing there.
    ("general", {"train": {"group_by_length": True}}, r"train\.group_by_length: only for task data"),
])
def test_settings_a_stage_cannot_use_are_refused(section, change, message):
    base = {
        "general": {"teacher": "t", "corpus": {"path": "c.txt"}, "output_dir": "o"},
        "finetune": {"model": "m", "task": {"type": "classification", "train": "t.jsonl"}, "output_dir": "o"},
        "pretrain": {"tokenizer": "t", "corpus": {"path": "c.txt"}, "output_dir": "o",
                     "model": {"num_hidden_layers": 2, "hidden_size": 16, "intermediate_size": 32,
                               "num_attention_heads": 4, "max_position_embeddings": 64}},
    }[section]
    spec = STAGE_COMMANDS[section]
    with pytest.raises(ConfigError, match=message):
        from_dict(getattr(importlib.import_module(spec.module), spec.config_class), {**base, **change})
