"""The Optuna private names tuning relies on still exist and still mean what the code assumes.

All of them are read in pipeline/optuna_private.py only (the last test keeps it that way), so an
Optuna upgrade that renames or drops one fails here, naming the attribute, rather than making
heartbeats, lost-trial retries or the resumable sampler misbehave in a running study.
"""

from __future__ import annotations

import ast
import warnings

import numpy as np
import optuna
import pytest

from pipeline.imports import PACKAGE_DIR
from pipeline.optuna_private import retried_trial_number, sampler_rngs, trial_id

optuna.logging.set_verbosity(optuna.logging.WARNING)
UPGRADE_HINT = "an Optuna upgrade changed it: update pipeline/optuna_private.py, or keep optuna at the uv.lock version"


@pytest.fixture
def storage(tmp_path) -> optuna.storages.RDBStorage:
    """The kind of storage the tune stage uses."""
    return optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/study.db")


def test_trial_id_is_the_storage_id_of_a_running_and_of_a_frozen_trial(storage):
    study = optuna.create_study(storage=storage)
    study.ask()
    running = study.ask()
    frozen = study.get_trials(deepcopy=False)[1]
    for trial in (running, frozen):
        assert storage.get_trial(trial_id(trial)).number == trial.number == 1, f"Trial._trial_id is no longer the storage id; {UPGRADE_HINT}"


def test_sampler_rngs_are_the_streams_the_sampler_draws_from():
    def suggestions(seed: int) -> list[dict]:
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=2)
        rngs = sampler_rngs(sampler)
        assert len(rngs) == 2 and all(isinstance(rng, np.random.RandomState) for rng in rngs)
        for rng in rngs:
            rng.seed(7)
        study = optuna.create_study(sampler=sampler)
        study.optimize(lambda t: (t.suggest_float("x", -5, 5) - 1) ** 2 + t.suggest_int("n", 0, 9), n_trials=6)
        return [t.params for t in study.trials]

    assert suggestions(seed=1) == suggestions(seed=2), \
        f"re-seeding TPESampler._rng.rng and ._random_sampler._rng.rng no longer fixes its suggestions; {UPGRADE_HINT}"


def test_retried_trial_number_names_the_trial_a_retry_repeats(storage):
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    failed = study.trials[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2)(study, failed)
    retry = study.trials[1]
    assert retried_trial_number(failed) is None
    assert retried_trial_number(retry) == failed.number, \
        f"RetryHeartbeatStaleTrialCallback no longer records the retried trial in system_attrs['failed_trial']; {UPGRADE_HINT}"


def defined_private_names() -> set[str]:
    """`_names` the pipeline itself defines: its functions, methods and `self._x` attributes."""
    names = set()
    for path in PACKAGE_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
    return {name for name in names if name.startswith("_")}


def test_no_other_module_reads_a_private_name_of_a_library():
    own = defined_private_names()
    found = []
    for path in sorted(PACKAGE_DIR.glob("*.py")):
        if path.name == "optuna_private.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and node.attr not in own):
                found.append(f"pipeline/{path.name}:{node.lineno} {ast.unparse(node)}")
    assert found == [], ("private attributes read outside pipeline/optuna_private.py; put each behind a function"
                         f" there and test it in this file: {found}")
