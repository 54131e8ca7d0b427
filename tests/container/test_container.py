"""The newcomer's journey, on real artifacts: pipeline -> package -> image -> answers.

What the README tells a user to do, in a copy of the project (small params, a renamed registered
model): `dvc repro` (the run's shared built project), `make serve`'s bento, and the image built by
the top-level Dockerfile from that project's own models/package (no hand-made model anywhere). The
image runs as deployed (read-only root, non-root user, a tmpfs for /tmp) and must answer exactly as
the local service does. Then an edit to each pipeline module, in a copy, must make `dvc status`
report exactly the stages that import it. One image build per run: every check here shares it.
That a fresh clone's `make run` reproduces the committed dvc.lock is checked by .ci/run itself, on
the real params (`git status` must be clean after it).

Built on a local Debian stand-in for python:3.11-slim, since no image registry is reachable here.
Needs root (or sudo) on a Debian-like machine: scripts/install-container-tools.sh installs
podman, buildah, runc and debootstrap when missing. Run it with `make container-test`
(or: scripts/container-test.sh). Timings are printed and written to
.cache/containers/last-run.json.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from tests.conftest import Project
from tests.pipeline.test_stage_deps import declared_stages, module_path, stage_modules
from devtools.server import Server, free_port

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


@pytest.fixture(scope="module")
def journey(built_project: Project, tmp_path_factory: pytest.TempPathFactory) -> Project:
    """A copy of the project after its `dvc repro` (the shared built project stays untouched): what the image
    and `make serve` are built from. Its MLflow artifacts stay where the store's absolute URIs point."""
    copy = Project(tmp_path_factory.mktemp("journey") / "project")
    shutil.copytree(built_project.path, copy.path, symlinks=True, ignore=shutil.ignore_patterns("mlartifacts"))
    return copy


