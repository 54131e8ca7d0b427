"""Tests that start and stop their own servers: what a real server makes of a start-up refusal, restarts,
overflow."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from devtools import tiny_onnx_models as models

pytestmark = pytest.mark.slow

SERVICE_DIR = Path(__file__).resolve().parents[2] / "service"


def broken_dir(root, name, regression_dir):
    """A copy of the good 1-feature model directory, to be broken by the test."""
    target = root / name
    shutil.copytree(regression_dir, target)
    return target


REFUSALS = [
    # (case, how to break the model directory, extra env, words the output must contain). Every other refusal is
    # checked in-process (test_start_up_checks.py); these show what the real `bentoml serve` makes of one.
    ("missing directory", shutil.rmtree, {}, ["model directory", "does not exist"]),
    ("bad row limit", None, {"SERVICE_MAX_ROWS": "many"}, ["SERVICE_MAX_ROWS must be a positive whole number"]),
    ("traceback on request", shutil.rmtree, {"SERVICE_DEBUG": "1"}, ["Traceback", "does not exist"]),
]


@pytest.mark.parametrize(("case", "breaker", "env", "words"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_start_up_refuses_an_unservable_model(start_server, model_root, regression_dir, case, breaker, env, words):
    model_dir = broken_dir(model_root, f"broken_{case.replace(' ', '_').replace('/', '_')}", regression_dir)
    if breaker is not None:
        breaker(model_dir)
    server = start_server(model_dir, wait=False, **env)
    deadline = time.monotonic() + 60
    while server.process.poll() is None and time.monotonic() < deadline:
        assert not server.is_ready(), f"{case}: server became ready"
        time.sleep(0.2)
    assert server.process.returncode not in (None, 0), f"{case}: still running or exit 0"
    output = server.log()
    assert "StartupError" in output
    if "SERVICE_DEBUG" not in env:  # one line naming what to fix, no traceback
        assert "Traceback" not in output and output.count("\n") <= 2, output[-3000:]
        assert output.startswith("service refused to start: StartupError: ")
    for word in words:
        assert word in output, f"{case}: {word!r} not in output:\n{output[-2000:]}"


def test_restart_gives_the_same_predictions(start_server, regression_dir):
    rows = {"x": [[-0.3], [0.7], [5.0]], "coverage": 0.8}
    server = start_server(regression_dir)
    before = httpx.post(f"{server.url}/predict", json=rows).json()
    server.stop(signal.SIGKILL)  # a crash, not a clean shutdown
    assert not server.is_ready()
    server.start().wait_ready()  # same port, same model directory
    after = httpx.post(f"{server.url}/predict", json=rows).json()
    assert after == before


def test_non_finite_model_output_is_422_not_500(start_server, model_root):
    server = start_server(models.overflowing_1d(model_root / "overflowing"))
    ok = httpx.post(f"{server.url}/predict", json={"x": [[1.0]]})
    assert ok.status_code == 200 and ok.json()["predictions"] == [pytest.approx(1e30, rel=1e-6)]
    answer = httpx.post(f"{server.url}/predict", json={"x": [[0.5], [1e10], [-1e10]]})
    assert answer.status_code == 422
    assert "row(s) [1, 2]" in answer.json()["error"]


def test_service_does_not_import_the_training_stack(regression_dir, tmp_path):
    # The serving image has none of these; importing one would fail there.
    forbidden = ["tensorflow", "keras", "tf2onnx", "mlflow", "dvc", "optuna", "sklearn", "pandas", "pipeline"]
    probe = (
        "import sys, service; "
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({forbidden!r})))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SERVICE_")}
    env.update(SERVICE_MODEL_DIR=str(regression_dir), BENTOML_HOME=str(tmp_path), BENTOML_DO_NOT_TRACK="True")
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=SERVICE_DIR, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
