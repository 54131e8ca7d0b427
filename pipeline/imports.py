"""Which of the pipeline's modules a module uses: its `pipeline.*` imports, lazy ones included,
followed transitively. dvc.yaml's code deps and the tuning study's code fingerprint are this
closure, so neither is a hand-kept list that can fall behind the code."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def module_file(name: str) -> Path:
    return PACKAGE_DIR / f"{name.split('.', 1)[1]}.py"


def imported_modules(tree: ast.AST) -> set[str]:
    """`pipeline.x` modules imported anywhere under `tree`, inside functions too."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("pipeline.")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "pipeline":
                found |= {f"pipeline.{alias.name}" for alias in node.names}
            elif node.module.startswith("pipeline."):
                found.add(node.module)
    return {name for name in found if module_file(name).is_file()}


def closure(modules: set[str]) -> set[str]:
    """`modules` and every pipeline module they import, transitively."""
    seen, todo = set(), list(modules)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += imported_modules(ast.parse(module_file(name).read_text()))
    return seen
