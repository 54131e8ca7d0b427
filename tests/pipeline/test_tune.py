"""The tune stage against a real Optuna study and a real MLflow store (tiny search)."""

from __future__ import annotations

import mlflow
import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipeline.config import parse_params
from pipeline.data import load, split, write_frame
from pipeline.errors import PipelineError
from pipeline.trial_scheduling import storage_url
from pipeline.paths import Workspace
from pipeline.tune import main as tune_main, open_study, read_best_params, trial_hyperparams

WS = Workspace()  # the tests run in their own directory (chdir): the stores are relative to it
from tests.conftest import ROOT, TINY, merge

pytestmark = pytest.mark.slow

SEARCH = {"tune": {"n_trials": 6, "epochs": 60, "patience": 10, "pruner": {"n_startup_trials": 2, "n_warmup_steps": 5},
                   "space": {"optimizer": ["sgd", "adam"], "learning_rate": {"low": 0.00001, "high": 0.05, "log": True}}}}


def tiny_params(override: dict | None = None):
    raw = merge(merge(yaml.safe_load((ROOT / "params.yaml").read_text()), TINY), SEARCH)
    return parse_params(merge(raw, override or {}))


def run_tune(directory, monkeypatch, params):
    directory.mkdir(parents=True, exist_ok=True)
    monkeypatch.chdir(directory)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{directory}/mlflow.db")
    monkeypatch.delenv("TUNE_STORAGE", raising=False)
    frame, schema = load(params.data)
    write_frame(frame, WS.raw)
    from pipeline.data import write_splits

    write_splits(split(frame, schema, params.split), WS.split_dir)
    tune_main(params, WS)
    return read_best_params(WS.best_params)


def test_study_trials_become_nested_mlflow_runs(tmp_path, monkeypatch):
    params = tiny_params()
    best = run_tune(tmp_path, monkeypatch, params)

    study = open_study(params, WS)
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
    assert yaml.safe_load(WS.best_params.read_text())["learning_rate"] == study.best_params["learning_rate"]


def test_resumed_study_does_not_redo_trials_and_same_seed_same_best(tmp_path, monkeypatch):
    params = tiny_params({"tune": {"n_trials": 3}})
    first = run_tune(tmp_path / "a", monkeypatch, params)
    more = tiny_params({"tune": {"n_trials": 5}})
    tune_main(more, WS)  # same study (same settings and data): only two more trials
    study = open_study(more, WS)
    assert [t.number for t in study.trials] == [0, 1, 2, 3, 4]
    client = MlflowClient(f"sqlite:///{tmp_path / 'a'}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("keras-mlp").experiment_id])
    assert sum("mlflow.parentRunId" in r.data.tags for r in runs) == 5
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    assert {k: parent.data.tags[f"best_{k}"] for k in study.best_params} == {
        k: str(v) for k, v in study.best_params.items()}
    assert parent.data.metrics["best_val_loss"] == pytest.approx(study.best_value)

    again = run_tune(tmp_path / "b", monkeypatch, params)
    assert again == first


def test_zero_trials_uses_train_hyperparams(tmp_path, monkeypatch):
    params = tiny_params({"tune": {"n_trials": 0}})
    assert run_tune(tmp_path, monkeypatch, params) == params.train.hyperparams
    assert not (tmp_path / "optuna.db").exists()


def test_diverging_trials_are_pruned_and_a_search_with_no_survivor_fails_clearly(tmp_path, monkeypatch):
    # SGD at a learning rate near 10 on standardised data blows up within a few steps.
    params = tiny_params({"tune": {"n_trials": 2, "space": {
        "optimizer": ["sgd"], "learning_rate": {"low": 8.0, "high": 10.0}, "dropout": {"low": 0.0, "high": 0.0}}}})
    with pytest.raises(PipelineError, match=r"none of the 2 trials completed .*tune.space.learning_rate"):
        run_tune(tmp_path, monkeypatch, params)
    assert not WS.best_params.exists()
    trials = open_study(params, WS).get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.PRUNED] * 2
    assert all(t.user_attrs["epochs_run"] < params.tune.epochs for t in trials)
    runs = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").search_runs(
        [mlflow.get_experiment_by_name(params.tracking.experiment).experiment_id], "tags.trial_state = 'pruned'")
    assert len(runs) == 2
    reasons = [run.data.tags.get("pruned_because", "") for run in runs]
    assert all(reason.startswith("diverged: validation loss") for reason in reasons), reasons


