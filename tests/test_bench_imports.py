"""Benchmarks and scripts are not imported by the quick tests, so a module that moves can leave
them pointing at a name that is gone: every `from labelmaker... import name` in bench/, scripts/
and tests/ (inside functions too) must resolve."""
import ast
import importlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _unresolved(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not (isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("labelmaker")):
            continue
        try:
            module = importlib.import_module(node.module)
        except ImportError as err:
            found.append(f"{path.name}:{node.lineno} {node.module} ({err})")
            continue
        for alias in node.names:
            if hasattr(module, alias.name):
                continue
            try:
                importlib.import_module(f"{node.module}.{alias.name}")
            except ImportError:
                found.append(f"{path.name}:{node.lineno} {node.module}.{alias.name}")
    return found


def test_every_labelmaker_import_of_the_benchmarks_scripts_and_tests_resolves():
    paths = [p for folder in ("bench", "scripts", "tests") for p in sorted((ROOT / folder).glob("*.py"))]
    assert len(paths) > 40
    unresolved = [line for p in paths for line in _unresolved(p)]
    assert not unresolved, unresolved
