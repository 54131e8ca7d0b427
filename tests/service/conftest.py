"""Fixtures for the service tests: tiny model directories and real `bentoml serve` processes.

Every server runs `bentoml serve service:MLPService` from service/ (see server.py), bound
to 127.0.0.1 on a free port, with its own BENTOML_HOME and SERVICE_MODEL_DIR; teardown
stops the whole process tree (arbiter and workers).
"""

import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devtools import tiny_onnx_models as models
from devtools.server import REPO, SERVICE_DIR, Server, free_port  # noqa: F401 (tests/e2e import Server from here)

# The service modules are plain files in service/ (BentoML imports them with service/ as cwd);
# the unit tests import them the same way.
sys.path.insert(0, str(SERVICE_DIR))


@pytest.fixture(scope="session")
def model_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def start_server(tmp_path_factory) -> Iterator:
    """Factory: start_server(model_dir, **env) -> a ready Server; all are stopped at session end."""
    started: list[Server] = []
    bentoml_home = tmp_path_factory.mktemp("bentoml_home")
    logs = tmp_path_factory.mktemp("server_logs")

    def start(model_dir: Path, *, wait: bool = True, **env: str) -> Server:
        server = Server(model_dir, logs / f"server{len(started)}.log", bentoml_home, env)
        started.append(server)
        server.start()
        return server.wait_ready() if wait else server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def regression_dir(model_root) -> Path:
    return models.regression_1d(model_root / "regression_1d")


@pytest.fixture(scope="session")
def regression_server(start_server, regression_dir) -> Server:
    return start_server(regression_dir)


@pytest.fixture(scope="session")
def client(regression_server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=regression_server.url, timeout=30) as client:
        yield client
