"""Import structure: the seams' modules import one way, and the config stays light (it imports the
registries, so every implementation module's top level must)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _imports(module: str) -> set[str]:
    """Every `shadowft.*` module `module` imports anywhere: top level, in functions, under TYPE_CHECKING."""
    path = ROOT / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = ROOT / module.replace(".", "/") / "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("shadowft"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)  # `from pkg import module`
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("shadowft"))
    return found


def _graph(modules: list[str]) -> dict[str, list[str]]:
    """Who imports whom among `modules` (imports anywhere in them)."""
    return {m: sorted(_imports(m) & set(modules)) for m in modules}


def _cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """A cycle in `graph`, as the path that closes it, or None."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in graph[m]:
            if state.get(n) == 1:
                return [*path[path.index(n) :], n]
            if n not in state and (found := visit(n)):
                return found
        state[m] = 2
        path.pop()
        return None

    for m in graph:
        if m not in state and (found := visit(m)):
            return found
    return None


@pytest.mark.parametrize(
    "modules",
    [
        ["shadowft.graft.guard", "shadowft.graft.sources", "shadowft.graft.validate"],
        [
            "shadowft.train.preflight",
            "shadowft.train.resources",
            "shadowft.train.launchers",
            "shadowft.train.launchers.base",
            "shadowft.train.launchers.inprocess",
            "shadowft.train.launchers.process",
            "shadowft.train.launchers.accelerate",
        ],
    ],
    ids=["graft-guard-sources-validate", "train-preflight-launchers"],
)
def test_the_seams_import_one_way(modules):
    graph = _graph(modules)
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_cycle_finder_finds_the_old_cycles():
    # as they were: process imported preflight (accelerate's check) and preflight imported process (its
    # launch arguments); validate imported sources (UpdateSource), which imported guard, which imported validate
    assert _cycle({"preflight": ["process"], "process": ["preflight"]}) == ["preflight", "process", "preflight"]
    old = {"guard": ["validate"], "sources": ["guard", "validate"], "validate": ["sources"]}
    assert _cycle(old) == ["guard", "validate", "sources", "guard"]
    assert _cycle({"a": ["b"], "b": []}) is None


def test_config_imports_no_heavy_module():
    code = (
        "import sys, shadowft.config; "
        "print(sorted(m for m in ('prefect', 'torch', 'transformers', 'trl', 'lm_eval', 'peft', 'datasets') "
        "if m in sys.modules))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr
