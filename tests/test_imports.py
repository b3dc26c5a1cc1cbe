"""No import cycles between conveyor's modules, at module level or inside functions.

A cycle hidden in a function-level import still ties two modules together: neither can be
understood, tested or moved without the other, and the import order decides what works. The
only lazy loading allowed is the registry's, which goes through ``importlib`` (connector
runtimes named by a ``factory`` string), not an import statement. Imports under
``if TYPE_CHECKING:`` never run and are left out.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

Edge = tuple[str, str, str]
"""(importing module, imported module, where: ``path:line``)."""


def module_names(root: Path, package: str) -> dict[str, Path]:
    """Every module of ``package`` under ``root`` (a ``src`` folder), by dotted name."""
    found: dict[str, Path] = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _imports(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement that can run: at module level, in functions and classes alike."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for orelse in child.orelse:
                yield from _imports_in(orelse)
            continue
        yield from _imports_in(child)


def _imports_in(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        yield node
    else:
        yield from _imports(node)


def _base(module: str, is_package: bool, imp: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` names, relative levels resolved."""
    if not imp.level:
        return imp.module or ""
    parts = module.split(".")
    # ``from . import x`` in a package's __init__ means the package itself
    keep = len(parts) - imp.level + (1 if is_package else 0)
    base = ".".join(parts[:keep])
    return f"{base}.{imp.module}" if imp.module else base


def import_edges(root: Path, package: str) -> list[Edge]:
    """Each import of one of ``package``'s modules by another of its modules."""
    modules = module_names(root, package)
    edges: list[Edge] = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        where = path.relative_to(root)
        for imp in _imports(tree):
            targets: list[str] = []
            if isinstance(imp, ast.Import):
                targets = [a.name for a in imp.names]
            else:
                base = _base(name, path.name == "__init__.py", imp)
                # ``from pkg import mod`` imports the module pkg.mod; ``from mod import name``, mod
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in imp.names]
            for target in dict.fromkeys(targets):  # one edge per statement, however many names it takes
                if target in modules and target != name:
                    edges.append((name, target, f"{where}:{imp.lineno}"))
    return edges


def cycles(edges: list[Edge]) -> list[list[str]]:
    """The strongly connected groups of more than one module (each holds at least one cycle)."""
    graph: dict[str, set[str]] = {}
    for a, b, _ in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm; the graph is small enough to recurse
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group: list[str] = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                group.append(top)
                if top == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(groups)


def describe(groups: list[list[str]], edges: list[Edge]) -> str:
    """One paragraph per cycle: its modules and the import lines that close it."""
    lines: list[str] = []
    for group in groups:
        members = set(group)
        lines.append("cycle: " + " ↔ ".join(group))
        lines += [f"    {a} → {b}  ({where})" for a, b, where in edges if a in members and b in members]
    return "\n".join(lines)


def test_conveyor_has_no_import_cycles() -> None:
    edges = import_edges(SRC, "conveyor")
    assert len(edges) > 100, "the import graph came out nearly empty: the walker is broken"
    found = cycles(edges)
    assert not found, "import cycles:\n" + describe(found, edges)


def test_the_check_sees_function_level_imports_and_skips_type_checking(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def late() -> None:\n    from .. import a\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import d\n")
    (pkg / "d.py").write_text("import pkg.c\nimport importlib\nimportlib.import_module('pkg.e')\n")
    (pkg / "e.py").write_text("from pkg.d import x\n")
    edges = import_edges(tmp_path, "pkg")
    assert cycles(edges) == [["pkg.a", "pkg.sub.b"]]
    assert ("pkg.c", "pkg.d") not in {(a, b) for a, b, _ in edges}
    assert "pkg/sub/b.py:2" in describe(cycles(edges), edges)
