"""The committed dvc.lock matches the code and params it records, so a fresh clone's `make run` leaves
`git status` clean. Catches, in seconds, a code or params change committed without re-running the
pipeline (`make run`), which CI would otherwise find only after a full pipeline run."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[2]
# DVC's own YAML reader (YAML 1.2): PyYAML would read the lock's `1e-06` as a string.
LOCK = YAML(typ="safe").load((ROOT / "dvc.lock").read_text())["stages"]
PARAMS = YAML(typ="safe").load((ROOT / "params.yaml").read_text())
FIX = "re-run the pipeline (`make clean && make run`) and commit dvc.lock"


def lookup(key: str):
    value = PARAMS
    for part in key.split("."):
        value = value[part]
    return value


@pytest.mark.parametrize("stage", list(LOCK))
def test_recorded_code_and_params_are_the_current_ones(stage: str) -> None:
    entry = LOCK[stage]
    for dep in entry["deps"]:
        path = ROOT / dep["path"]
        if path.suffix == ".py":
            assert hashlib.md5(path.read_bytes()).hexdigest() == dep["md5"], f"{dep['path']} changed: {FIX}"
    for key, value in entry.get("params", {}).get("params.yaml", {}).items():
        assert lookup(key) == value, f"params.yaml {key} changed: {FIX}"
