"""The library's packages import downwards only: a cycle between two of textclf's packages fails here
with its path. Imports inside functions count: they defer a dependency, they do not remove it."""

from __future__ import annotations

import ast
from pathlib import Path

import textclf

SRC = Path(textclf.__file__).parent


def unit(module: str) -> str:
    """textclf.gate.decision -> gate; textclf.config -> config."""
    return module.split(".")[1]


def graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC.parent).with_suffix("")
        here = unit(".".join(rel.parts)) if len(rel.parts) > 1 else "textclf"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.ImportFrom) and node.level:
                names = [".".join([*rel.parts[: -node.level], *([node.module] if node.module else [])])]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                if name.startswith("textclf.") and unit(name) != here:
                    edges.setdefault(here, set()).add(unit(name))
    return edges


def test_no_import_cycle_between_packages() -> None:
    edges = graph()
    assert {"gate", "model", "serving"} <= set(edges)  # the walk found the packages

    def cycle(start: str, node: str, path: list[str]) -> list[str] | None:
        for nxt in sorted(edges.get(node, ())):
            if nxt == start:
                return [*path, nxt]
            if nxt not in path and (found := cycle(start, nxt, [*path, nxt])):
                return found
        return None

    cycles = [c for u in sorted(edges) if (c := cycle(u, u, [u]))]
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)
