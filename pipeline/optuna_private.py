"""Every use of an Optuna private name in the pipeline, each behind one small function.

Optuna has no public, warning-free handle for three things tuning needs: a trial's id in its
storage (heartbeats and failing another process's trial are storage calls, which take the id, not
the trial number), a TPE sampler's random streams (pipeline/sampling.py re-seeds them before each
trial) and the number of the trial a retried one repeats. Private names can change in any Optuna
release without notice. With every use here,
tests/pipeline/test_optuna_private_api.py checks each one on real Optuna objects, so an upgrade
that renames one fails that test by name instead of quietly changing what a study does.
"""

from __future__ import annotations

import numpy as np
import optuna

from pipeline.errors import PipelineError


def _private(obj: object, path: str, used_for: str):
    value = obj
    for name in path.split("."):
        try:
            value = getattr(value, name)
        except AttributeError:
            raise PipelineError(
                f"optuna {optuna.__version__} has no {type(obj).__name__}.{path} (a private attribute, used for"
                f" {used_for}): find what replaced it in this Optuna version and update pipeline/optuna_private.py,"
                " or keep optuna at the version in uv.lock") from None
    return value


def trial_id(trial: optuna.Trial | optuna.trial.FrozenTrial) -> int:
    """The trial's id in its storage (unlike `trial.number`, unique across studies)."""
    return _private(trial, "_trial_id", "heartbeats and failing a trial whose worker died")


def sampler_rngs(sampler: optuna.samplers.TPESampler) -> list[np.random.RandomState]:
    """The random streams a TPE sampler draws from: its own, and that of the random sampler it uses for the
    start-up trials."""
    used_for = "re-seeding the sampler before each trial (pipeline/sampling.py)"
    return [_private(sampler, "_rng.rng", used_for), _private(sampler, "_random_sampler._rng.rng", used_for)]


def retried_trial_number(trial: optuna.trial.FrozenTrial) -> int | None:
    """The number of the trial that `trial` retries (queued by RetryHeartbeatStaleTrialCallback), or None.

    Optuna's own RetryHeartbeatStaleTrialCallback.retried_trial_number reads the same system attribute, but is
    experimental and warns on every call."""
    return trial.system_attrs.get("failed_trial")
