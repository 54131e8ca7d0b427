"""Fixtures for the service tests: tiny model directories and real `bentoml serve` processes.

Every server runs `bentoml serve service:MLPService` from service/, bound to 127.0.0.1
on a free port, with its own BENTOML_HOME and SERVICE_MODEL_DIR; teardown stops the
whole process tree (arbiter and workers).
"""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import pytest

from . import tiny_onnx_models as models

REPO = Path(__file__).resolve().parents[2]
SERVICE_DIR = REPO / "service"
BENTOML = Path(sys.executable).parent / "bentoml"
READY_TIMEOUT_S = 60

# The service modules are plain files in service/ (BentoML imports them with service/ as cwd);
# the unit tests import them the same way.
sys.path.insert(0, str(SERVICE_DIR))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    """One `bentoml serve` process tree."""

    model_dir: Path
    log_path: Path
    bentoml_home: Path
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "Server":
        env = {k: v for k, v in os.environ.items() if not k.startswith("SERVICE_")}
        env.update(
            BENTOML_HOME=str(self.bentoml_home),
            BENTOML_DO_NOT_TRACK="True",
            SERVICE_MODEL_DIR=str(self.model_dir),
            **self.env,
        )
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [str(BENTOML), "serve", "service:MLPService", "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=SERVICE_DIR,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # not in the test runner's process group
        )
        log.close()
        return self

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> "Server":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            if self.is_ready():
                return self
            time.sleep(0.2)
        raise RuntimeError(f"server not ready after {timeout}s:\n{self.log()}")

    def is_ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Signal the arbiter and its workers; SIGKILL whatever is left after 15 s.

        The workers run in sessions of their own (circus calls setsid) and keep serving
        on the inherited socket if only the arbiter dies, so each process is signalled.
        """
        if self.process is None or self.process.poll() is not None:
            return
        try:
            arbiter = psutil.Process(self.process.pid)
            tree = [arbiter, *arbiter.children(recursive=True)]
        except psutil.NoSuchProcess:
            tree = []
        for process in tree if sig == signal.SIGKILL else tree[:1]:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(sig)
        _, alive = psutil.wait_procs(tree, timeout=15)
        for process in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        psutil.wait_procs(alive, timeout=15)
        self.process.wait(timeout=15)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


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
