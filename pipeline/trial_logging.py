"""What the tuning study shows: one MLflow parent run per search with a child run per trial, and a progress bar.

Any process sharing the study (the stage or a worker) may create the parent run or log a trial, so each
check-then-log step runs under the storage lock (pipeline/trial_scheduling.py) and state shared between processes
lives in the study itself (pipeline/study_attrs.py): a trial gets exactly one run, whoever finishes it, finds it
lost, or fills the gap a killed process left.
"""

from __future__ import annotations

import math
import sys
import time

import mlflow
import optuna
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from tqdm import tqdm

from pipeline.config import Params
from pipeline.optuna_private import retried_trial_number
from pipeline.study_attrs import EPOCHS_RUN_ATTR, FOLD_LOSSES_ATTR, PARENT_RUN_ATTR, PRUNED_BECAUSE_ATTR, WORKER_ATTR
from pipeline.trial_scheduling import FINISHED, finished_trials, storage_lock, storage_url

CHOSEN_TAG = "chosen"  # on the trial run whose hyperparameters train gets


def trial_run_name(number: int, state: str) -> str:
    return f"trial {number:03d} ({state})"


def _millis(moment) -> int | None:
    return None if moment is None else int(moment.timestamp() * 1000)


def parent_run_id(study: optuna.Study, params: Params) -> str:
    """The search's MLflow parent run, created once per study (under the storage lock: by whichever process comes
    first) and shared through its user attributes."""
    with storage_lock(storage_url(params)):
        run_id = study.user_attrs.get(PARENT_RUN_ATTR)
        if run_id is None:
            run = mlflow.start_run(run_name=f"tune {study.study_name} ({params.tune.n_trials} trials)")
            mlflow.set_tags({"stage": "tune", "optuna_study": study.study_name})
            mlflow.log_params({"n_trials": params.tune.n_trials, "sampler": "TPE", "pruner": "median",
                               "tune_seed": params.tune.seed, "sample_rows": params.tune.sample_rows})
            mlflow.log_dict(params.tune.space.model_dump(), "search_space.json")
            mlflow.end_run()
            run_id = run.info.run_id
            study.set_user_attr(PARENT_RUN_ATTR, run_id)
    return run_id


