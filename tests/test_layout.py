"""The package's shape: no import cycle in crossenc/ or bench/, errors.py at the bottom, and the
public names ``crossenc.run`` / ``crossenc.scorer`` not shadowed by a subpackage."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _module(path: Path) -> str:
    name = ".".join(path.relative_to(REPO).with_suffix("").parts)
    return name.removesuffix(".__init__")


def import_graph(*packages: str) -> dict[str, set[str]]:
    """Module -> the modules of ``packages`` it imports (anywhere in the file, lazy ones too).
    The packages' roots are left out as targets: ``crossenc/__init__.py`` holds the version
    and the public API, imported on first use (its ``__getattr__``), never a module's need."""
    modules = {_module(p): p for package in packages for p in (REPO / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for target in names:  # the module itself, or the module a name comes from
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and target not in packages:
                    found.add(target)
        graph[name] = found
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of ``graph`` (strongly connected components of more than one module)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("package", ["crossenc", "bench"])
def test_no_import_cycle(package: str):
    assert cycles(import_graph(package)) == []


def test_errors_imports_nothing_of_crossenc_but_the_config():
    assert import_graph("crossenc")["crossenc.errors"] <= {"crossenc", "crossenc.config"}


def test_the_public_api_survives_importing_every_subpackage():
    import importlib

    import crossenc

    for path in (REPO / "crossenc").glob("*/__init__.py"):
        importlib.import_module(_module(path))
    assert callable(crossenc.run) and callable(crossenc.scorer)
