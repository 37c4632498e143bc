"""The code's shape, checked from its imports (every import, module level or inside a function):
file formats are the bottom layer, the model never imports a stage, stages never import each other
or a flow, no two modules share a name across layers, and module-level imports form no cycle."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ("formats", "model", "tasks", "flows")
ALLOWED = {"formats": {"formats"}, "model": {"formats", "model"}, "tasks": {"formats", "model", "tasks"},
           "flows": {"formats", "model", "tasks", "flows"}}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for layer in LAYERS for p in sorted((ROOT / layer).rglob("*.py"))}


def imports(path: Path, top_level_only: bool = False) -> set[str]:
    """First-party modules `path` imports (a `from package import module` names the module)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    known = modules()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module for a in node.names}
    return {m for m in found if m.split(".")[0] in LAYERS}


def stage_modules() -> set[str]:
    """Modules that define a stage's task (`<name>_task = stage_task(<name>, ...)`)."""
    return {name for name, path in modules().items() if re.search(r"^\w+_task = stage_task\(", path.read_text(), re.M)}


@pytest.mark.parametrize("layer", LAYERS)
def test_each_layer_imports_only_the_layers_below_it(layer):
    wrong = {(name, imported) for name, path in modules().items() if name.split(".")[0] == layer
             for imported in imports(path) if imported.split(".")[0] not in ALLOWED[layer]}
    assert not wrong, sorted(wrong)


def test_stages_import_no_other_stage():
    stages = stage_modules()
    assert {"tasks.crawl", "tasks.extract", "tasks.tokenize", "tasks.pretrain", "tasks.finetune", "tasks.evaluate"} <= stages
    wrong = {(s, other) for s in stages for other in imports(modules()[s]) if other in stages - {s}}
    assert not wrong, sorted(wrong)


def test_no_two_modules_share_a_name_across_layers():
    seen: dict[str, list[str]] = {}
    for name, path in modules().items():
        if path.name != "__init__.py":
            seen.setdefault(path.stem, []).append(name)
    assert {stem: names for stem, names in seen.items() if len(names) > 1} == {}


def test_module_level_imports_form_no_cycle():
    graph = {name: imports(path, top_level_only=True) for name, path in modules().items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(nxt):] + [nxt]) if nxt in path else nxt)
            if nxt in graph and state.get(nxt) is None:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if state.get(node) is None:
            visit(node, [node])
