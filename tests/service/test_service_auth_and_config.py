"""A server configured through the environment: bearer token, row/body limits, default coverage."""

import os
import subprocess
import sys

import httpx
import pytest

from devtools.server import SERVICE_DIR
from devtools.tiny_onnx_models import ABS_RESIDUALS

pytestmark = pytest.mark.slow

TOKEN = "t0ken-Under-Test_4f9c1a"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def server(start_server, regression_dir):
    return start_server(
        regression_dir,
        SERVICE_API_TOKEN=TOKEN,
        SERVICE_MAX_ROWS="5",
        SERVICE_MAX_BODY_BYTES="2048",
        SERVICE_INTERVAL_COVERAGE="0.8",
    )


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}, {"Authorization": f"Basic {TOKEN}"},
     {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": "Bearer"}],
    ids=["none", "wrong token", "no scheme", "basic scheme", "token prefix", "empty token"],
)
@pytest.mark.parametrize(("method", "path"), [("POST", "/predict"), ("GET", "/metadata")])
def test_model_endpoints_need_the_token(client, headers, method, path):
    answer = client.request(method, path, json={"x": [[0.5]]} if method == "POST" else None, headers=headers)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"] == "Bearer"
    assert "bearer token" in answer.json()["error"]


def test_right_token_is_served(client):
    assert client.post("/predict", json={"x": [[0.5]]}, headers=AUTH).json()["predictions"] == [2.0]
    lower_case_scheme = {"Authorization": f"bearer {TOKEN}"}
    assert client.get("/metadata", headers=lower_case_scheme).status_code == 200


def test_unauthenticated_oversize_body_is_refused_without_reading_it(client):
    answer = client.post("/predict", content=b"x" * 10_000, headers={"Content-Type": "application/json"})
    assert answer.status_code == 401


@pytest.mark.parametrize("path", ["/livez", "/readyz", "/metrics", "/docs.json"])
def test_health_metrics_and_docs_stay_open(client, path):
    assert client.get(path).status_code == 200


def test_openapi_declares_bearer_auth(client):
    spec = client.get("/docs.json").json()
    assert spec["components"]["securitySchemes"]["bearerAuth"] == {"type": "http", "scheme": "bearer"}
    for operation in (spec["paths"]["/predict"]["post"], spec["paths"]["/metadata"]["get"]):
        assert operation["security"] == [{"bearerAuth": []}]
        assert "401" in operation["responses"]


def test_coverage_default_comes_from_the_environment(client):
    interval = client.post("/predict", json={"x": [[0.5]]}, headers=AUTH).json()["interval"]
    assert interval["coverage"] == 0.8
    assert interval["half_width"] == ABS_RESIDUALS[9 - 1]  # ceil(11 * 0.8) = 9


def test_row_limit_comes_from_the_environment(client):
    assert client.post("/predict", json={"x": [[0.5]] * 5}, headers=AUTH).status_code == 200
    answer = client.post("/predict", json={"x": [[0.5]] * 6}, headers=AUTH)
    assert answer.status_code == 400
    assert "at most 5 items" in answer.json()["error"]


def test_body_limit_comes_from_the_environment(client):
    body = b'{"x": [[0.5]], "coverage": 0.5' + b" " * 2048 + b"}"
    answer = client.post("/predict", content=body, headers={**AUTH, "Content-Type": "application/json"})
    assert answer.status_code == 413
    assert "2048 bytes" in answer.json()["error"]


def test_token_never_reaches_the_log(client, server):
    client.post("/predict", json={"x": [[0.5]]}, headers=AUTH)
    client.post("/predict", json={"x": [[0.5]]}, headers={"Authorization": f"Bearer {TOKEN}-wrong"})
    assert TOKEN not in server.log()


def test_settings_never_show_the_token(regression_dir, tmp_path):
    probe = "import service; print(repr(service.SETTINGS)); print(service.SETTINGS)"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SERVICE_")}
    env.update(SERVICE_MODEL_DIR=str(regression_dir), SERVICE_API_TOKEN=TOKEN,
               BENTOML_HOME=str(tmp_path), BENTOML_DO_NOT_TRACK="True")
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=SERVICE_DIR, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "api_token=SecretStr('**********')" in result.stdout
    assert TOKEN not in result.stdout + result.stderr
