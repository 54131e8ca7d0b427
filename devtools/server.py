"""A real `bentoml serve service:MLPService` process tree on 127.0.0.1, for tests and benches.

Used by the service tests (through conftest.py), the benches and scripts/fuzz.py.
The server runs from service/ with its own BENTOML_HOME and SERVICE_MODEL_DIR, bound to
127.0.0.1 on a free port; stop() ends the whole tree (arbiter and workers).
"""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

REPO = Path(__file__).resolve().parents[1]
SERVICE_DIR = REPO / "service"
BENTOML = Path(sys.executable).parent / "bentoml"
READY_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    """One `bentoml serve` process tree: service/ on `model_dir`, or a built bento (`bento` is its
    tag; `model_dir` None) from `bentoml_home`'s store, as `make serve` runs it."""

    model_dir: Path | None
    log_path: Path
    bentoml_home: Path
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    bento: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "Server":
        env = {k: v for k, v in os.environ.items() if not k.startswith("SERVICE_")}
        env.update(
            BENTOML_HOME=str(self.bentoml_home),
            BENTOML_DO_NOT_TRACK="True",
            **({"SERVICE_MODEL_DIR": str(self.model_dir)} if self.model_dir else {}),
            **self.env,
        )
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [str(BENTOML), "serve", self.bento or "service:MLPService", "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=self.bentoml_home.parent if self.bento else SERVICE_DIR,
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

    def process_tree(self) -> list[psutil.Process]:
        """The arbiter and all its descendants (the workers), as they are now."""
        if self.process is None or self.process.poll() is not None:
            return []
        try:
            arbiter = psutil.Process(self.process.pid)
            return [arbiter, *arbiter.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def rss_bytes(self) -> int:
        """Resident memory of the whole process tree."""
        total = 0
        for process in self.process_tree():
            with contextlib.suppress(psutil.NoSuchProcess):
                total += process.memory_info().rss
        return total


def bench_model(requested: Path | None, workdir: Path) -> tuple[Path, bytes]:
    """The model a bench serves (`requested`, else models/package when it is there, else the
    tiny y = 2x + 1 model written to `workdir`) and a single-row /predict body for it."""
    from devtools import tiny_onnx_models

    model_dir = requested or REPO / "models" / "package"
    if not ((model_dir / "model.onnx").exists() and (model_dir / "card.json").exists()):
        model_dir = tiny_onnx_models.regression_1d(workdir / "tiny_model")
    card = json.loads((model_dir / "card.json").read_text())
    row = [f["categories"][0] if f.get("kind") == "categorical" else f["min"] for f in card["features"]]
    return model_dir, json.dumps({"x": [row]}).encode()
