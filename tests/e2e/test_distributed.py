"""Beyond one machine, for real: a PostgreSQL study shared by tune workers, and the whole pipeline against an
MLflow tracking server whose backend store is that PostgreSQL (scripts/infra.sh starts both on loopback).

Needs Debian's PostgreSQL (`bash scripts/install-postgres.sh`) and psycopg; without them the tests are
skipped, or fail when CI is set.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, tool_env

pytestmark = pytest.mark.slow

INFRA = ROOT / "scripts" / "infra.sh"
N_TRIALS = 12
HEARTBEAT_S = 1  # grace period 3 s: a killed worker's trial is found lost within seconds


def as_machine(host: str, cmd: list[str]) -> list[str]:
    """`cmd` under a host name of its own (a UTS namespace), like a worker on another machine: its trials' process
    ids mean nothing here, so only missed heartbeats can tell that it died. Plain `cmd` where that is not allowed."""
    probe = subprocess.run(["unshare", "--uts", "true"], capture_output=True)
    if probe.returncode != 0:
        return cmd
    return ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', host, *cmd]


def require(what: str, ok: bool) -> None:
    if ok:
        return
    reason = f"{what} is missing: run `bash scripts/install-postgres.sh` and `make setup`"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class Infra:
    tune_storage: str
    tracking_uri: str
    artifacts: Path

    def env(self, **extra: str) -> dict[str, str]:
        return {**tool_env(), "TUNE_STORAGE": self.tune_storage, "MLFLOW_TRACKING_URI": self.tracking_uri, **extra}


@pytest.fixture(scope="module")
def infra():
    require("PostgreSQL", bool(glob.glob("/usr/lib/postgresql/*/bin/initdb")))
    try:
        import psycopg  # noqa: F401
    except ImportError:
        require("psycopg (the PostgreSQL driver)", False)
    # Not under pytest's basetemp: it is private (0700) and PostgreSQL runs as the `postgres` user.
    directory = Path(tempfile.mkdtemp(prefix="infra-"))
    directory.chmod(0o755)
    pg_port, mlflow_port = free_ports(2)
    env = {**tool_env(), "INFRA_DIR": str(directory), "PG_PORT": str(pg_port), "MLFLOW_PORT": str(mlflow_port)}
    try:
        up = subprocess.run(["bash", str(INFRA), "up"], env=env, capture_output=True, text=True, timeout=300)
        assert up.returncode == 0, f"infra.sh up failed:\n{up.stdout}\n{up.stderr}\n{_tail(directory / 'mlflow.log')}"
        lines = (directory / "env").read_text().splitlines()
        exported = dict(line.removeprefix("export ").split("=", 1) for line in lines)
        assert f"export MLFLOW_TRACKING_URI={exported['MLFLOW_TRACKING_URI']}" in up.stdout  # told to the newcomer
        assert exported["TUNE_STORAGE"] == f"postgresql://postgres@127.0.0.1:{pg_port}/optuna"
        status = subprocess.run(["bash", str(INFRA), "status"], env=env, capture_output=True, text=True, timeout=60)
        assert status.returncode == 0 and "MLflow:     running" in status.stdout, status.stdout
        yield Infra(exported["TUNE_STORAGE"], exported["MLFLOW_TRACKING_URI"], directory / "mlartifacts")
    finally:
        down = subprocess.run(["bash", str(INFRA), "down"], env=env, capture_output=True, text=True, timeout=120)
        stopped = subprocess.run(["bash", str(INFRA), "status"], env=env, capture_output=True, text=True, timeout=60)
        shutil.rmtree(directory, ignore_errors=True)
        if sys.exc_info()[0] is None:
            assert down.returncode == 0, down.stderr
            assert stopped.returncode == 3 and "PostgreSQL: stopped" in stopped.stdout, stopped.stdout


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def start(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("wb") as out:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)


def project_study_name(root: Path) -> str:
    from pipeline.config import load_params
    from pipeline.paths import Workspace
    from pipeline.tune import study_name

    return study_name(load_params(root / "params.yaml"), Workspace(root))


def wait_for(predicate, timeout: float, what: str, procs: dict[str, subprocess.Popen], logs: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        for name, proc in procs.items():
            if proc.poll() not in (None, 0):
                raise AssertionError(f"{name} exited with {proc.returncode}:\n{_tail(logs / f'{name}.log')}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}:\n" +
                         "\n".join(f"--- {n}\n{_tail(logs / f'{n}.log', 15)}" for n in procs))


def run_and_kill_a_worker(procs, cmd, root, env, infra, logs):
    """Start the stage once the workers wait for its study; SIGKILL a worker in the middle of a trial; wait for the
    rest to finish. Returns the study and the killed worker's trial (as it was when it was running)."""
    import optuna

    from pipeline.study_attrs import WORKER_ATTR

    wait_for(lambda: all("waiting for study" in (logs / f"{n}.log").read_text() for n in procs), 240,
             "the workers to wait for the study", procs, logs)
    procs["stage"] = start(cmd, root, env, logs / "stage.log")
    ids = {}
    for label, proc in procs.items():
        if label != "stage":  # `exec`: the worker is the started process, under its own host name if it has one
            host = proc.args[5] if proc.args[0] == "unshare" else socket.gethostname()
            ids[f"{host}:{proc.pid}"] = label
    storage, name = optuna.storages.RDBStorage(infra.tune_storage), project_study_name(root)

    def created():
        return name in optuna.get_all_study_names(storage) and optuna.load_study(study_name=name, storage=storage)

    study = wait_for(created, 240, "the stage to create the study", procs, logs)

    def a_worker_mid_trial():
        assert procs["stage"].poll() is None, f"the search ended before a worker could be killed:\n{study.trials}"
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if trial.user_attrs.get(WORKER_ATTR) in ids and trial.intermediate_values:  # well into its fit
                return trial
        return None

    running = wait_for(a_worker_mid_trial, 240, "a worker to be in the middle of a trial", procs, logs)
    victim = procs[ids[running.user_attrs[WORKER_ATTR]]]
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(timeout=30) == -signal.SIGKILL
    for label, proc in procs.items():
        if proc is not victim:
            assert proc.wait(timeout=300) == 0, f"{label}:\n{_tail(logs / f'{label}.log')}"
    return study, running