def test_smoothed_best_ignores_a_single_lucky_epoch():
    from pipeline.tune import smoothed_best

    steady = [1.0] * 30
    lucky = [2.0] * 15 + [0.1] + [2.0] * 14
    assert smoothed_best(steady, window=10) == pytest.approx(1.0)
    assert smoothed_best(lucky, window=10) == pytest.approx(1.81)
    assert smoothed_best(lucky, window=1) == pytest.approx(0.1)
    assert smoothed_best([0.5, 0.7], window=10) == pytest.approx(0.6)  # shorter than the window


def test_a_finished_trial_whose_run_was_never_logged_gets_it_on_the_next_run(tmp_path, monkeypatch):
    """As after a kill between Optuna recording a trial and the callback logging it."""
    params = tiny_params({"tune": {"n_trials": 3}})
    run_tune(tmp_path, monkeypatch, params)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment_id = client.get_experiment_by_name(params.tracking.experiment).experiment_id

    def trial_numbers():
        return sorted(int(r.data.tags["trial_number"]) for r in client.search_runs([experiment_id], "tags.stage = 'tune'")
                      if "trial_number" in r.data.tags)

    lost = next(r for r in client.search_runs([experiment_id], "tags.trial_number = '1'"))
    client.delete_run(lost.info.run_id)
    assert trial_numbers() == [0, 2]
    tune_main(params, WS)  # the study is complete: no new trial, only the missing run
    assert trial_numbers() == [0, 1, 2]
    assert len(client.search_runs([experiment_id], "tags.trial_number = '1'")) == 1


def test_a_trial_logged_twice_still_has_one_run(tmp_path, monkeypatch):
    """A worker's callback and the stage's log_missing can both reach a just-finished trial; the
    second must find the first's run (under the storage lock) and not log another."""
    from pipeline.study_attrs import PARENT_RUN_ATTR
    from pipeline.trial_logging import MlflowTrialLogger

    params = tiny_params({"tune": {"n_trials": 2}})
    run_tune(tmp_path, monkeypatch, params)
    study = open_study(params, WS)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment_id = client.get_experiment_by_name(params.tracking.experiment).experiment_id
    logger = MlflowTrialLogger(study.user_attrs[PARENT_RUN_ATTR], experiment_id, storage_url(params))
    for trial in study.trials:
        logger(study, trial)  # the late callback
    assert logger.log_missing(study) == 0
    runs = client.search_runs([experiment_id], "tags.stage = 'tune'")
    numbers = sorted(r.data.tags["trial_number"] for r in runs if "trial_number" in r.data.tags)
    assert numbers == ["0", "1"]


def finished_trial(fold_losses: list[float], l2: float, units_1: int = 16) -> optuna.trial.FrozenTrial:
    d = optuna.distributions
    searched = {"learning_rate": (0.01, d.FloatDistribution(1e-5, 0.05, log=True)),
                "batch_size": (32, d.CategoricalDistribution([32, 64])),
                "units_1": (units_1, d.IntDistribution(8, 32, log=True)), "units_2": (4, d.IntDistribution(4, 16, log=True)),
                "optimizer": ("adam", d.CategoricalDistribution(["sgd", "adam"])),
                "activation": ("tanh", d.CategoricalDistribution(["tanh", "sigmoid"])),
                "l2": (l2, d.FloatDistribution(1e-6, 1.0, log=True))}
    return optuna.trial.create_trial(
        params={k: v for k, (v, _) in searched.items()}, distributions={k: dist for k, (_, dist) in searched.items()},
        value=sum(fold_losses) / len(fold_losses), user_attrs={"fold_losses": fold_losses})


