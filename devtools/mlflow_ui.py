"""scripts/mlflow-ui.sh (what `make ui` runs) started on a free loopback port, and the UI pages it opens.

Used by scripts/screenshots.py (the README's pictures) and tests/e2e/test_mlflow_ui.py (the same pages,
checked in a real browser).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from devtools.server import free_port

REPO = Path(__file__).resolve().parents[1]
UI_SCRIPT = REPO / "scripts" / "mlflow-ui.sh"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1800, "height": 950}
READY_TIMEOUT_S = 180  # a loaded 2-core machine needs ~5-30 s to import MLflow and open the store
UI_TIMEOUT_MS = 90_000  # first render of a page: the JS bundle is large and the machine is busy
SEARCHED = ["learning_rate", "batch_size", "units_1", "units_2", "optimizer", "activation", "l2"]  # tune.space


def is_ready(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/health", timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def group_members(pgid: int) -> list[psutil.Process]:
    """Live (non-zombie) processes in a process group."""
    members = []
    for process in psutil.process_iter(["status", "cmdline"]):
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(process.pid) == pgid and process.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(process)
    return members


@dataclass
class UiServer:
    port: int
    url: str = ""  # the URL the script printed first: the one a user opens
    outlived_sigterm: list[dict] = field(default_factory=list)  # filled on exit: processes SIGTERM did not end

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.contextmanager
def mlflow_ui(cwd: Path, log_path: Path, env: dict[str, str]) -> Iterator[UiServer]:
    """scripts/mlflow-ui.sh in `cwd` on a free port, in its own process group. On exit the group gets SIGTERM,
    then SIGKILL for whatever is left after 30 s (recorded in `outlived_sigterm`)."""
    ui = UiServer(free_port())
    with log_path.open("wb") as log:
        process = subprocess.Popen(["bash", str(UI_SCRIPT)], cwd=cwd, env={**env, "PORT": str(ui.port)},
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not is_ready(ui.base_url):
            if process.poll() is not None:
                raise RuntimeError(f"mlflow-ui.sh exited with {process.returncode}:\n{log_path.read_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"MLflow UI not ready after {READY_TIMEOUT_S} s:\n{log_path.read_text()}")
            time.sleep(0.5)
        ui.url = log_path.read_text().splitlines()[0].removeprefix("MLflow UI: ")
        yield ui
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while group_members(process.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        leftovers = group_members(process.pid)
        ui.outlived_sigterm = [p.info for p in leftovers]
        if leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=15)


def open_runs(page, url: str) -> None:
    """The runs view `make ui` links to, with the search's parent run expanded to show its trials."""
    page.goto(url)
    page.get_by_role("columnheader").filter(has_text="val_loss").first.wait_for(timeout=UI_TIMEOUT_MS)
    page.get_by_text("Expand rows", exact=True).click()
    page.get_by_text("(chosen: ").first.wait_for()


def compare_url(base: str, run_ids: list[str], experiment_ids: list[str]) -> str:
    query = urllib.parse.urlencode({"runs": json.dumps(run_ids), "experiments": json.dumps(experiment_ids)})
    return f"{base}/#/compare-runs?{query}"


def show_all_params(page, params: list[str]) -> None:
    """The compare plot starts with three parameters and the alphabetically first metric; show `params` against
    validation loss. The selects are type-ahead multi-selects: typing a name and Enter adds it, Backspace drops
    the last."""
    selects = page.locator(".du-bois-light-select")
    selects.first.click()
    shown = selects.first.inner_text()
    for name in params:
        if name not in shown:
            page.keyboard.type(name)
            page.keyboard.press("Enter")
    page.keyboard.press("Escape")
    selects.nth(1).click()
    page.keyboard.press("Backspace")
    page.keyboard.type("val_loss")
    page.keyboard.press("Enter")
    page.keyboard.press("Escape")
    page.get_by_text("Comparing", exact=False).first.click()  # blur the select: no focus ring in the picture
