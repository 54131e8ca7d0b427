"""What each MLflow run tells a reader of the runs list, on a real (SQLite) store: trials dated by the trial
itself, the chosen trial marked, the champion tag following the alias, the runs view's columns."""

from __future__ import annotations

import json

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from pipeline import runs_view
from pipeline.registry import CHAMPION, move_champion_tag
from pipeline.trial_logging import CHOSEN_TAG
from pipeline.paths import Workspace
from pipeline.tune import open_study
from tests.pipeline.test_tune import run_tune, tiny_params


@pytest.mark.slow
def test_trial_runs_carry_the_trials_own_times_and_the_chosen_one_is_marked(tmp_path, monkeypatch):
    params = tiny_params()
    run_tune(tmp_path, monkeypatch, params)
    study = open_study(params, Workspace())
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name(params.tracking.experiment)
    runs = client.search_runs([experiment.experiment_id])
    trials = {int(r.data.tags["trial_number"]): r for r in runs if "trial_number" in r.data.tags}
    assert len(trials) == 6
    for trial in study.trials:
        run = trials[trial.number]
        assert run.info.start_time == int(trial.datetime_start.timestamp() * 1000)
        assert run.info.end_time == int(trial.datetime_complete.timestamp() * 1000)
        assert run.info.end_time - run.info.start_time > 100, "a trial fits a network: not milliseconds"
    chosen = [n for n, r in trials.items() if r.data.tags.get(CHOSEN_TAG) == "true"]
    assert chosen == [study.best_trial.number]
    assert trials[chosen[0]].info.run_name == f"trial {chosen[0]:03d} (chosen: lowest validation loss)"
    parent = next(r for r in runs if "trial_number" not in r.data.tags)
    assert f"chosen trial {chosen[0]:03d}" in parent.info.run_name
    assert parent.info.end_time >= max(r.info.end_time for r in trials.values())


@pytest.fixture
def store(tmp_path):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    yield mlflow.create_experiment("t", artifact_location=(tmp_path / "artifacts").as_uri())
    mlflow.set_tracking_uri(None)


def test_the_champion_tag_moves_with_the_alias(store):
    client = MlflowClient()
    first, second = (client.create_run(store).info.run_id for _ in range(2))
    move_champion_tag(first)
    move_champion_tag(second)
    champions = client.search_runs([store], filter_string=f"tags.{CHAMPION} = 'true'")
    assert [r.info.run_id for r in champions] == [second]


@pytest.mark.parametrize("task, metric", [("regression", "test_rmse"), ("binary", "test_log_loss")])
def test_the_published_view_shows_the_tasks_metric_and_the_key_settings(store, task, metric):
    runs_view.publish(store, task)
    view = json.loads(MlflowClient().get_experiment(store).tags[runs_view.VIEW_TAG])
    assert view["selectedColumns"][:3] == [f"metrics.`{metric}`", view["selectedColumns"][1], "metrics.`val_loss`"]
    assert {"tags.`champion`", "params.`learning_rate`", "attributes.`Dataset`"} <= set(view["selectedColumns"])
    assert runs_view.path(store).endswith(f"workflowType=machine_learning&viewStateShareKey={runs_view.VIEW_KEY}")
