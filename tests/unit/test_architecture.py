"""Imports flow one way: library parts never import the CLI or the tests."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "medlab"


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_nothing_outside_the_cli_imports_it() -> None:
    for path in SRC.rglob("*.py"):
        if "cli" in path.relative_to(SRC).parts or path.name == "demo.py":
            continue
        bad = {n for n in _imports(path) if n.startswith(("medlab.cli", "tests"))}
        assert not bad, f"{path}: {bad}"


def test_modules_stay_small() -> None:
    for path in SRC.rglob("*.py"):
        assert len(path.read_text().splitlines()) < 600, path
