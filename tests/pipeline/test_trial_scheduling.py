"""Trial admission on a real Optuna SQLite storage: a process killed while taking a trial leaves no trial behind
that every later run would wait for."""

from __future__ import annotations

import optuna
import pytest

from pipeline.config import load_params
from pipeline.study_attrs import ADMITTED_ATTR, WORKER_ATTR
from pipeline.trial_scheduling import WORKER_ID, open_storage, run_trials
from tests.conftest import ROOT


@pytest.fixture
def storage(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNE_STORAGE", f"sqlite:///{tmp_path}/optuna.db")
    return open_storage(load_params(ROOT / "params.yaml"))


def objective(trial: optuna.Trial) -> float:
    return trial.suggest_float("x", 0, 1)


@pytest.mark.timeout(60)  # before the fix this waited forever for the orphan
def test_a_trial_whose_process_died_while_taking_it_is_run_again_not_waited_for(storage, capsys):
    study = optuna.create_study(storage=storage, study_name="s")
    orphan = study.ask()  # a process killed right after ask(): running, no heartbeat, no worker, no stamp
    orphan.suggest_float("x", 0, 1)
    done = run_trials(study, storage, objective, n_trials=3, callbacks=[lambda *_: None])
    trials = study.get_trials(deepcopy=False)
    assert done == 3
    assert trials[0].state == optuna.trial.TrialState.FAIL
    assert sorted(t.state.name for t in trials[1:]) == ["COMPLETE"] * 3
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == 0)
    assert retry.params == trials[0].params  # queued again with the same hyperparameters
    assert all(t.user_attrs[ADMITTED_ATTR] == t.number and t.user_attrs[WORKER_ATTR] == WORKER_ID for t in trials[1:])
    assert "tune: trial 0 lost its worker (unknown): marked failed and queued again" in capsys.readouterr().err


@pytest.mark.timeout(60)
def test_a_retried_trial_taken_by_a_process_that_died_is_run_again(storage):
    """The retry inherits its lost predecessor's attributes, stamp included: a stamp with another number is no stamp."""
    study = optuna.create_study(storage=storage, study_name="s")
    study.enqueue_trial({"x": 0.25}, user_attrs={ADMITTED_ATTR: 7, WORKER_ATTR: "elsewhere:1"})
    study.ask()  # taken from the queue, then the process died
    assert run_trials(study, storage, objective, n_trials=2, callbacks=[lambda *_: None]) == 2
    states = [t.state.name for t in study.get_trials(deepcopy=False)]
    assert states[0] == "FAIL" and states.count("COMPLETE") == 2