@pytest.mark.timeout(600)
def test_three_workers_share_one_study_and_a_killed_workers_trial_is_retried(project, infra, tmp_path):
    import optuna
    from mlflow.tracking import MlflowClient

    from pipeline.study_attrs import PARENT_RUN_ATTR, WORKER_ATTR

    project.set_params({"tune": {"n_trials": N_TRIALS, "epochs": 150, "patience": 150,
                                 "pruner": {"n_startup_trials": 4, "n_warmup_steps": 30}},
                        "tracking": {"experiment": "distributed-tune"}})
    project.run("python", "-m", "pipeline", "generate")
    project.run("python", "-m", "pipeline", "split")
    root = project.path
    env = infra.env(TUNE_HEARTBEAT_INTERVAL=str(HEARTBEAT_S))
    cmd = [sys.executable, "-m", "pipeline", "tune"]
    # Workers first: they wait for the study, which the stage creates, then all four take trials.
    procs = {f"worker{i}": start(as_machine(f"machine-{i}", [*cmd, "--worker"]), root, env, tmp_path / f"worker{i}.log")
             for i in range(3)}
    try:
        study, running = run_and_kill_a_worker(procs, cmd, root, env, infra, tmp_path)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
    victim_id = running.user_attrs[WORKER_ATTR]

    trials = study.get_trials(deepcopy=False)
    states = Counter(t.state for t in trials)
    finished = [t for t in trials if t.state.is_finished() and t.state != optuna.trial.TrialState.FAIL]
    assert len(finished) == N_TRIALS, states  # exactly n_trials, not one more
    assert states[optuna.trial.TrialState.RUNNING] == states[optuna.trial.TrialState.WAITING] == 0, states
    assert len({t.number for t in trials}) == len(trials)
    assert len({tuple(sorted(t.params.items())) for t in finished}) == N_TRIALS, "two trials tried the same values"

    lost = study.trials[running.number]
    assert lost.state == optuna.trial.TrialState.FAIL and lost.user_attrs[WORKER_ATTR] == victim_id
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    for trial in failed:  # the killed worker's trial (and any other found lost) was queued again, same values
        original = trial.system_attrs.get("failed_trial", trial.number)
        retries = [t for t in trials if t.system_attrs.get("failed_trial") == original and t.number > trial.number]
        assert retries and all(r.params == trial.params for r in retries), (trial.number, retries)
    assert [t for t in finished if t.system_attrs.get("failed_trial") == lost.number], "the lost trial never ran again"
    workers = Counter(t.user_attrs[WORKER_ATTR] for t in trials)
    assert len(workers) >= 3, workers  # the search was shared (the stage plus at least two workers)

    # One MLflow child run per trial, finished or lost, whichever process ran it, under one parent run.
    client = MlflowClient(tracking_uri=infra.tracking_uri)
    experiment = client.get_experiment_by_name("distributed-tune")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert [p.info.run_id for p in parents] == [study.user_attrs[PARENT_RUN_ATTR]]
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    by_number = Counter(int(c.data.tags["trial_number"]) for c in children)
    assert by_number == Counter(t.number for t in finished + failed), "each trial exactly one child run"
    tagged = {int(c.data.tags["trial_number"]): c.data.tags for c in children}
    for trial in finished + failed:
        assert tagged[trial.number]["trial_state"] == trial.state.name.lower()
        assert tagged[trial.number]["worker"] == trial.user_attrs[WORKER_ATTR]

    best = yaml.safe_load((root / "models/best_params.yaml").read_text())
    assert {k: best[k] for k in study.best_params} == study.best_params
    assert parents[0].data.metrics["best_val_loss"] == pytest.approx(study.best_value)