@pytest.fixture(scope="module")
def local_service(journey: Project, tmp_path_factory: pytest.TempPathFactory):
    """`make serve`: the bento the package stage built, from the project's BentoML store."""
    bento = json.loads((journey.path / "models/bento.json").read_text())["bento"]
    logs = tmp_path_factory.mktemp("serve")
    server = Server(None, logs / "serve.log", journey.path / "bentoml", bento=bento).start()
    try:
        yield server.wait_ready()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def image(podman_env: dict[str, str], base_image: str, journey: Project):
    tag = f"localhost/keras-mlp-service:test-{uuid.uuid4().hex[:8]}"
    cmd = ["podman", "build", "--format", "docker", "--layers=false", "--pull=never",
           "--build-arg", f"BASE_IMAGE={base_image}", "-t", tag]
    if HOST_CA_BUNDLE.is_file():  # this network intercepts HTTPS: pip in the build needs the host's CAs
        cmd += ["-v", f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro"]
    start = time.monotonic()
    try:
        sh([*cmd, "."], env=podman_env, timeout=1800, cwd=journey.path)  # the README's `docker build .`
        record("image_build_seconds", time.monotonic() - start)
        size = int(sh(["podman", "image", "inspect", "--format", "{{.Size}}", tag], env=podman_env).stdout)
        record("image_size_mb", size / 1e6)
        yield tag
    finally:
        sh(["podman", "rmi", "--force", tag], env=podman_env, check=False)
        sh(["podman", "image", "prune", "--force"], env=podman_env, check=False)  # builder-stage leftovers


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
        self.started_in = 0.0  # seconds from `podman run` to /readyz

    def podman(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return sh(["podman", *args], env=self.env, check=check, timeout=120)

    def exec(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.podman("exec", self.name, *cmd, check=check)

    def inspect(self) -> dict:
        return json.loads(self.podman("inspect", self.name).stdout)[0]

    def logs(self) -> str:
        result = self.podman("logs", self.name, check=False)
        return "\n".join((result.stdout + result.stderr).splitlines()[-40:])


@contextlib.contextmanager
def running(podman_env: dict[str, str], image: str, *options: str):
    """The image run as deployed (read-only root, a tmpfs for /tmp: BENTOML_HOME, HOME, TMPDIR point there),
    ready on a free port; removed afterwards. --health-interval=disable: no systemd here to schedule the
    checks; a test runs the image's HEALTHCHECK itself with `podman healthcheck run`."""
    name = f"keras-mlp-test-{uuid.uuid4().hex[:8]}"
    port = free_port()
    c = Container(name, f"http://127.0.0.1:{port}", podman_env)
    try:
        start = time.monotonic()
        sh(["podman", "run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:3000", "--read-only",
            "--tmpfs", "/tmp:rw,size=256m,mode=1777", "--health-interval=disable", *options, image],
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
        c.started_in = time.monotonic() - start
        yield c
    finally:
        sh(["podman", "rm", "--force", "--time", "5", name], env=podman_env, check=False)


@pytest.fixture(scope="module")
def container(podman_env: dict[str, str], image: str):
    with running(podman_env, image) as c:
        record("cold_start_to_readyz_seconds", c.started_in)
        yield c


@pytest.fixture(scope="module")
def categorical_container(podman_env: dict[str, str], image: str, categorical_project: Project,
                          tmp_path_factory: pytest.TempPathFactory):
    """The same image serving the package `dvc repro` made from examples/rentals.csv (categorical columns),
    mounted over the baked-in /opt/model: one more cold start, no second build."""
    model_dir = tmp_path_factory.mktemp("categorical") / "model"
    shutil.copytree(categorical_project.path / "models/package", model_dir)
    model_dir.chmod(0o755)  # the image's non-root user reads it, whatever the host's umask
    for item in model_dir.iterdir():
        item.chmod(0o644)
    with running(podman_env, image, "-v", f"{model_dir}:/opt/model:ro") as c:
        record("categorical_cold_start_to_readyz_seconds", c.started_in)
        yield c


# --------------------------------------------------------------------------------------------
# Tests


def test_the_built_project_is_up_to_date_and_committed(journey: Project) -> None:
    status = journey.run("git", "status", "--porcelain").stdout
    assert status == "", f"tracked files differ from the commit made after `dvc repro`:\n{status}"
    assert json.loads(journey.run("dvc", "status", "--json").stdout) == {}


def test_outputs_have_ordinary_modes(journey: Project) -> None:
    """What an ordinary write gives (the umask), so any user and the image can read them."""
    umask = os.umask(0o022)  # the test runner's, inherited by dvc repro
    os.umask(umask)
    for path in ["models/package", "models/package/card.json", "models/package/model.onnx", "models/registry.json",
                 "metrics/evaluate.json", "models/model.keras"]:
        full = journey.path / path
        expected = (0o777 if full.is_dir() else 0o666) & ~umask
        assert full.stat().st_mode & 0o777 == expected, (path, oct(full.stat().st_mode & 0o777))


def test_container_answers_as_the_local_service(container: Container, local_service: Server, journey: Project) -> None:
    card = json.loads((journey.path / "models/package/card.json").read_text())
    assert card["name"] == "line-mlp"
    rows = [[-2.5], [-0.3], [0.0], [0.7], [3.0]]
    for body in ({"x": rows}, {"x": rows, "coverage": 0.8}, {"records": [{"x": 0.25}]}):
        status, served = http("POST", f"{container.url}/predict", body)
        local = httpx.post(f"{local_service.url}/predict", json=body, timeout=30)
        assert status == 200 and local.status_code == 200, (served, local.text)
        assert json.loads(served) == local.json()
    status, metadata = http("GET", f"{container.url}/metadata")
    assert status == 200 and json.loads(metadata) == httpx.get(f"{local_service.url}/metadata", timeout=30).json()
    metadata = json.loads(metadata)
    assert metadata["mlflow"]["registered_model"] == "line-mlp" and metadata["mlflow"]["model_version"] == "1"
    assert metadata["metrics"] == json.loads((journey.path / "metrics/evaluate.json").read_text())["model"]


def test_editing_a_module_reruns_the_stages_that_import_it(journey: Project) -> None:
    importers = {stage: stage_modules(stage) for stage in declared_stages()}
    for module in sorted(set().union(*importers.values())):
        path = journey.path / module_path(module)
        original = path.read_text()
        path.write_text(original + "\n# an edit\n")
        try:
            changed = set(json.loads(journey.run("dvc", "status", "--json").stdout))
        finally:
            path.write_text(original)
        expected = {stage for stage, modules in importers.items() if module in modules}
        assert changed == expected, f"editing {module_path(module)}: dvc status reports {sorted(changed)}"


def test_container_takes_categories_and_flags_unseen_ones(categorical_container: Container,
                                                          categorical_project: Project) -> None:
    card = json.loads((categorical_project.path / "models/package/card.json").read_text())
    records = [{"area_m2": 60.0, "district": "centre", "zip": "1012", "furnished": "yes", "floor": 2},
               {"area_m2": 60.0, "district": "harbour", "zip": "9999", "furnished": "no", "floor": 2}]
    url = categorical_container.url
    status, served = http("POST", f"{url}/predict", {"records": records})
    assert status == 200, served
    answer = json.loads(served)
    session = ort.InferenceSession(str(categorical_project.path / "models/package/model.onnx"),
                                   providers=["CPUExecutionProvider"])
    x = np.float32([[(f["categories"].index(r[f["name"]]) + 1 if r[f["name"]] in f["categories"] else 0)
                     if f["kind"] == "categorical" else r[f["name"]] for f in card["features"]] for r in records])
    expected = session.run(None, {session.get_inputs()[0].name: x})[0][:, 0]  # unseen: index 0
    np.testing.assert_allclose(answer["predictions"], expected, rtol=1e-6)
    assert answer["unseen_categories"] == [[], ["district", "zip"]] and answer["extrapolated"] == [False, True]
    status, served = http("POST", f"{url}/predict", {"records": [{**records[0], "zip": 1012}]})
    assert status == 400 and "records[0].zip: Input should be a valid string" in json.loads(served)["error"]
    status, metadata = http("GET", f"{url}/metadata")
    assert status == 200 and json.loads(metadata)["features"] == card["features"]


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
