"""The house, as the code's own imports draw it: `pipeline/` by concern, imports one way, no cycles."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pipeline", "stages", "augment")
# The modules that stay directly under pipeline/: the entry points and the config schema they all share.
TOP_LEVEL = {"cli", "run", "config", "schema", "errors"}
# The layers of pipeline/, lowest first: a module may import its own subpackage, and lower layers only.
LAYERS = [
    {"pipeline", "pipeline.errors"},
    {"pipeline.config"},
    {"pipeline.schema"},
    {"pipeline.models"},
    {"pipeline.data"},
    {"pipeline.tasks"},
    {"pipeline.distill", "pipeline.training"},
    {"pipeline.shipping"},
    {"augment"},
    {"stages"},
    {"pipeline.cli", "pipeline.run"},
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}


def resolve(name: str) -> str | None:
    """The project module that `name` (a module or a name inside one) lives in."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def imports(module: str) -> set[str]:
    """Every project module `module` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(filter(None, (resolve(alias.name) for alias in node.names)))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                target = resolve(f"{node.module}.{alias.name}") or resolve(node.module)
                if target:
                    found.add(target)
    found.discard(module)
    return found


GRAPH = {module: imports(module) for module in MODULES}


def layer_of(module: str) -> int:
    parts = module.split(".")
    group = parts[0] if parts[0] != "pipeline" else ".".join(parts[:2])
    return next(i for i, members in enumerate(LAYERS) if group in members)


def group_of(module: str) -> str:
    parts = module.split(".")
    return parts[0] if parts[0] != "pipeline" else ".".join(parts[:2])


def test_pipeline_holds_only_subpackages_and_its_entry_points():
    loose = sorted(p.stem for p in (ROOT / "pipeline").glob("*.py") if p.stem != "__init__")
    assert set(loose) == TOP_LEVEL, f"modules outside a subpackage: {sorted(set(loose) - TOP_LEVEL)}"
    for package in sorted(p for p in (ROOT / "pipeline").iterdir() if (p / "__init__.py").is_file()):
        docstring = ast.get_docstring(ast.parse((package / "__init__.py").read_text(encoding="utf-8")))
        assert docstring and len(docstring.splitlines()) <= 3, f"{package.name}/__init__.py: say what lives there"


def test_every_module_belongs_to_a_layer():
    unplaced = [m for m in MODULES if not any(group_of(m) in members for members in LAYERS)]
    assert not unplaced, f"modules in no layer: {unplaced}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_down_the_layers_only(module):
    upward = [target for target in GRAPH[module]
              if group_of(target) != group_of(module) and layer_of(target) >= layer_of(module)]
    assert not upward, f"{module} imports {upward}: a layer may only import lower layers"


def test_no_stage_imports_another():
    for module in (m for m in MODULES if m.startswith("stages.")):
        others = [t for t in GRAPH[module] if t.startswith("stages.")]
        assert not others, f"{module} imports {others}: stages hand off by output folder only"


def test_there_is_no_import_cycle():
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(GRAPH[module]):
            if state.get(target) == 1:
                cycle = path[path.index(target):] + [target]
                pytest.fail(f"import cycle: {' -> '.join(cycle)}")
            if target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(MODULES):
        if module not in state:
            visit(module, [module])
