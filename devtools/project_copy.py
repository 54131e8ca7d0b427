"""A throw-away copy of the project: what `dvc repro` needs, without outputs, caches or stores."""

from __future__ import annotations

import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROJECT_FILES = ["pipeline", "service", "examples", "params.yaml", "dvc.yaml", ".dvc/config", ".dvcignore", ".gitignore",
                 "Dockerfile", ".dockerignore", ".dvc/plots.html",
                 "pyproject.toml"]


def copy_project(path: Path) -> None:
    """Copy the project's sources and settings into `path` (created if missing)."""
    path.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, path / name, ignore=shutil.ignore_patterns("__pycache__", "bentoml"))
        elif src.exists():
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, path / name)
