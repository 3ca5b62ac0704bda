"""The configuration reference is generated from the config dataclasses, one source of truth: every field of
every stage's config has a description and is in the generated page. And the docs site has every page its
navigation names (CI builds it with `mkdocs build --strict`)."""

from __future__ import annotations

import dataclasses
import sys
import typing
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "docs"))

from config_reference import (
    config_classes,
    every_field,
    field_docs,
    markdown_cell,
    nested_dataclass,
    reference,
)


def all_config_dataclasses() -> list[type]:
    seen, pending = [], [cls for _title, cls in config_classes()]
    while pending:
        cls = pending.pop()
        if cls in seen:
            continue
        seen.append(cls)
        hints = typing.get_type_hints(cls)
        pending += [n for f in dataclasses.fields(cls) if (n := nested_dataclass(hints[f.name])) is not None]
    return seen


def test_every_config_field_has_a_description():
    missing = [f"{cls.__module__}.{cls.__name__}.{field.name}" for cls in all_config_dataclasses()
               for field in dataclasses.fields(cls) if not field_docs(cls).get(field.name)]
    assert not missing, f"{len(missing)} config fields have no description (a comment on the field's line): {missing}"


def test_the_generated_reference_has_every_key_with_its_description():
    page = reference()
    fields = every_field()
    assert len(fields) > 400
    for cls_name, key, doc in fields:
        assert f"| `{key}` |" in page, f"{cls_name}: {key} is not in the reference"
        assert doc and markdown_cell(doc) in page, f"{cls_name}: {key} has no description in the reference"


def test_the_reference_names_every_stage_and_run_step():
    from pipeline.cli import STAGE_COMMANDS
    from pipeline.run import STAGES

    documented = {cls.__name__ for _title, cls in config_classes()}
    for spec in [*STAGE_COMMANDS.values(), *STAGES.values()]:
        assert spec.config_class in documented, f"{spec.config_class} has no section in the reference"


def test_every_page_in_the_navigation_exists():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    pages = [page for entry in config["nav"] for page in entry.values()]
    assert all((ROOT / "docs" / page).is_file() for page in pages), pages
    on_disk = {p.name for p in (ROOT / "docs").glob("*.md")}
    assert on_disk == set(pages), f"pages outside the navigation: {sorted(on_disk - set(pages))}"
