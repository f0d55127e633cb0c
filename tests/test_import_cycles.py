"""No import cycles inside the package, and every module imports on its own.

The import graph is read from the source (ast): every `import` of a labelmaker module, at module
level or inside a function (a deferred import that closes a cycle is still a cycle: it only
moves the failure to run time), except those under `if TYPE_CHECKING:`. Importing `a.b.c` from
outside package `a.b` also runs `a.b/__init__.py`, so such an import is an edge to each of those
packages as well: a package that imports its plugins must not be imported back by them.
Registries therefore never import their plugins; the packages that own them do.
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "labelmaker"


def package_modules(root: Path = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> file, packages named after their folder."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules that module `name` imports (directly named, plus the packages that
    importing them initialises on the way, those enclosing `name` itself excluded)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for stmt in child.orelse:
                    visit_node(stmt)
                continue
            visit_node(child)

    def visit_node(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            targets.update(a.name for a in node.names if a.name.split(".")[0] == "labelmaker")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                targets.add(sub if sub in known else module)
        else:
            visit(node)

    visit(ast.parse(path.read_text(), filename=str(path)))
    edges = set()
    own = name.split(".")
    for target in targets:
        if target not in known:
            continue
        parts = target.split(".")
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i])
            if prefix in known and prefix != name and parts[:i] != own[:i]:
                edges.add(prefix)
    return edges


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    modules = package_modules(root)
    known = set(modules)
    return {name: imported_modules(name, path, known) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 50 and "labelmaker.pipeline.graph" in graph
    assert cycles(graph) == []


def test_the_cycle_finder_finds_cycles_through_deferred_imports_and_package_inits(tmp_path):
    pkg = tmp_path / "labelmaker"
    (pkg / "plugins").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "core.py").write_text("def f():\n    from .other import g\n")  # deferred: still an edge
    (pkg / "other.py").write_text("from . import core\n")
    (pkg / "plugins" / "__init__.py").write_text("from . import a\n")
    (pkg / "plugins" / "a.py").write_text("from ..user import x\n")
    (pkg / "user.py").write_text("from .plugins.base import Registry\n")  # runs plugins/__init__
    type_only = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..core import f\n"
    (pkg / "plugins" / "base.py").write_text(type_only)
    found = cycles(import_graph(pkg))
    assert ["labelmaker.core", "labelmaker.other"] in found
    assert ["labelmaker.plugins", "labelmaker.plugins.a", "labelmaker.user"] in found
    assert len(found) == 2  # the TYPE_CHECKING import is no edge


@pytest.mark.slow
def test_every_module_imports_on_its_own_in_a_fresh_interpreter():
    """One interpreter per module (a module that only works after another one was imported
    first hides a cycle or a missing import). ~1 min on 2 cores."""
    code = ("import importlib, subprocess, sys\n"
            "failed = []\n"
            "for name in sys.argv[1:]:\n"
            "    run = subprocess.run([sys.executable, '-c', f'import {name}'], capture_output=True, text=True)\n"
            "    if run.returncode:\n"
            "        failed.append(name + ': ' + run.stderr.strip().splitlines()[-1])\n"
            "print('\\n'.join(failed))\n")
    names = [n for n in package_modules() if not n.endswith("__main__")]
    out = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True, check=True,
                         env={**os.environ, "LABELMAKER_TORCHVISION_CPU_NMS": "1"}).stdout.strip()
    assert out == "", out
