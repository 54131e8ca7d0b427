"""The serving image, built from the top-level Dockerfile and run under podman.

Builds the image (on a local Debian stand-in for python:3.11-slim, since no image registry
is reachable here), runs it read-only as it would be deployed, and checks it answers like
ONNX Runtime does on the same model directory, as a non-root user, with a passing HEALTHCHECK.

Needs root (or sudo) on a Debian-like machine: scripts/install-container-tools.sh installs
podman, buildah, runc and debootstrap when missing. Run it with `make container-test`
(or: scripts/container-test.sh). Timings are printed and written to
.cache/containers/last-run.json.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"
BASE_IMAGE = "localhost/py311-base:test"
MAX_IMAGE_BYTES = 600 * 10**6
READY_TIMEOUT = 240  # s; BentoML's cold start is ~10 s here, but CI machines can be slow
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")

pytestmark = [pytest.mark.container, pytest.mark.slow]

TIMINGS: dict[str, float | int | str] = {}


def record(name: str, value: float | int | str) -> None:
    TIMINGS[name] = round(value, 1) if isinstance(value, float) else value
    print(f"[container] {name}: {TIMINGS[name]}")
    out = ROOT / ".cache" / "containers" / "last-run.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(TIMINGS, indent=2) + "\n")


def sh(cmd: list[str], *, env: dict[str, str], check: bool = True, timeout: float = 600,
       cwd: Path | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-60:])
        raise AssertionError(f"`{' '.join(cmd)}` failed with exit code {result.returncode}:\n{tail}")
    return result


# --------------------------------------------------------------------------------------------
# Fixtures: tools -> podman environment -> base image -> build context -> image -> container


@pytest.fixture(scope="module")
def podman_env() -> dict[str, str]:
    """Install the tools if missing, then the per-project podman config (nothing global)."""
    install = subprocess.run([str(SCRIPTS / "install-container-tools.sh")], capture_output=True, text=True,
                             timeout=900)
    assert install.returncode == 0, (
        "could not install podman/buildah/runc/debootstrap (scripts/install-container-tools.sh; "
        f"needs root and apt):\n{install.stdout}\n{install.stderr}"
    )
    printed = subprocess.run(["bash", str(SCRIPTS / "container-env.sh"), "--print"], capture_output=True,
                             text=True, check=True).stdout
    env = dict(os.environ)
    env.update(line.split("=", 1) for line in printed.splitlines() if "=" in line)
    sh(["podman", "info"], env=env, timeout=60)
    return env


@pytest.fixture(scope="module")
def base_image(podman_env: dict[str, str]) -> str:
    start = time.monotonic()
    result = sh([str(SCRIPTS / "build-base-image.sh"), BASE_IMAGE], env=podman_env, timeout=1200)
    record("base_image_seconds", time.monotonic() - start)
    record("base_image_source", "cache" if "debootstrap took" not in result.stdout else "debootstrap")
    return BASE_IMAGE


def tiny_regression_model(directory: Path) -> None:
    """y = 2x + 1 on one feature x in [-1, 1], with a card the service accepts."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])],
        "tiny_regression",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])],
        initializer=[numpy_helper.from_array(np.array([[2.0]], np.float32), "W"),
                     numpy_helper.from_array(np.array([1.0], np.float32), "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    directory.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(directory / "model.onnx"))
    card = {
        "name": "keras-mlp", "task": "regression",
        "features": [{"name": "x", "min": -1.0, "max": 1.0}], "target": "y", "class_labels": None,
        "interval": {"method": "split-conformal", "calibration": "validation", "default_coverage": 0.9,
                     "abs_residuals": [0.01, 0.02, 0.05, 0.1, 0.2]},
        "metrics": {}, "mlflow": {"run_id": None, "model_version": None},
        "git_commit": None, "data_hash": None, "params": {},
    }
    (directory / "card.json").write_text(json.dumps(card, indent=2))


@pytest.fixture(scope="module")
def build_context(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Dockerfile + .dockerignore + service/ + models/package (the repo's, else a tiny model)."""
    ctx = tmp_path_factory.mktemp("context")
    shutil.copy2(ROOT / "Dockerfile", ctx / "Dockerfile")
    shutil.copy2(ROOT / ".dockerignore", ctx / ".dockerignore")
    shutil.copytree(ROOT / "service", ctx / "service", ignore=shutil.ignore_patterns("__pycache__", "bentoml"))
    package = ROOT / "models" / "package"
    if (package / "model.onnx").is_file() and (package / "card.json").is_file():
        shutil.copytree(package, ctx / "models" / "package")
        record("model", "models/package")
    else:
        tiny_regression_model(ctx / "models" / "package")
        record("model", "tiny y=2x+1")
    return ctx


@pytest.fixture(scope="module")
def image(podman_env: dict[str, str], base_image: str, build_context: Path):
    tag = f"localhost/keras-mlp-service:test-{uuid.uuid4().hex[:8]}"
    cmd = ["podman", "build", "--format", "docker", "--layers=false", "--pull=never",
           "--build-arg", f"BASE_IMAGE={base_image}", "-t", tag]
    if HOST_CA_BUNDLE.is_file():  # this network intercepts HTTPS: pip in the build needs the host's CAs
        cmd += ["-v", f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro"]
    start = time.monotonic()
    try:
        sh([*cmd, str(build_context)], env=podman_env, timeout=1800)
        record("image_build_seconds", time.monotonic() - start)
        size = int(sh(["podman", "image", "inspect", "--format", "{{.Size}}", tag], env=podman_env).stdout)
        record("image_size_mb", size / 1e6)
        yield tag
    finally:
        sh(["podman", "rmi", "--force", tag], env=podman_env, check=False)
        sh(["podman", "image", "prune", "--force"], env=podman_env, check=False)  # builder-stage leftovers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: dict | None = None, timeout: float = 10) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


class Container:
    def __init__(self, name: str, url: str, env: dict[str, str]):
        self.name, self.url, self.env = name, url, env

    def podman(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return sh(["podman", *args], env=self.env, check=check, timeout=120)

    def exec(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.podman("exec", self.name, *cmd, check=check)

    def inspect(self) -> dict:
        return json.loads(self.podman("inspect", self.name).stdout)[0]

    def logs(self) -> str:
        result = self.podman("logs", self.name, check=False)
        return "\n".join((result.stdout + result.stderr).splitlines()[-40:])


@pytest.fixture(scope="module")
def container(podman_env: dict[str, str], image: str):
    name = f"keras-mlp-test-{uuid.uuid4().hex[:8]}"
    port = free_port()
    c = Container(name, f"http://127.0.0.1:{port}", podman_env)
    try:
        # As deployed: read-only root, a tmpfs for /tmp (BENTOML_HOME, HOME, TMPDIR point there).
        # --health-interval=disable: no systemd here to schedule the checks; the test runs the
        # image's HEALTHCHECK itself with `podman healthcheck run`.
        start = time.monotonic()
        sh(["podman", "run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:3000", "--read-only",
            "--tmpfs", "/tmp:rw,size=256m,mode=1777", "--health-interval=disable", image],
           env=podman_env, timeout=120)
        deadline = start + READY_TIMEOUT
        while True:
            try:
                status, _ = http("GET", f"{c.url}/readyz", timeout=2)
                if status == 200:
                    break
            except OSError:
                pass
            state = c.inspect()["State"]
            if not state.get("Running"):
                pytest.fail(f"container exited ({state.get('ExitCode')}) before /readyz:\n{c.logs()}")
            if time.monotonic() > deadline:
                pytest.fail(f"/readyz not 200 within {READY_TIMEOUT} s:\n{c.logs()}")
            time.sleep(0.25)
        record("cold_start_to_readyz_seconds", time.monotonic() - start)
        yield c
    finally:
        sh(["podman", "rm", "--force", "--time", "5", name], env=podman_env, check=False)


# --------------------------------------------------------------------------------------------
# Tests


def reference_outputs(model_dir: Path, rows: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: rows.astype(np.float32)})[0].astype(np.float64)


def test_predict_matches_onnxruntime(container: Container, build_context: Path) -> None:
    model_dir = build_context / "models" / "package"
    card = json.loads((model_dir / "card.json").read_text())
    rows = np.full((1, len(card["features"])), 0.5)  # {"x": [[0.5]]} for the one-feature model
    status, body = http("POST", f"{container.url}/predict", {"x": rows.tolist()})
    assert status == 200, body
    answer = json.loads(body)
    expected = reference_outputs(model_dir, rows)
    if card["task"] == "regression":
        np.testing.assert_allclose(answer["predictions"], expected[:, 0], rtol=1e-6, atol=1e-6)
        if TIMINGS.get("model") == "tiny y=2x+1":
            assert answer["predictions"] == pytest.approx([2.0])  # 2 * 0.5 + 1
    elif card["task"] == "binary":
        np.testing.assert_allclose([p[1] for p in answer["probabilities"]], expected[:, 0], rtol=1e-6, atol=1e-6)
    else:
        np.testing.assert_allclose(answer["probabilities"], expected, rtol=1e-6, atol=1e-6)


def test_bad_request_is_a_client_error(container: Container) -> None:
    status, _ = http("POST", f"{container.url}/predict", {"x": "not rows"})
    assert 400 <= status < 500


def test_runs_as_non_root(container: Container) -> None:
    uid_lines = [line for line in container.exec("cat", "/proc/1/status").stdout.splitlines()
                 if line.startswith(("Uid:", "Gid:"))]
    ids = [int(v) for line in uid_lines for v in line.split()[1:]]
    assert len(ids) == 8 and 0 not in ids, uid_lines  # real/effective/saved/fs uid and gid of PID 1
    assert container.exec("id", "-u").stdout.strip() != "0"


def test_root_filesystem_is_read_only(container: Container) -> None:
    assert container.inspect()["HostConfig"]["ReadonlyRootfs"] is True
    for path in ("/opt/service/x", "/opt/model/x", "/opt/venv/x"):
        result = container.exec("touch", path, check=False)
        assert result.returncode != 0 and "Read-only file system" in result.stderr, (path, result.stderr)


def test_healthcheck_reports_healthy(container: Container) -> None:
    config = container.inspect()["Config"]
    assert "readyz" in " ".join(config.get("Healthcheck", {}).get("Test", [])), config.get("Healthcheck")
    result = container.podman("healthcheck", "run", container.name, check=False)
    assert result.returncode == 0, f"{result.stdout}{result.stderr}\n{container.logs()}"
    state = container.inspect()["State"]
    health = state.get("Health") or state.get("Healthcheck") or {}  # name differs across podman versions
    assert health.get("Status") == "healthy", health


def test_no_build_tools_or_pip_in_final_image(container: Container) -> None:
    found = container.exec("sh", "-c", "for t in gcc cc c++ make; do command -v $t; done; true").stdout.split()
    assert found == [], found
    assert container.exec("python", "-m", "pip", "--version", check=False).returncode != 0


def test_bytecode_is_precompiled(container: Container) -> None:
    """Imports come from the build-time .pyc files; nothing is recompiled at start-up."""
    result = container.exec("python", "-v", "-c", "import bentoml, onnxruntime, numpy, api_models, model_bundle")
    lines = result.stderr.splitlines()
    loaded = [line for line in lines if line.startswith("# code object from '/opt/")]
    recompiled = [line for line in lines if "bytecode is stale" in line or line.startswith("# could not")]
    assert len(loaded) > 100 and not recompiled, recompiled[:5]


def test_image_size(container: Container, image: str) -> None:
    size = int(container.podman("image", "inspect", "--format", "{{.Size}}", image).stdout)
    assert size <= MAX_IMAGE_BYTES, f"image is {size / 1e6:.0f} MB (limit {MAX_IMAGE_BYTES / 1e6:.0f} MB)"
