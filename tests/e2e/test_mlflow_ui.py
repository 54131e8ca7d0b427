"""The MLflow UI for real: `dvc repro` in a throw-away project, scripts/mlflow-ui.sh, headless Chromium.

Checks what a new user sees on opening the URL `make ui` prints, in a fresh browser profile: the runs in the
classic view with the task's metric, validation loss and the key settings as columns, no Assistant panel or
telemetry banner, the champion and the chosen trial identifiable, trials lasting what their fits lasted; then
the trials' validation loss charted in the compare view and the `champion` alias in the registry.
scripts/screenshots.py takes the README's pictures from the same pages.

Needs Debian's chromium, which `make test` installs (`make system-deps`); without it the test fails.

MLflow 3 UI behaviour the project relies on (scripts/mlflow-ui.sh, pipeline/runs_view.py):
- an experiment opens in the GenAI workflow (traces overview) unless `workflowType=machine_learning`
  is in the URL;
- the "MLflow Assistant" panel opens on first load when the page's host is localhost or 127.0.0.1, and not
  on mlflow.localhost (Chromium resolves *.localhost to the loopback address);
- `viewStateShareKey=<key>` opens the view kept in the experiment tag `mlflow.sharedViewState.<key>`;
- the compare view is `#/compare-runs?runs=[<JSON ids>]&experiments=[<JSON ids>]`, and its
  parallel-coordinates plot starts with the first three parameters only.
"""

from __future__ import annotations

import re

import pytest
from mlflow.tracking import MlflowClient

from devtools.mlflow_ui import (
    CHROMIUM,
    CHROMIUM_ARGS,
    SEARCHED,
    UI_TIMEOUT_MS,
    VIEWPORT,
    compare_url,
    is_ready,
    mlflow_ui,
    open_runs,
    show_all_params,
)
from tests.conftest import tool_env

pytestmark = [pytest.mark.slow, pytest.mark.browser]


def require_chromium() -> None:
    if CHROMIUM.exists():
        return
    pytest.fail(f"{CHROMIUM} is missing: run `make system-deps` (`make test` does)")


DURATION = re.compile(r"([\d.]+)(ms|s|min|h)")


def duration_s(text: str) -> float:
    """The runs list's Duration cell ("200ms", "10.4s", "1.2min") in seconds."""
    number, unit = DURATION.fullmatch(text).groups()
    return float(number) * {"ms": 0.001, "s": 1, "min": 60, "h": 3600}[unit]


def row_cells(page, name: str) -> list[str]:
    """The texts of every cell in the runs list's row whose run name contains `name`: the grid draws the name
    (pinned) and the other columns in separate row elements that share a row-index."""
    index = page.get_by_role("row").filter(has_text=name).first.get_attribute("row-index")
    cells = page.locator(f'[role="row"][row-index="{index}"] [role="gridcell"]').all_inner_texts()
    return [cell.strip() for cell in cells]


@pytest.mark.timeout(1200)
def test_mlflow_ui_shows_metrics_champion_and_trials(built_project, tmp_path):
    require_chromium()
    from playwright.sync_api import expect, sync_playwright

    project = built_project  # the UI only reads its store
    name = project.params()["tracking"]["registered_model"]
    client = MlflowClient(tracking_uri=f"sqlite:///{project.path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("keras-mlp")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.info.run_name.startswith("tune keras-mlp-")]
    assert len(parents) == 1, [r.info.run_name for r in runs]
    parent = parents[0]
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(trials) == project.params()["tune"]["n_trials"] and all("val_loss" in t.data.metrics for t in trials)
    champion = client.get_model_version_by_alias(name, "champion")
    champion_run = client.get_run(champion.run_id)
    assert champion_run.info.run_name.endswith(f" · v{champion.version}")
    assert {d.dataset.name for d in champion_run.inputs.dataset_inputs} == {
        "synthetic line training", "synthetic line validation", "synthetic line testing"}

    with mlflow_ui(project.path, tmp_path / "mlflow-ui.log", tool_env()) as ui, sync_playwright() as p:
        assert ui.url.startswith(f"http://mlflow.localhost:{ui.port}/#/experiments/"), ui.url
        url = ui.url
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport=VIEWPORT)  # a fresh profile: nothing remembered
            context.set_default_timeout(UI_TIMEOUT_MS)
            context.set_default_navigation_timeout(UI_TIMEOUT_MS)
            page = context.new_page()
            try:
                # (a) the printed URL: the runs, with the columns that answer "which model, how good, from what"
                open_runs(page, url)
                headers = page.get_by_role("columnheader")
                for column in ["test_rmse", "test_r2", "val_loss", "champion", "chosen", "learning_rate", "Dataset"]:
                    expect(headers.filter(has_text=column).first).to_be_visible()
                expect(page.locator("[data-assistant-ui]")).to_have_count(0)
                expect(page.get_by_text("Information about UI telemetry")).to_have_count(0)
                page.screenshot(path=tmp_path / "runs.png")
                champion_cells = row_cells(page, champion_run.info.run_name[:12])
                assert "true" in champion_cells and "synthetic line training" in " ".join(champion_cells)
                assert "true" in row_cells(page, "(chosen: lowest validation loss)")
                # the trials, not their parent, whose name says "chosen trial 005 (val_loss ...)"
                trials_shown = page.get_by_role("row").filter(has_text=re.compile(r"(?<!chosen )trial 00\d \("))
                expect(trials_shown).to_have_count(len(trials))
                durations = [duration_s(next(c for c in row_cells(page, name) if DURATION.fullmatch(c)))
                             for name in (f"trial {int(t.data.tags['trial_number']):03d} (" for t in trials)]
                assert min(durations) > 0.1, durations

                # (b) the trials side by side: a plotly chart with a val_loss axis
                base = ui.base_url
                page.goto(compare_url(base, [t.info.run_id for t in trials], [experiment.experiment_id]))
                expect(page.get_by_text(f"Comparing {len(trials)} Runs").first).to_be_visible(timeout=UI_TIMEOUT_MS)
                plot = page.locator(".js-plotly-plot").first
                expect(plot).to_be_visible(timeout=UI_TIMEOUT_MS)
                show_all_params(page, SEARCHED)
                expect(plot.locator("text", has_text="val_loss").first).to_be_visible(timeout=UI_TIMEOUT_MS)
                page.screenshot(path=tmp_path / "compare.png")

                # (c) the registry: the model with its champion alias on the evaluated version
                page.goto(f"{base}/#/models/{name}")
                expect(page.get_by_text(f"Version {champion.version}", exact=True).first).to_be_visible(
                    timeout=UI_TIMEOUT_MS)
                expect(page.get_by_text("champion").first).to_be_visible()
                page.screenshot(path=tmp_path / "model.png")
            except Exception:
                page.screenshot(path=tmp_path / "failure.png")
                raise
        finally:
            browser.close()
    assert not ui.outlived_sigterm, f"MLflow UI processes outlived SIGTERM: {ui.outlived_sigterm}"
    assert not is_ready(ui.base_url), f"something still answers on {ui.base_url}"
