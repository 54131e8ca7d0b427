"""The tune stage against a real Optuna study and a real MLflow store (tiny search)."""

from __future__ import annotations

import mlflow
import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipeline.config import parse_params
from pipeline.data import RAW_PATH, load, split, write_frame
from pipeline.tune import BEST_PARAMS_PATH, main as tune_main, open_study, read_best_params, storage_url
from tests.conftest import ROOT, TINY, merge

pytestmark = pytest.mark.slow

SEARCH = {"tune": {"n_trials": 6, "epochs": 60, "patience": 10, "pruner": {"n_startup_trials": 2, "n_warmup_steps": 5},
                   "space": {"optimizer": ["sgd", "adam"], "learning_rate": {"low": 0.0005, "high": 0.05, "log": True}}}}


def tiny_params(override: dict | None = None):
    raw = merge(merge(yaml.safe_load((ROOT / "params.yaml").read_text()), TINY), SEARCH)
    return parse_params(merge(raw, override or {}))


def run_tune(directory, monkeypatch, params):
    directory.mkdir(parents=True, exist_ok=True)
    monkeypatch.chdir(directory)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{directory}/mlflow.db")
    monkeypatch.delenv("TUNE_STORAGE", raising=False)
    frame, schema = load(params.data)
    write_frame(frame, RAW_PATH)
    from pipeline.data import write_splits

    write_splits(split(frame, schema, params.split))
    tune_main(params)
    return read_best_params()


def test_study_trials_become_nested_mlflow_runs(tmp_path, monkeypatch):
    params = tiny_params()
    best = run_tune(tmp_path, monkeypatch, params)

    study = open_study(params)
    assert storage_url(params) == "sqlite:///optuna.db" and (tmp_path / "optuna.db").exists()
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))
    assert len(trials) == 6
    pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    assert pruned, "the tiny search is expected to prune at least one hopeless trial"

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name(params.tracking.experiment)
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 6
    parent = parents[0]
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    states = {int(c.data.tags["trial_number"]): c.data.tags["trial_state"] for c in children}
    assert states == {t.number: t.state.name.lower() for t in trials}
    assert all("val_loss" in c.data.metrics for c in children)
    assert parent.data.metrics["best_val_loss"] == pytest.approx(study.best_value)
    assert parent.data.metrics["pruned_trials"] == len(pruned)

    assert best.model_dump() == {**params.train.hyperparams.model_dump(), **study.best_params}
    assert yaml.safe_load(BEST_PARAMS_PATH.read_text())["learning_rate"] == study.best_params["learning_rate"]


def test_resumed_study_does_not_redo_trials_and_same_seed_same_best(tmp_path, monkeypatch):
    params = tiny_params({"tune": {"n_trials": 3}})
    first = run_tune(tmp_path / "a", monkeypatch, params)
    more = tiny_params({"tune": {"n_trials": 5}})
    tune_main(more)  # same study (same settings and data): only two more trials
    study = open_study(more)
    assert [t.number for t in study.trials] == [0, 1, 2, 3, 4]
    client = MlflowClient(f"sqlite:///{tmp_path / 'a'}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("keras-mlp").experiment_id])
    assert sum("mlflow.parentRunId" in r.data.tags for r in runs) == 5

    again = run_tune(tmp_path / "b", monkeypatch, params)
    assert again == first


def test_zero_trials_uses_train_hyperparams(tmp_path, monkeypatch):
    params = tiny_params({"tune": {"n_trials": 0}})
    assert run_tune(tmp_path, monkeypatch, params) == params.train.hyperparams
    assert not (tmp_path / "optuna.db").exists()
