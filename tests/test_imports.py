"""The packages of ``distmis`` import each other in one direction only: no cycle between
packages (``train`` ↔ ``backends`` was one), counting imports inside functions too."""

from __future__ import annotations

import ast
from pathlib import Path

import distmis

SRC = Path(distmis.__file__).parent


def unit_of(module: str) -> str:
    """``distmis.<name>``'s first component: a subpackage, or a top-level module."""
    return module.split(".")[1] if module.count(".") else module


def package_graph() -> dict[str, set[str]]:
    """Unit → the other units its modules import (every ``import``/``from`` statement)."""
    graph: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        relative = path.relative_to(SRC.parent).with_suffix("")
        unit = unit_of(".".join(relative.parts))
        edges = graph.setdefault(unit, set())
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
                if node.module == "distmis":  # `from distmis import backends`
                    names = [f"distmis.{alias.name}" for alias in node.names]
            for name in names:
                if name.startswith("distmis.") and unit_of(name) != unit:
                    edges.add(unit_of(name))
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every elementary cycle's smallest rotation, found by depth-first search."""
    found = set()

    def visit(start: str, node: str, path: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt == start:
                i = path.index(min(path))
                found.add(tuple(path[i:] + path[:i]))
            elif nxt not in path and nxt > start:
                visit(start, nxt, [*path, nxt])

    for start in sorted(graph):
        visit(start, start, [start])
    return [list(c) for c in sorted(found)]


def test_no_import_cycle_between_packages():
    graph = package_graph()
    assert {"train", "backends", "prepare", "shards", "trial"} <= set(graph)
    assert cycles(graph) == [], cycles(graph)


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