def test_one_se_picks_the_most_regularised_trial_within_one_standard_error_of_the_lowest():
    from pipeline.tune import choose_trial

    study = optuna.create_study()
    for trial in [
        finished_trial([0.40, 0.50, 0.60], l2=1e-5),   # lowest: 0.5, standard error 0.1 / sqrt(3) = 0.0577
        finished_trial([0.45, 0.55, 0.65], l2=1e-2),   # 0.55: within, stronger L2
        finished_trial([0.50, 0.60, 0.70], l2=1e-1),   # 0.6: outside, however strongly penalised
        finished_trial([0.44, 0.54, 0.64], l2=1e-2, units_1=8),  # same L2 as trial 1, fewer units: wins
        finished_trial([0.46, 0.56, 0.66], l2=1e-3),
    ]:
        study.add_trial(trial)
    one_se = tiny_params({"split": {"folds": 3}, "tune": {"select": "one_se"}})
    chosen, threshold = choose_trial(study, study.best_trial, one_se)
    assert threshold == pytest.approx(0.5 + 0.1 / 3 ** 0.5)
    assert chosen.number == 3
    lowest, threshold = choose_trial(study, study.best_trial, tiny_params({"split": {"folds": 3}}))
    assert (lowest.number, threshold) == (0, pytest.approx(0.5))


def test_one_se_search_hands_train_the_chosen_trial_and_switching_rules_reuses_the_study(tmp_path, monkeypatch, capsys):
    from pipeline.study_attrs import FOLD_LOSSES_ATTR

    wide_l2 = {"split": {"folds": 2}, "tune": {"n_trials": 5, "space": {"l2": {"low": 1e-5, "high": 0.1, "log": True}}}}
    lowest = run_tune(tmp_path, monkeypatch, tiny_params(wide_l2))
    params = tiny_params(merge(wide_l2, {"tune": {"select": "one_se"}}))
    study = open_study(params, WS)
    assert len(study.trials) == 5, "the rule does not change the trials, so switching it resumes the same study"
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    for trial in complete:
        assert len(trial.user_attrs[FOLD_LOSSES_ATTR]) == 2
        assert trial.value == pytest.approx(sum(trial.user_attrs[FOLD_LOSSES_ATTR]) / 2)
    assert lowest.model_dump() == {**params.train.hyperparams.model_dump(), **study.best_params}

    # A finished trial as good as the lowest (so within any standard error) with a stronger L2 than any.
    best = study.best_trial
    stronger = {**best.params, "l2": max(t.params["l2"] for t in complete) * 1.5}
    study.add_trial(optuna.trial.create_trial(params=stronger, distributions=best.distributions, value=best.value,
                                              user_attrs={FOLD_LOSSES_ATTR: best.user_attrs[FOLD_LOSSES_ATTR]}))
    capsys.readouterr()
    tune_main(params, WS)
    assert len(open_study(params, WS).trials) == 6, "the study was complete: no new trial"
    assert read_best_params(WS.best_params).model_dump() == {**params.train.hyperparams.model_dump(), **stronger}
    assert f"tune: trial 5 (L2 {stronger['l2']:.3g}, validation loss {best.value:.4g}) is the most regularised" \
        in capsys.readouterr().out

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name(params.tracking.experiment).experiment_id])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    assert parent.data.tags["select"] == "one_se"
    assert parent.data.tags["best_l2"] == str(stronger["l2"])
    assert (parent.data.metrics["best_trial"], parent.data.metrics["lowest_trial"]) == (5, best.number)
    children = [r for r in runs if r.data.tags.get("trial_state") == "complete"]
    assert children and all({"val_loss_fold_1", "val_loss_fold_2"} <= set(r.data.metrics) for r in children)


def test_a_big_table_is_tuned_on_a_sample_within_the_time_budget(tmp_path, monkeypatch, capsys):
    """tune.sample_rows and tune.timeout_minutes on 2,000 rows: trials see 300 of the 1,600 train + val rows, and a
    budget spent before the first trial ends stops the search after that trial (the stage always gets one)."""
    params = tiny_params({"data": {"n_samples": 2000}, "tune": {"n_trials": 30, "sample_rows": 300,
                                                                "timeout_minutes": 0.001}})
    best = run_tune(tmp_path, monkeypatch, params)
    out = capsys.readouterr().out
    assert "tune: trials fit and validate on a sample of 300 of the 1,600 train + val rows" in out
    assert "tune: time budget spent (tune.timeout_minutes: 0.001) after 1 of 30 trials" in out
    study = open_study(params, WS)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE]
    assert best == trial_hyperparams(study.trials[0], params)
