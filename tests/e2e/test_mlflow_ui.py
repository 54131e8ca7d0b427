"""The MLflow UI for real: `dvc repro` in a throw-away project, scripts/mlflow-ui.sh, headless Chromium.

Checks what a reader of the README is told to look at: the search's parent run on the experiment
page, the trials' validation loss charted in the compare view, the `champion` alias in the registry.

Needs Debian's chromium, which `make test` installs (`make system-deps`); without it the test fails. `UPDATE_DOCS_SCREENSHOT=1` also rewrites docs/mlflow-compare.png.

MLflow 3 UI quirks handled here:
- an experiment opens in the GenAI workflow (traces overview) unless `workflowType=machine_learning`
  is in the URL or remembered in localStorage (`mlflow.workflowType_v1`);
- on localhost the "MLflow Assistant" panel opens on first load and covers a third of the page;
  localStorage `mlflow.assistant.fab.autoOpenedOnFirstLoad_v1` marks it as already shown;
- the compare view is `#/compare-runs?runs=[<JSON ids>]&experiments=[<JSON ids>]`, and its
  parallel-coordinates plot starts with the first three parameters only.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import ROOT, tool_env

pytestmark = [pytest.mark.slow, pytest.mark.browser]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
UI_SCRIPT = ROOT / "scripts" / "mlflow-ui.sh"
DOCS_SCREENSHOT = ROOT / "docs" / "mlflow-compare.png"
VIEWPORT = {"width": 1400, "height": 900}
READY_TIMEOUT_S = 180  # a loaded 2-core machine needs ~5-30 s to import MLflow and open the store
UI_TIMEOUT_MS = 90_000  # first render of a page: the JS bundle is large and the machine is busy
TINY_SEARCH = {"tune": {"n_trials": 6, "epochs": 40, "patience": 5,
                        "pruner": {"n_startup_trials": 2, "n_warmup_steps": 5}},
               "train": {"epochs": 30, "patience": 5}}
# Seeded before any page script runs: classic (not GenAI) experiment pages, no Assistant panel.
BROWSER_STORAGE = """
try {
  localStorage.setItem('mlflow.workflowType_v1', '"machine_learning"');
  localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');
} catch (e) {}
"""


def require_chromium() -> None:
    if CHROMIUM.exists():
        return
    pytest.fail(f"{CHROMIUM} is missing: run `make system-deps` (`make test` does)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def group_members(pgid: int) -> list[psutil.Process]:
    """Live (non-zombie) processes in a process group."""
    members = []
    for process in psutil.process_iter(["status", "cmdline"]):
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(process.pid) == pgid and process.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(process)
    return members


def is_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def mlflow_ui(cwd: Path, log_path: Path) -> Iterator[str]:
    """scripts/mlflow-ui.sh in `cwd` on a free port; yields its URL; kills its whole process group."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        process = subprocess.Popen(["bash", str(UI_SCRIPT)], cwd=cwd, env={**tool_env(), "PORT": str(port)},
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # own group: teardown kills exactly this tree
    pgid = process.pid
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not is_ready(url):
            if process.poll() is not None:
                raise AssertionError(f"mlflow-ui.sh exited with {process.returncode}:\n{log_path.read_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"MLflow UI not ready after {READY_TIMEOUT_S} s:\n{log_path.read_text()}")
            time.sleep(0.5)
        assert log_path.read_text().splitlines()[0] == f"MLflow UI: {url}"  # the URL comes first
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while group_members(pgid) and time.monotonic() < deadline:
            time.sleep(0.2)
        leftovers = group_members(pgid)
        with contextlib.suppress(ProcessLookupError):
            if leftovers:
                os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=15)
        if sys.exc_info()[0] is None:  # don't hide the test's own failure behind this one
            assert not leftovers, f"MLflow UI processes outlived SIGTERM: {[p.info for p in leftovers]}"
            assert not is_ready(url), f"something still answers on {url}"


def compare_url(base: str, run_ids: list[str], experiment_ids: list[str]) -> str:
    query = urllib.parse.urlencode({"runs": json.dumps(run_ids), "experiments": json.dumps(experiment_ids)})
    return f"{base}/#/compare-runs?{query}"


def show_all_params(page) -> None:
    """The compare plot starts with three parameters; add the rest (for the README picture)."""
    page.locator(".du-bois-light-select").first.click()
    options = page.locator(".du-bois-light-select-item-option")
    options.first.wait_for()
    for option in options.all():
        if "selected" not in (option.get_attribute("class") or ""):
            option.click()
    page.keyboard.press("Escape")
    page.get_by_text("Comparing", exact=False).first.click()  # blur the select: no focus ring in the picture


@pytest.mark.timeout(1200)
def test_mlflow_ui_shows_search_trials_and_champion(project, tmp_path):
    require_chromium()
    from playwright.sync_api import expect, sync_playwright

    project.set_params(TINY_SEARCH)
    project.run("dvc", "repro", timeout=900)

    client = MlflowClient(tracking_uri=f"sqlite:///{project.path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("keras-mlp")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.info.run_name.startswith("tune keras-mlp-")]
    assert len(parents) == 1, [r.info.run_name for r in runs]
    parent = parents[0]
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(trials) == 6 and all("val_loss" in t.data.metrics for t in trials)
    champion = client.get_model_version_by_alias("keras-mlp", "champion")

    with mlflow_ui(project.path, tmp_path / "mlflow-ui.log") as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport=VIEWPORT)
            context.set_default_timeout(UI_TIMEOUT_MS)
            context.set_default_navigation_timeout(UI_TIMEOUT_MS)
            context.add_init_script(BROWSER_STORAGE)
            page = context.new_page()
            try:
                # (a) the experiment's runs: the search's parent run is listed (its trials nest under it)
                page.goto(f"{url}/#/experiments/{experiment.experiment_id}?workflowType=machine_learning")
                expect(page.get_by_text(parent.info.run_name).first).to_be_visible(timeout=UI_TIMEOUT_MS)
                page.screenshot(path=tmp_path / "experiment.png")

                # (b) the trials side by side: a plotly chart with a val_loss axis
                page.goto(compare_url(url, [t.info.run_id for t in trials], [experiment.experiment_id]))
                expect(page.get_by_text(f"Comparing {len(trials)} Runs").first).to_be_visible(timeout=UI_TIMEOUT_MS)
                plot = page.locator(".js-plotly-plot").first
                expect(plot).to_be_visible(timeout=UI_TIMEOUT_MS)
                expect(plot.locator("svg").first).to_be_visible()
                expect(plot.locator("text", has_text="val_loss").first).to_be_visible(timeout=UI_TIMEOUT_MS)
                expect(page.get_by_text("trial 000 (complete)").first).to_be_visible()
                page.screenshot(path=tmp_path / "compare.png")
                if os.environ.get("UPDATE_DOCS_SCREENSHOT") == "1":
                    show_all_params(page)
                    expect(plot.locator("text", has_text="learning_rate").first).to_be_visible()
                    page.wait_for_timeout(1000)  # let plotly finish its redraw
                    DOCS_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
                    page.screenshot(path=DOCS_SCREENSHOT)

                # (c) the registry: the model with its champion alias on the evaluated version
                page.goto(f"{url}/#/models/keras-mlp")
                expect(page.get_by_text(f"Version {champion.version}", exact=True).first).to_be_visible(
                    timeout=UI_TIMEOUT_MS)
                expect(page.get_by_text("champion").first).to_be_visible()
                page.screenshot(path=tmp_path / "model.png")
            except Exception:
                page.screenshot(path=tmp_path / "failure.png")
                raise
        finally:
            browser.close()
