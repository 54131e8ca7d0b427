"""Atomic outputs get the modes an ordinary write gives (the umask), not mkstemp's private 0600."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pipeline.artifacts import atomic_dir, atomic_path, write_json


@pytest.fixture(params=[0o022, 0o002])
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_files_get_the_umask_mode(tmp_path: Path, umask: int) -> None:
    write_json(tmp_path / "out" / "card.json", {"a": 1})
    with atomic_path(tmp_path / "model.bin") as tmp:
        tmp.write_bytes(b"x")
    for name in ("out/card.json", "model.bin"):
        assert mode(tmp_path / name) == 0o666 & ~umask, name


def test_directories_get_the_umask_mode_and_appear_whole(tmp_path: Path, umask: int) -> None:
    target = tmp_path / "package"
    target.mkdir()
    (target / "old.txt").write_text("previous run")
    with atomic_dir(target) as staging:
        write_json(staging / "card.json", {"a": 1})
        assert (target / "old.txt").exists()  # the old output stays until the new one is complete
    assert sorted(p.name for p in target.iterdir()) == ["card.json"]
    assert mode(target) == 0o777 & ~umask
    assert mode(target / "card.json") == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["package"]  # no staging left behind


def test_a_failed_directory_write_keeps_the_previous_output(tmp_path: Path) -> None:
    target = tmp_path / "package"
    target.mkdir()
    (target / "card.json").write_text("previous")
    with pytest.raises(RuntimeError), atomic_dir(target) as staging:
        (staging / "card.json").write_text("half")
        raise RuntimeError("export failed")
    assert (target / "card.json").read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["package"]
