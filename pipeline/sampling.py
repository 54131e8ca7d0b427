"""A TPE sampler whose choices survive an interrupted study.

Optuna's seeded TPESampler draws from one random stream for the life of the process, so a study
resumed after a crash suggests different values than an uninterrupted one would have. Here the
stream is re-seeded before each trial from the seed and the number of trials already finished:
the same history gives the same suggestion, however many processes it took to get there.
"""

from __future__ import annotations

import optuna

from pipeline.optuna_private import sampler_rngs

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


class ResumableTPESampler(optuna.samplers.TPESampler):
    def __init__(self, *, seed: int, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self._base_seed = seed

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        finished = len(study.get_trials(deepcopy=False, states=FINISHED))
        trial_seed = (self._base_seed * 1_000_003 + finished) % 2**32
        for rng in sampler_rngs(self):
            rng.seed(trial_seed)
        super().before_trial(study, trial)
