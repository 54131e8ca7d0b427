"""Which of the project's modules a module uses: its `pipeline.*` and `service.*` imports, lazy ones
included, followed transitively. dvc.yaml's code deps and the tuning study's code fingerprint are
this closure, so neither is a hand-kept list that can fall behind the code."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
ROOT = PACKAGE_DIR.parent
PACKAGES = ("pipeline", "service")


def module_file(name: str) -> Path:
    """`pipeline.data` -> <root>/pipeline/data.py."""
    return ROOT.joinpath(*name.split(".")).with_suffix(".py")


def imported_modules(tree: ast.AST) -> set[str]:
    """The project's modules imported anywhere under `tree`, inside functions too."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name.split(".")[0] in PACKAGES and "." in name and module_file(name).is_file()}


def closure(modules: set[str]) -> set[str]:
    """`modules` and every pipeline module they import, transitively."""
    seen, todo = set(), list(modules)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += imported_modules(ast.parse(module_file(name).read_text()))
    return seen
