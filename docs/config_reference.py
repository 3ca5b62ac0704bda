"""The configuration reference, generated from the config dataclasses: every key of every stage, its type, its
default and its meaning. One source of truth: a field's meaning is the comment on its line (or the comment
lines just above it) in the dataclass, and `tests/test_docs.py` fails when a field has none.

    python docs/config_reference.py > /tmp/configuration.md     # what the docs build puts in configuration.md
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import io
import sys
import textwrap
import tokenize
import types
import typing
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# (page section, module, class): each stage's config, and the run's own steps.
CONFIGS = [
    ("`tinydistill run`: the pipeline file", "pipeline.run", "RunConfig"),
    ("`run` step `data`", "pipeline.run", "DataStep"),
    ("`run` step `vocab`", "pipeline.run", "VocabStep"),
    ("`run` step `vectors`", "pipeline.run", "VectorsStep"),
    ("`run` step `teacher`", "pipeline.run", "TeacherStep"),
    ("`run` step `prune`", "pipeline.run", "PruneStep"),
    ("`tinydistill pretrain`", "stages.pretrain", "PretrainConfig"),
    ("`tinydistill general`: stage one", "stages.general", "GeneralConfig"),
    ("`tinydistill augment`", "augment.config", "AugmentConfig"),
    ("`tinydistill finetune`", "stages.finetune", "FinetuneConfig"),
    ("`tinydistill task`: stage two", "stages.task", "TaskDistillConfig"),
    ("`tinydistill bilstm`", "stages.bilstm", "BiLSTMConfig"),
    ("`tinydistill export`", "stages.export", "ExportConfig"),
    ("`tinydistill evaluate`", "stages.evaluate", "EvaluateConfig"),
]


def config_classes() -> list[tuple[str, type]]:
    return [(title, getattr(importlib.import_module(module), name)) for title, module, name in CONFIGS]


def field_docs(cls: type) -> dict[str, str]:
    """{field: its description}: the comment on the field's line(s), else the comment lines just above it."""
    source = textwrap.dedent(inspect.getsource(cls))
    comments: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
    lines = source.splitlines()
    docs = {}
    for node in ast.parse(source).body[0].body:
        if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
            continue
        own = [comments[n] for n in range(node.lineno, node.end_lineno + 1) if n in comments]
        above, n = [], node.lineno - 1
        while n >= 1 and lines[n - 1].strip().startswith("#"):
            above.insert(0, comments[n])
            n -= 1
        docs[node.target.id] = " ".join(own or above).strip()
    return docs


def type_name(annotation) -> str:
    if isinstance(annotation, str):
        return annotation
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " \\| ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(type_name(a) for a in typing.get_args(annotation))
    if origin is not None:
        args = ", ".join(type_name(a) for a in typing.get_args(annotation))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def default_of(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        if inspect.isclass(field.default_factory) and dataclasses.is_dataclass(field.default_factory):
            return "(section)"
        value = field.default_factory()
    else:
        return "**required**"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return f"`{value!r}`" if not isinstance(value, str) else (f"`{value}`" if value else '`""`')


def nested_dataclass(annotation) -> type | None:
    candidates = [annotation, *typing.get_args(annotation)]
    return next((c for c in candidates if inspect.isclass(c) and dataclasses.is_dataclass(c)), None)


def rows(cls: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(dotted key, type, default, meaning) for every field of `cls` and of the sections inside it."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    found = []
    for field in dataclasses.fields(cls):
        key = f"{prefix}{field.name}"
        section = nested_dataclass(hints[field.name])
        kind = f"section ({section.__name__})" if section else type_name(hints[field.name])
        found.append((key, kind, default_of(field), docs.get(field.name, "")))
        if section is not None:
            found += rows(section, f"{key}.")
    return found


def markdown_cell(text: str) -> str:
    """Text that stays in its table cell and shows as written (pipes escaped, no HTML tags)."""
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def every_field() -> list[tuple[str, str, str]]:
    """(config class, dotted key, meaning) of every field reachable from `CONFIGS`, for the docs test."""
    return [(cls.__name__, key, doc) for _title, cls in config_classes() for key, _kind, _default, doc in rows(cls)]


def reference() -> str:
    out = ["# Configuration reference", "",
           ("Generated from the config dataclasses when the docs are built (`docs/config_reference.py`): every key "
           "of every stage, its type, its default and its meaning. A YAML file maps onto these one to one; "
           "`key.sub=value` on the command line overrides a key; an unknown key, a wrong type or an impossible "
           "value is refused at start-up with its dotted path."), ""]
    for title, cls in config_classes():
        doc = inspect.getdoc(cls) or ""
        summary = "" if doc.startswith(f"{cls.__name__}(") else doc.split("\n\n")[0].replace("\n", " ")
        out += [f"## {title}", "", f"`{cls.__module__}.{cls.__name__}`. {summary}", "",
                "| key | type | default | meaning |", "|---|---|---|---|"]
        for key, kind, default, doc in rows(cls):
            out.append(f"| `{key}` | {kind} | {default} | {markdown_cell(doc)} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(reference())
