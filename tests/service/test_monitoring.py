"""Drift gauges, the request log and POST /feedback on a real `bentoml serve`."""

import json
import re
import time

import httpx
import numpy as np
import pytest

from devtools.tiny_onnx_models import monitored_3d
from pipeline.config import load_params
from pipeline.monitor import main as monitor_main
from tests.conftest import ROOT

pytestmark = pytest.mark.slow
TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def monitored(start_server, model_root, tmp_path_factory):
    model_dir, _ = monitored_3d(model_root / "monitored_3d")
    log_dir = tmp_path_factory.mktemp("request_log")
    server = start_server(model_dir, SERVICE_API_TOKEN=TOKEN, SERVICE_REQUEST_LOG=str(log_dir))
    with httpx.Client(base_url=server.url, timeout=30, headers=AUTH) as client:
        yield server, client, model_dir, log_dir


def gauges(client: httpx.Client) -> tuple[dict[str, float], str]:
    text = client.get("/metrics").text
    values = {m[0] or m[1]: float(m[2]) for m in
              re.findall(r'^service_drift_(?:psi\{feature="(\w+)"\}|(\w+)) (\S+)$', text, re.M)}
    return values, text


def test_shift_on_one_feature_shows_in_its_psi_gauge_logs_and_takes_feedback(monitored, tmp_path):
    server, client, model_dir, log_dir = monitored
    rng = np.random.default_rng(7)
    ids, truths = [], []
    for row in rng.normal(size=(1000, 3)) + [1.0, 0.0, 0.0]:  # mean of `a` moved by one sigma
        answer = client.post("/predict", json={"x": [row.tolist()]}).json()
        ids.append(answer["request_id"])
        truths.append(float(row @ [1.0, 2.0, -1.0] + 0.5))  # the world changed: the model is now 0.5 off
    values, text = gauges(client)
    assert values["a"] > 0.2 and values["b"] < 0.1 and values["c"] < 0.1
    assert values["window_rows"] == 1000 and values["output_psi"] > 0.1

    # No growth of /metrics with traffic: the same series after 200 more requests.
    series = sorted(line.rsplit(" ", 1)[0] for line in text.splitlines() if line.startswith("service_drift"))
    for row in rng.normal(size=(200, 3)):
        client.post("/predict", json={"x": [row.tolist()]})
    _, later = gauges(client)
    assert sorted(line.rsplit(" ", 1)[0] for line in later.splitlines() if line.startswith("service_drift")) == series

    for request_id, truth in zip(ids[:200], truths[:200]):
        answer = client.post("/feedback", json={"id": request_id, "targets": [truth]})
        assert answer.status_code == 200 and answer.json() == {"id": request_id, "rows": 1}
    time.sleep(1.5)  # the log is written in batches, and every second
    cfg = load_params(ROOT / "params.yaml").monitor
    assert monitor_main(cfg, log_dir, model_dir / "card.json", tmp_path / "no-train", tmp_path / "out") == 1
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [r.split(":")[0] for r in summary["reasons"] if r.startswith("feature")] == ["feature 'a' drifted"]
    assert summary["rows"] == 1200 and summary["error"]["matched_rows"] == 200
    assert summary["error"]["live"] == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize("body, field", [
    ({"id": "NOT-HEX", "targets": [1.0]}, "id"),
    ({"id": "0" * 32, "targets": ["1"]}, "targets[0]"),
    ({"id": "0" * 32, "targets": []}, "targets"),
    ({"id": "0" * 32, "targets": [1.0], "extra": 1}, "extra"),
    ({"targets": [1.0]}, "id"),
])
def test_bad_feedback_is_a_400_naming_the_field(monitored, body, field):
    _, client, _, _ = monitored
    answer = client.post("/feedback", json=body)
    assert answer.status_code == 400 and field in answer.json()["error"]


def test_feedback_needs_the_token_and_a_request_log(monitored, client):
    server, *_ = monitored
    assert httpx.post(f"{server.url}/feedback", json={"id": "0" * 32, "targets": [1.0]}).status_code == 401
    off = client.post("/feedback", json={"id": "0" * 32, "targets": [1.0]})  # the default server: no log
    assert off.status_code == 404 and "SERVICE_REQUEST_LOG" in off.json()["error"]
    assert "request_id" not in client.post("/predict", json={"x": [[0.5]]}).json()
