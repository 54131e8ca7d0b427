"""Shared fixtures: a throw-away copy of the project (git + DVC) with tiny params, and one built
project (a committed `dvc repro`) that read-only checks share across the whole run."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from filelock import FileLock

from devtools.project_copy import copy_project

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent

# Scheduling over pytest-xdist's workers (`--dist loadfile --no-loadscope-reorder`): a file's tests run on one
# worker, so its module-scoped servers, stores and image are made once. Files are handed out in collection
# order (xdist's default reorders them by test count, which started the long single-test files last), and
# the files in HEAVIEST_FIRST (measured, a minute or more each) come first, so that no long file starts
# last. A stale list only costs balance, never correctness. (`--dist loadgroup` would let independent tests
# of one file spread, but pytest-xdist 3.8 cannot tag the groups on pytest 9: every test became its own
# unit, and module fixtures such as the container image were made once per worker.)
HEAVIEST_FIRST = ["tests/container/test_container.py", "tests/e2e/test_sources_e2e.py",
                  "tests/e2e/test_tune_registry_e2e.py", "tests/e2e/test_faults_e2e.py",
                  "tests/e2e/test_distributed.py", "tests/e2e/test_monitoring_loop.py", "tests/pipeline/test_tune.py"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(HEAVIEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable: the rest keep their order


TINY = {  # small enough that a whole `dvc repro` is dominated by imports
    "data": {"n_samples": 60},
    "tune": {"n_trials": 3, "epochs": 40, "patience": 5, "pruner": {"n_startup_trials": 2, "n_warmup_steps": 5}},
    "train": {"epochs": 30, "patience": 5, "min_epochs": 30},  # every epoch runs (early stopping left flat models)
    "evaluate": {"noise_floor_points": 500},
}


def merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return out


def tool_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env['PATH']}"
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update(DVC_NO_ANALYTICS="1", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")
    return env


def run(cmd: list[str], cwd: Path, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=tool_env(), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


class Project:
    def __init__(self, path: Path):
        self.path = path
        self.repro_output = ""

    def params(self) -> dict:
        return yaml.safe_load((self.path / "params.yaml").read_text())

    def set_params(self, override: dict) -> None:
        (self.path / "params.yaml").write_text(yaml.safe_dump(merge(self.params(), override), sort_keys=False))

    def run(self, *cmd: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        return run(list(cmd), self.path, check=check, timeout=timeout)

    def commit(self, message: str) -> None:
        self.run("git", "add", "-A")
        self.run("git", "commit", "-qm", message)


def make_project(path: Path, override: dict | None = None) -> Project:
    copy_project(path)
    project = Project(path)
    project.set_params(merge(TINY, override or {}))
    project.run("git", "init", "-q", "-b", "main")
    project.commit("project copy")
    return project


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return make_project(tmp_path / "project")


# The built project registers its model under a name of its own: the package stage, the bento and
# the image must follow params.yaml's tracking.registered_model.
BUILT_PARAMS = {"tracking": {"registered_model": "line-mlp"}}
# The example table with categorical columns: text ones, and zip, whole numbers read as categories; a bag of 2.
CATEGORICAL_PARAMS = {"data": {"source": "file", "file": {"path": "examples/rentals.csv", "target": "rent",
                                                          "categorical": ["zip"]}},
                      "split": {"folds": 2}}


def shared_project(name: str, override: dict, tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Project:
    """A project after one `dvc repro` (tiny params + `override`), committed: built once per test run by
    whichever worker asks first, shared with pytest-xdist's other workers through a file lock. Read-only: a
    test that changes files or stores works on its own `project`, or on a copy of this one."""
    shared = tmp_path_factory.getbasetemp()
    if worker_id != "master":
        shared = shared.parent
    path, log, done = shared / name / "project", shared / name / "repro.log", shared / name / "done"
    with FileLock(str(shared / f"{name}.lock")):
        if not done.exists():
            project = make_project(path, override)
            result = project.run("dvc", "repro", timeout=1200)
            log.write_text(result.stdout + result.stderr)
            project.commit("first run")
            done.touch()
    project = Project(path)
    project.repro_output = log.read_text()
    return project


def carry_mlflow_store(source: Project, destination: Project) -> None:
    """Copy the MLflow store; its artifact locations are absolute, so point them at the destination's copy."""
    shutil.copy2(source.path / "mlflow.db", destination.path / "mlflow.db")
    shutil.copytree(source.path / "mlartifacts", destination.path / "mlartifacts", dirs_exist_ok=True)
    old, new = (source.path / "mlartifacts").resolve().as_uri(), (destination.path / "mlartifacts").resolve().as_uri()
    with sqlite3.connect(destination.path / "mlflow.db") as db:
        for table, column in (("experiments", "artifact_location"), ("runs", "artifact_uri"),
                              ("model_versions", "source"), ("model_versions", "storage_location")):
            db.execute(f"UPDATE {table} SET {column} = replace({column}, ?, ?)", (old, new))


def copy_of(source: Project, path: Path) -> Project:
    """A writable copy of a shared built project, as if `dvc repro` had run there: files, git history, DVC cache,
    the Optuna study and the MLflow store."""
    shutil.copytree(source.path, path, symlinks=True, ignore=shutil.ignore_patterns("mlflow.db", "mlartifacts"))
    copy = Project(path)
    carry_mlflow_store(source, copy)
    copy.repro_output = source.repro_output
    return copy


@pytest.fixture(scope="session")
def built_project(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Project:
    """The tutorial's line, as a newcomer's `make run` builds it (tiny params, model `line-mlp`); see
    `shared_project`. `repro_output` holds what dvc repro printed."""
    return shared_project("built", BUILT_PARAMS, tmp_path_factory, worker_id)


@pytest.fixture(scope="session")
def categorical_project(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Project:
    """examples/rentals.csv (categorical columns) through `dvc repro`; see `shared_project`."""
    return shared_project("categorical", CATEGORICAL_PARAMS, tmp_path_factory, worker_id)
