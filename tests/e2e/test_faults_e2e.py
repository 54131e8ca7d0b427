"""Faults injected for real: kill -9 mid-stage, an unreachable tracking server, a read-only output dir."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable

import psutil
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import make_project, tool_env

pytestmark = pytest.mark.slow


def stage_process(stage: str) -> psutil.Process | None:
    for process in psutil.process_iter(["cmdline"]):
        if (process.info["cmdline"] or [])[-3:] == ["-m", "pipeline", stage]:
            return process
    return None


def kill_repro_when(project, stage: str, ready: Callable[[psutil.Process], bool], *args: str) -> None:
    """Start `dvc repro`; once `stage` runs and `ready(its process)`, SIGKILL the whole process group."""
    process = subprocess.Popen(["dvc", "repro", *args], cwd=project.path, env=tool_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    try:
        while True:
            assert process.poll() is None, f"dvc repro ended before {stage} could be killed"
            assert time.monotonic() < deadline, f"{stage} never became ready to kill"
            child = stage_process(stage)
            with contextlib.suppress(psutil.Error):
                if child is not None and ready(child):
                    break
            time.sleep(0.2)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def in_fit_after(seconds: float) -> Callable[[psutil.Process], bool]:
    """True `seconds` after TensorFlow's library shows up in the process: with imports done, it is fitting."""
    loaded_at: list[float] = []

    def ready(process: psutil.Process) -> bool:
        if not loaded_at and any("libtensorflow" in m.path for m in process.memory_maps()):
            loaded_at.append(time.monotonic())
        return bool(loaded_at) and time.monotonic() - loaded_at[0] > seconds

    return ready


def test_kill_during_train_then_repro_gives_the_uninterrupted_model(project):
    """Up to the train stage: the saved model is byte-deterministic, so equal bytes mean equal metrics,
    card and package downstream."""
    project.set_params({"train": {"epochs": 6000, "patience": 0}})  # several seconds of fitting
    project.run("dvc", "repro", "train")
    uninterrupted = (project.path / "models/model.keras").read_bytes()
    kill_repro_when(project, "train", in_fit_after(2), "--force", "--single-item", "train")
    assert "train" in project.run("dvc", "status", "train").stdout
    project.run("dvc", "repro", "train")
    assert (project.path / "models/model.keras").read_bytes() == uninterrupted


def finished_trials(project) -> int:
    db = project.path / "optuna.db"
    if not db.exists():
        return 0
    with contextlib.closing(sqlite3.connect(db, timeout=5)) as connection:
        try:
            return connection.execute("select count(*) from trials where state in ('COMPLETE', 'PRUNED')").fetchone()[0]
        except sqlite3.OperationalError:  # polled while Optuna is still creating its tables
            return 0


def test_kill_during_tune_resumes_without_redoing_trials_and_gives_the_same_best_params(project, tmp_path):
    """Up to the tune stage only: with the same best parameters, the rest is the deterministic training
    that the kill-during-train test checks."""
    search = {"tune": {"n_trials": 8, "epochs": 80, "patience": 0, "pruner": {"n_warmup_steps": 60}}}
    reference = make_project(tmp_path / "reference", search)
    reference.run("dvc", "repro", "tune")

    project.set_params(search)
    kill_repro_when(project, "tune", lambda _: finished_trials(project) >= 2, "tune")
    done_before = finished_trials(project)
    assert 2 <= done_before < 8
    project.run("dvc", "repro", "tune")
    assert finished_trials(project) == 8
    client = MlflowClient(f"sqlite:///{project.path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("keras-mlp").experiment_id],
                              filter_string="tags.stage = 'tune'")
    done = [r for r in runs if r.data.tags.get("trial_state") in ("complete", "pruned")]
    trial_numbers = sorted(int(r.data.tags["trial_number"]) for r in done)
    assert len(trial_numbers) == 8 == len(set(trial_numbers))  # each finished trial logged once, none redone
    assert sum(r.data.tags.get("trial_state") == "fail" for r in runs) <= 1  # the killed trial, if it was mid-way
    assert (project.path / "models/best_params.yaml").read_bytes() == (reference.path / "models/best_params.yaml").read_bytes()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_tracking_server_fails_fast_with_one_line(project, built_project):
    for inputs in ("data", "models"):  # what tune and train read before they reach the tracking server
        shutil.copytree(built_project.path / inputs, project.path / inputs)
    env = tool_env() | {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{closed_port()}"}
    for stage in ("tune", "train"):
        start = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "pipeline", stage], cwd=project.path, env=env,
                                capture_output=True, text=True, timeout=120)
        assert time.monotonic() - start < 30
        assert result.returncode == 2
        lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and "is unreachable" in lines[0] and "Traceback" not in result.stderr


def test_read_only_output_dir_fails_clearly_and_keeps_the_good_outputs(project, built_project):
    for outputs in ("data", "models", "plots", "metrics"):  # a finished run's outputs, whose metrics must survive
        shutil.copytree(built_project.path / outputs, project.path / outputs, dirs_exist_ok=True)
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
