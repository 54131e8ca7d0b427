"""A study interrupted mid-trial and resumed suggests exactly what an uninterrupted one does."""

from __future__ import annotations

import optuna
import pytest

from pipeline.sampling import ResumableTPESampler

optuna.logging.set_verbosity(optuna.logging.WARNING)


def objective(trial: optuna.Trial) -> float:
    return (trial.suggest_float("a", -5, 5) - 1) ** 2 + trial.suggest_int("b", 0, 9) + \
        (trial.suggest_categorical("c", ["x", "y"]) == "y")


def sampler() -> ResumableTPESampler:
    return ResumableTPESampler(seed=3, n_startup_trials=4)


def completed(study: optuna.Study) -> list[dict]:
    return [t.params for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]


@pytest.mark.parametrize("interrupted_after", [2, 6, 11])
def test_resumed_study_matches_uninterrupted(tmp_path, interrupted_after):
    reference = optuna.create_study(sampler=sampler())
    reference.optimize(objective, n_trials=12)

    storage = f"sqlite:///{tmp_path}/study.db"
    first = optuna.create_study(study_name="s", storage=storage, sampler=sampler())
    first.optimize(objective, n_trials=interrupted_after)
    first.ask()  # the trial a kill -9 leaves RUNNING
    resumed = optuna.load_study(study_name="s", storage=storage, sampler=sampler())
    resumed.optimize(objective, n_trials=12 - interrupted_after)
    assert completed(resumed) == completed(reference)


def test_plain_seeded_tpe_would_not_match(tmp_path):
    """Why the class exists: Optuna's own seeded TPE diverges after a restart."""
    reference = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=3, n_startup_trials=4))
    reference.optimize(objective, n_trials=12)
    storage = f"sqlite:///{tmp_path}/study.db"
    first = optuna.create_study(study_name="s", storage=storage,
                                sampler=optuna.samplers.TPESampler(seed=3, n_startup_trials=4))
    first.optimize(objective, n_trials=6)
    resumed = optuna.load_study(study_name="s", storage=storage,
                                sampler=optuna.samplers.TPESampler(seed=3, n_startup_trials=4))
    resumed.optimize(objective, n_trials=6)
    assert completed(resumed) != completed(reference)
