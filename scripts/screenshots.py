"""The README's MLflow pictures, taken from the project's own runs: run it after `make run`.

  .venv/bin/python scripts/screenshots.py        # writes docs/mlflow-runs.png and docs/mlflow-compare.png

It starts scripts/mlflow-ui.sh on a free port (exactly what `make ui` runs), opens the URL the script prints in
headless Chromium (Debian's /usr/bin/chromium, driven by Playwright) with a fresh profile, as a new user would,
and stops the server's process group when done. tests/e2e/test_mlflow_ui.py drives the same pages.
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
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UI_SCRIPT = ROOT / "scripts" / "mlflow-ui.sh"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1800, "height": 950}
READY_TIMEOUT_S = 180  # a loaded 2-core machine needs ~5-30 s to import MLflow and open the store
UI_TIMEOUT_MS = 90_000  # first render of a page: the JS bundle is large and the machine is busy


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def mlflow_ui(cwd: Path, log_path: Path, env: dict[str, str] | None = None) -> Iterator[tuple[subprocess.Popen, str]]:
    """scripts/mlflow-ui.sh in `cwd` on a free port, in its own process group; yields (process, the URL it printed
    first). The caller stops the group (`stop`), so that it can check nothing outlived it."""
    port = free_port()
    with log_path.open("wb") as log:
        process = subprocess.Popen(["bash", str(UI_SCRIPT)], cwd=cwd, env={**(env or os.environ), "PORT": str(port)},
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not answers(port):
            if process.poll() is not None:
                raise RuntimeError(f"mlflow-ui.sh exited with {process.returncode}:\n{log_path.read_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"MLflow UI not ready after {READY_TIMEOUT_S} s:\n{log_path.read_text()}")
            time.sleep(0.5)
        yield process, log_path.read_text().splitlines()[0].removeprefix("MLflow UI: ")
    finally:
        stop(process)


def stop(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=30)


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


SEARCHED = ["learning_rate", "batch_size", "units_1", "units_2", "optimizer", "activation", "l2"]  # tune.space


def finished_trials(store: Path) -> tuple[str, list[str]]:
    """(experiment id, run ids) of the latest search's completed trials, from the project's store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    import yaml

    name = yaml.safe_load((store.parent / "params.yaml").read_text())["tracking"]["experiment"]
    experiment = client.get_experiment_by_name(name).experiment_id
    parent = client.search_runs([experiment], "tags.stage = 'tune' and tags.optuna_study != ''",
                                order_by=["attributes.start_time DESC"])
    parent = next(r for r in parent if "trial_number" not in r.data.tags)
    trials = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
                                              " and tags.trial_state = 'complete'")
    return experiment, [t.info.run_id for t in trials]


def main() -> int:
    from playwright.sync_api import sync_playwright

    experiment, trials = finished_trials(ROOT / "mlflow.db")
    docs = ROOT / "docs"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    with mlflow_ui(ROOT, Path("/tmp") / f"mlflow-ui-{os.getpid()}.log", env) as (_, url), sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(viewport=VIEWPORT).new_page()
            page.set_default_timeout(UI_TIMEOUT_MS)
            open_runs(page, url)
            page.screenshot(path=docs / "mlflow-runs.png")
            base = url.split("/#/")[0]
            page.goto(compare_url(base, trials, [experiment]))
            page.get_by_text(f"Comparing {len(trials)} Runs").first.wait_for()
            show_all_params(page, SEARCHED)
            page.wait_for_timeout(1500)  # let plotly finish its redraw
            page.screenshot(path=docs / "mlflow-compare.png")
        finally:
            browser.close()
    print(f"wrote {docs / 'mlflow-runs.png'} and {docs / 'mlflow-compare.png'} from {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
