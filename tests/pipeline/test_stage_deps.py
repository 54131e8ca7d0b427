"""dvc.yaml's code deps are derived facts: every module a stage imports, directly or lazily.

DVC re-runs a stage when one of its deps changes; a module missing from them means an edit to
it re-runs nothing and the outputs silently describe old code. The closure is read from the
code itself (pipeline/imports.py), starting from what `python -m pipeline <stage>` imports for
that stage.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from pipeline.imports import PACKAGE_DIR, closure, imported_modules, module_file

ROOT = Path(__file__).resolve().parents[2]


def stage_modules(stage: str) -> set[str]:
    """Every module `python -m pipeline <stage>` can import: __main__ itself, and the closure of
    its module-level imports, its stage function's and main()'s (main() runs for every stage)."""
    tree = ast.parse((PACKAGE_DIR / "__main__.py").read_text())
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    entry = (imported_modules(ast.Module(body=top, type_ignores=[])) | imported_modules(functions[f"_{stage}"])
             | imported_modules(functions["main"]))
    return {"pipeline.__main__"} | closure(entry)


def module_path(name: str) -> str:
    return module_file(name).relative_to(ROOT).as_posix()


def declared_stages() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", list(declared_stages()))
def test_code_deps_are_the_import_closure(stage: str) -> None:
    spec = declared_stages()[stage]
    assert spec["cmd"] == f"python -m pipeline {stage}"
    declared = {dep for dep in spec["deps"] if dep.endswith(".py")}
    folders = [dep for dep in spec["deps"] if (ROOT / dep).is_dir()]  # e.g. service/, the bento's build context
    needed = {module_path(name) for name in stage_modules(stage)}
    missed = {path for path in needed - declared if not any(path.startswith(f"{folder}/") for folder in folders)}
    assert sorted(missed) == [], f"dvc.yaml stage {stage!r} misses modules it imports"
    assert sorted(declared - needed) == [], f"dvc.yaml stage {stage!r} lists modules it does not import"


def command_modules(command: str) -> set[str]:
    """Modules of a command that is no DVC stage (`monitor`): they need not be any stage's deps."""
    tree = ast.parse((PACKAGE_DIR / "__main__.py").read_text())
    function = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == f"_{command}")
    return closure(imported_modules(function))


def test_every_module_belongs_to_a_stage() -> None:
    used = set().union(*(stage_modules(stage) for stage in declared_stages()), command_modules("monitor"))
    modules = {f"pipeline.{p.stem}" for p in PACKAGE_DIR.glob("*.py") if p.stem != "__init__"}
    assert sorted(modules - used) == []
