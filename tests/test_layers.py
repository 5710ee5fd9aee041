"""The layout shows the architecture: no import cycles in protocol/, node/ and sim/, and the
layers point one way (STYLE 14).

- protocol/ imports nothing of node/ or sim/ (the pure core);
- node/ never imports sim/: the product's node does not depend on its simulator (the
  simulator plugs in through node/plugins.py's entry point). The one exception is the
  ``jungle sim`` dispatch in node/cli.py.

Every import statement counts, at module level or inside a function, type-checking-only
imports included: a cycle of lazy imports is still a cycle in the design.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("protocol", "node", "sim")
#: (importer, imported): the allowed exception
ALLOWED = {("node.cli", "sim.cli")}


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).glob("*.py")):
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            imported: set[str] = set()
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    imported.update(alias.name for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    imported.add(node.module)
            graph[name] = {m for m in imported if m.split(".")[0] in PACKAGES and m != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph (as a path), or None."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = "open"
        path.append(name)
        for nxt in sorted(graph.get(name, ())):
            if state.get(nxt) == "open":
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[name] = "done"
        return None

    for name in sorted(graph):
        if name not in state:
            cycle = visit(name)
            if cycle:
                return cycle
    return None


def test_no_import_cycles() -> None:
    assert find_cycle(import_graph()) is None, " -> ".join(find_cycle(import_graph()) or [])


def test_layers_point_one_way() -> None:
    wrong = []
    for importer, imported in sorted(import_graph().items()):
        for module in sorted(imported):
            layer, target = importer.split(".")[0], module.split(".")[0]
            if (importer, module) in ALLOWED:
                continue
            if layer == "protocol" and target != "protocol":
                wrong.append(f"{importer} imports {module}")
            if layer == "node" and target == "sim":
                wrong.append(f"{importer} imports {module}")
    assert not wrong, wrong


def test_the_cycle_finder_finds_cycles() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
