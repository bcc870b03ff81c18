"""The package's layers, read from the source: every import (lazy ones inside functions too) points
down or sideways, never up, and no chain of imports comes back to where it started.

    core  <  views  <  api  <  app, notebook, cli
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "plw_lab"

#: What each layer may import from the package (itself included).
ALLOWED = {
    "core": {"core"},
    "views": {"core", "views"},
    "api": {"core", "api"},
    "app": {"core", "views", "api", "app"},
    "notebook": {"core", "views", "api", "notebook"},
    # `lab app` starts the app: the one front door that launches another (the app never imports the CLI)
    "cli": {"core", "views", "api", "cli", "app"},
}
#: UI toolkits only the front doors may load: core and views stay importable on a bare server.
UI_TOOLKITS = {"gradio": {"app"}, "ipywidgets": {"notebook"}, "anywidget": {"notebook"}, "IPython": {"notebook"}}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:  # plw_lab/__init__.py re-exports the api lazily
        return "api"
    return {"__main__": "cli"}.get(parts[1], parts[1])


def imports(path: Path) -> set[str]:
    """Every module `path` imports, lazily or not, by its absolute name."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path.name}: relative import (ruff's TID252 should have caught it)"
            found.add(node.module)
            # `from plw_lab.core import training` imports the module plw_lab.core.training
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
GRAPH = {name: {m for m in imports(path) if m in MODULES and m != name} for name, path in MODULES.items()}


def test_the_layers_exist_as_folders():
    assert {layer(m) for m in MODULES} >= {"core", "views", "api", "app", "notebook", "cli"}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down_the_layers(module):
    upward = sorted(m for m in GRAPH[module] if layer(m) not in ALLOWED[layer(module)])
    assert not upward, f"{module} ({layer(module)}) imports {upward}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_ui_toolkits_stay_in_their_front_door(module):
    toolkits = {m.split(".")[0] for m in imports(MODULES[module])} & UI_TOOLKITS.keys()
    wrong = sorted(t for t in toolkits if layer(module) not in UI_TOOLKITS[t])
    assert not wrong, f"{module} imports {wrong}"


def test_no_import_cycle():
    state: dict[str, str] = {}

    def visit(module: str, trail: list[str]) -> None:
        state[module] = "open"
        for target in sorted(GRAPH[module]):
            if state.get(target) == "open":
                cycle = trail[trail.index(target) :] + [target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, [*trail, target])
        state[module] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])


def test_the_checker_catches_an_upward_import(tmp_path):
    """The layer test is only worth having if it fails on a real violation."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from plw_lab.app.main import build_app\n")
    assert "plw_lab.app.main" in imports(bad)
    assert layer("plw_lab.app.main") not in ALLOWED["core"]
