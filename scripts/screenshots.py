"""The README's MLflow pictures, taken from the project's own runs: run it after `make run`.

  .venv/bin/python scripts/screenshots.py        # writes docs/mlflow-runs.png and docs/mlflow-compare.png

It starts scripts/mlflow-ui.sh on a free port (exactly what `make ui` runs), opens the URL the script prints in
headless Chromium (Debian's /usr/bin/chromium, driven by Playwright) with a fresh profile, as a new user would,
and stops the server's process group when done. tests/e2e/test_mlflow_ui.py drives the same pages.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: devtools is a sibling package

from devtools import mlflow_ui as pages  # noqa: E402


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
    with pages.mlflow_ui(ROOT, Path("/tmp") / f"mlflow-ui-{os.getpid()}.log", env) as ui, sync_playwright() as p:
        url = ui.url
        browser = p.chromium.launch(executable_path=str(pages.CHROMIUM), args=pages.CHROMIUM_ARGS)
        try:
            page = browser.new_context(viewport=pages.VIEWPORT).new_page()
            page.set_default_timeout(pages.UI_TIMEOUT_MS)
            pages.open_runs(page, url)
            page.screenshot(path=docs / "mlflow-runs.png")
            base = url.split("/#/")[0]
            page.goto(pages.compare_url(base, trials, [experiment]))
            page.get_by_text(f"Comparing {len(trials)} Runs").first.wait_for()
            pages.show_all_params(page, pages.SEARCHED)
            page.wait_for_timeout(1500)  # let plotly finish its redraw
            page.screenshot(path=docs / "mlflow-compare.png")
        finally:
            browser.close()
    print(f"wrote {docs / 'mlflow-runs.png'} and {docs / 'mlflow-compare.png'} from {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
