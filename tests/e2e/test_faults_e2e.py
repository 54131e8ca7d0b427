"""Faults injected for real: kill -9 mid-stage, an unreachable tracking server, a read-only output dir."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import tool_env

pytestmark = pytest.mark.slow


def kill_repro_during(project, stage: str, after_s: float, *args: str) -> str:
    """Start `dvc repro`, SIGKILL its whole process group `after_s` seconds into `stage`; return its output."""
    process = subprocess.Popen(["dvc", "repro", *args], cwd=project.path, env=tool_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    seen = []
    deadline = time.monotonic() + 300
    for line in process.stdout:
        seen.append(line)
        if f"Running stage '{stage}'" in line:
            break
        assert time.monotonic() < deadline, "".join(seen)
    time.sleep(after_s)
    assert process.poll() is None, f"the stage finished before it could be killed:\n{''.join(seen)}"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    return "".join(seen)


def test_kill_during_train_then_repro_gives_the_uninterrupted_metrics(project):
    project.set_params({"train": {"epochs": 400, "patience": 0}})
    project.run("dvc", "repro")
    uninterrupted = (project.path / "metrics/evaluate.json").read_bytes()
    kill_repro_during(project, "train", 8.0, "--force", "--single-item", "train")
    assert "train" in project.run("dvc", "status").stdout
    project.run("dvc", "repro")
    assert (project.path / "metrics/evaluate.json").read_bytes() == uninterrupted


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_tracking_server_fails_fast_with_one_line(project):
    project.run("dvc", "repro", "tune")
    env = tool_env() | {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{closed_port()}"}
    for stage in ("tune", "train"):
        start = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "pipeline", stage], cwd=project.path, env=env,
                                capture_output=True, text=True, timeout=120)
        assert time.monotonic() - start < 30
        assert result.returncode == 2
        lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and "is unreachable" in lines[0] and "Traceback" not in result.stderr


def test_read_only_output_dir_fails_clearly_and_keeps_the_good_outputs(project):
    project.run("dvc", "repro", "evaluate")
    metrics_dir = project.path / "metrics"
    before = (metrics_dir / "evaluate.json").read_bytes()
    subprocess.run(["chattr", "+i", str(metrics_dir)], check=True)  # root ignores mode bits; not this
    try:
        result = subprocess.run([sys.executable, "-m", "pipeline", "evaluate"], cwd=project.path, env=tool_env(),
                                capture_output=True, text=True, timeout=300)
    finally:
        subprocess.run(["chattr", "-i", str(metrics_dir)], check=True)
    assert result.returncode == 2
    assert "error: " in result.stderr and "cannot write outputs to metrics/" in result.stderr
    assert "Traceback" not in result.stderr
    assert (metrics_dir / "evaluate.json").read_bytes() == before
    assert sorted(p.name for p in metrics_dir.iterdir()) == ["evaluate.json"]