def rest(base: str, path: str, **query: str) -> dict:
    with urllib.request.urlopen(f"{base}/api/2.0/mlflow/{path}?{urllib.parse.urlencode(query)}", timeout=30) as r:
        return json.load(r)


@pytest.mark.timeout(900)
def test_pipeline_runs_unchanged_against_the_tracking_server(project, infra):
    env = infra.env()
    result = subprocess.run(["dvc", "repro"], cwd=project.path, env=env, capture_output=True, text=True, timeout=840)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    root = project.path
    assert not (root / "mlflow.db").exists() and not (root / "mlartifacts").exists()  # all of it went to the server
    assert not (root / "optuna.db").exists()  # and the study to PostgreSQL

    registered = rest(infra.tracking_uri, "registered-models/get", name="keras-mlp")["registered_model"]
    assert {"alias": "champion", "version": "1"} in registered["aliases"]
    champion = rest(infra.tracking_uri, "registered-models/alias", name="keras-mlp", alias="champion")["model_version"]
    assert champion["version"] == "1" and champion["status"] == "READY"
    registry = json.loads((root / "models/registry.json").read_text())
    assert registry["promoted"] and registry["version"] == "1"

    # The package stage loaded models:/keras-mlp@champion through the server (artifacts proxied from its root).
    provenance = json.loads((root / "models/package/provenance.json").read_text())
    assert provenance["mlflow"]["model_version"] == "1" and provenance["mlflow"]["run_id"] == champion["run_id"]
    assert any(path.name == "MLmodel" for path in infra.artifacts.rglob("MLmodel"))
    runs = rest(infra.tracking_uri, "runs/get", run_id=champion["run_id"])["run"]
    assert {"key": "stage", "value": "train"} in runs["data"]["tags"]
