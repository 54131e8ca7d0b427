"""pipeline/paths.py and dvc.yaml name the same files: an output renamed in one place only fails here."""

from __future__ import annotations

from pathlib import Path

import yaml

from pipeline.paths import Workspace

ROOT = Path(__file__).resolve().parents[2]
# Written beside the outputs but outside DVC on purpose (run ids and bento tags differ between identical runs).
NOT_IN_DVC = {"models/bento.json", "bentoml"}


def entry_path(entry) -> str:
    return next(iter(entry)) if isinstance(entry, dict) else entry


def dvc_files() -> set[str]:
    """Every data file or folder dvc.yaml names as a dep or an out (code deps and the user's data file aside)."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    named = set()
    for spec in stages.values():
        for key in ("deps", "outs", "metrics", "plots"):
            named |= {entry_path(entry) for entry in spec.get(key, [])}
    return {path for path in named if not path.endswith(".py") and "${" not in path}


def workspace_files() -> set[str]:
    ws = Workspace()
    names = [name for name, value in vars(Workspace).items() if isinstance(value, property)]
    return {getattr(ws, name).as_posix() for name in names}


def test_dvc_yaml_and_the_workspace_name_the_same_files():
    assert sorted(dvc_files() - workspace_files()) == [], "dvc.yaml names files pipeline/paths.py does not know"
    assert sorted(workspace_files() - dvc_files() - NOT_IN_DVC) == [], "pipeline/paths.py has files dvc.yaml lacks"


def test_a_workspace_can_live_anywhere(tmp_path):
    ws = Workspace(tmp_path)
    assert ws.model == tmp_path / "models/model.keras" and ws.split_dir.parent == tmp_path / "data"