class MlflowTrialLogger:
    """Optuna callback: each trial (finished, or failed) becomes one nested MLflow run under the search's parent,
    logged by whichever process ran it (a lost trial: by the process that found it lost).

    Check-and-log happens under the storage lock, so a trial gets exactly one run even when the stage's
    `log_missing` looks while a worker, between recording a trial and logging it, is about to log it too."""

    def __init__(self, parent_run_id: str, experiment_id: str, storage: str):
        self.parent_run_id = parent_run_id
        self.experiment_id = experiment_id
        self.storage = storage

    def logged_trials(self, number: int | None = None) -> set[str]:
        """Trial numbers that have a run (all, or only `number` if it has one)."""
        query = f"tags.mlflow.parentRunId = '{self.parent_run_id}'"
        if number is not None:
            query += f" and tags.trial_number = '{number}'"
        runs = mlflow.search_runs(experiment_ids=[self.experiment_id], output_format="list", filter_string=query)
        return {run.data.tags.get("trial_number") for run in runs}

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        with storage_lock(self.storage):
            if not self.logged_trials(trial.number):
                self._log(study, trial)

    def _log(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """The trial's run, dated with the trial's own start and end: it is logged once the trial is over, so
        MLflow's clock would give every trial the few milliseconds the logging took."""
        state = trial.state.name.lower()
        tags = {MLFLOW_PARENT_RUN_ID: self.parent_run_id, "stage": "tune", "trial_number": str(trial.number),
                "trial_state": state, "optuna_study": study.study_name,
                "worker": trial.user_attrs.get(WORKER_ATTR, "unknown")}
        if PRUNED_BECAUSE_ATTR in trial.user_attrs:
            tags[PRUNED_BECAUSE_ATTR] = trial.user_attrs[PRUNED_BECAUSE_ATTR]
        retried = retried_trial_number(trial)
        if retried is not None:
            tags["retry_of_trial"] = str(retried)
        metrics = {"epochs_run": trial.user_attrs.get(EPOCHS_RUN_ATTR, len(trial.intermediate_values))}
        if trial.value is not None:
            metrics["val_loss"] = trial.value
        elif trial.intermediate_values:
            metrics["val_loss"] = min(trial.intermediate_values.values())
        fold_losses = trial.user_attrs.get(FOLD_LOSSES_ATTR, [])
        if len(fold_losses) > 1:
            metrics |= {f"val_loss_fold_{i}": loss for i, loss in enumerate(fold_losses, start=1)}
        started, ended = _millis(trial.datetime_start), _millis(trial.datetime_complete)
        client = MlflowClient()
        run = client.create_run(self.experiment_id, start_time=started, tags=tags,
                                run_name=trial_run_name(trial.number, state))
        client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in trial.params.items()],
                         metrics=[Metric(k, float(v), ended or started, 0) for k, v in metrics.items()])
        status = "FAILED" if trial.state == optuna.trial.TrialState.FAIL else "FINISHED"
        client.set_terminated(run.info.run_id, status=status, end_time=ended)

    def mark_chosen(self, chosen: optuna.trial.FrozenTrial, reason: str) -> None:
        """Tag the trial train gets (`chosen=true`, its run name says so) and untag any earlier pick: a resumed
        study with more trials can choose another."""
        client = MlflowClient()
        query = f"tags.mlflow.parentRunId = '{self.parent_run_id}'"
        for run in mlflow.search_runs(experiment_ids=[self.experiment_id], output_format="list", filter_string=query):
            number = run.data.tags.get("trial_number")
            was_chosen = run.data.tags.get(CHOSEN_TAG) == "true"
            if number == str(chosen.number):
                client.set_tag(run.info.run_id, CHOSEN_TAG, "true")
                client.set_tag(run.info.run_id, "mlflow.runName", trial_run_name(chosen.number, f"chosen: {reason}"))
            elif was_chosen:
                client.delete_tag(run.info.run_id, CHOSEN_TAG)
                client.set_tag(run.info.run_id, "mlflow.runName", trial_run_name(int(number), run.data.tags["trial_state"]))

    def log_missing(self, study: optuna.Study) -> int:
        """Log the finished trials that have no run yet; returns how many.

        A process killed after Optuna records a trial but before this callback logs it leaves the
        trial without its run; the stage fills such gaps once the search is done.
        """
        with storage_lock(self.storage):
            logged = self.logged_trials()
            missing = [t for t in study.get_trials(deepcopy=False, states=FINISHED) if str(t.number) not in logged]
            for trial in missing:
                self._log(study, trial)
        return len(missing)


class ProgressBar:
    """Trials done, best value so far, elapsed time: a redrawn bar on a terminal; elsewhere (CI, `dvc repro > log`)
    a plain line at every tenth of the search, as a redrawn bar there would print nothing until the end."""

    def __init__(self, total: int, done: int, stream=None, deadline: float | None = None):
        self.stream = stream or sys.stderr
        self.total, self.started, self.initial, self.deadline = total, time.monotonic(), done, deadline
        self.interactive = self.stream.isatty()
        self.bar = tqdm(total=total, initial=done, desc="tune", unit="trial", file=self.stream,
                        disable=not self.interactive)
        self.step = max(1, math.ceil(total / 10))
        self.next_line = (done // self.step + 1) * self.step

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        done = finished_trials(study)  # other workers' trials count too
        self.bar.update(done - self.bar.n)
        best = study.best_value if any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials) else None
        if best is not None:
            self.bar.set_postfix(best=f"{best:.5f}")
        if not self.interactive and (done >= self.next_line or done == self.total):
            self.next_line = (done // self.step + 1) * self.step
            lowest = f", lowest validation loss {best:.5g}" if best is not None else ""
            print(f"tune: {done}/{self.total} trials finished{lowest}, {time.monotonic() - self.started:.0f} s"
                  f"{self.eta(done)}", file=self.stream, flush=True)

    def eta(self, done: int) -> str:
        """", ETA n s": the trials left at this run's pace so far, or the time budget left if that ends first."""
        elapsed, ran = time.monotonic() - self.started, done - self.initial
        if done >= self.total or ran <= 0:
            return ""
        left = elapsed / ran * (self.total - done)
        if self.deadline is not None and self.deadline - time.time() < left:
            return f", ETA {max(0.0, self.deadline - time.time()):.0f} s (time budget) + running trials"
        return f", ETA {left:.0f} s"

    def close(self) -> None:
        self.bar.close()
