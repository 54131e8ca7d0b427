"""The tune stage: an Optuna study over the tutorial's knobs, and the hyperparameters it hands train.

What a reader of the stage needs is here: the search space (`suggest`), the objective (mean over the
folds of each network's smoothed best validation loss, pruned on the first fold), which trial train
gets (`choose_trial`: best | one_se), the study's name and the best-parameters file. Two concerns
live in modules of their own, because neither changes what the search finds:
pipeline/trial_scheduling.py shares one study between processes and machines (locks, admission,
heartbeats, retrying a dead worker's trial), pipeline/trial_logging.py shows it (MLflow parent and
child runs, progress bar).

The study lives in persistent storage (SQLite in the project by default) under a name derived from
the search settings, the data and the code, so re-running with the same inputs resumes it: finished
trials are never redone, and the stage only tops the study up to `tune.n_trials`. Workers
(`python -m pipeline tune --worker`, on a shared `TUNE_STORAGE`) join the same study; the stage runs
trials too, then waits for the study to complete and writes the best parameters.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

import keras
import mlflow
import numpy as np
import optuna

from pipeline import tracking
from pipeline.artifacts import ensure_writable, file_sha256, write_text
from pipeline.config import HyperParams, Params, SearchSpace
from pipeline.data import Splits, development_folds, parquet_rows, read_development_sample
from pipeline.errors import PipelineError
from pipeline.paths import Workspace
from pipeline.imports import closure, module_file
from pipeline.sampling import ResumableTPESampler
from pipeline.study_attrs import DEADLINE_ATTR, EPOCHS_RUN_ATTR, FOLD_LOSSES_ATTR, PRUNED_BECAUSE_ATTR, TARGET_ATTR
from pipeline.train import fit_fold
from pipeline.trial_logging import MlflowTrialLogger, ProgressBar, parent_run_id
from pipeline.trial_scheduling import LostTrials, finished_trials, join_study, open_storage, run_trials, storage_url

SMOOTHING_EPOCHS = 10
REPORT_EVERY = 5  # epochs between pruning checks


def suggest(trial: optuna.Trial, space: SearchSpace, base: HyperParams) -> HyperParams:
    """Hyperparameters for one trial: searched knobs from `space`, the rest from `base`."""

    def floats(name: str) -> float:
        r = getattr(space, name)
        return r.low if r.low == r.high else trial.suggest_float(name, r.low, r.high, log=r.log)

    def ints(name: str) -> int:
        r = getattr(space, name)
        return trial.suggest_int(name, r.low, r.high, log=r.log)

    return base.model_copy(update={
        "learning_rate": floats("learning_rate"),
        "batch_size": trial.suggest_categorical("batch_size", space.batch_size),
        "units_1": ints("units_1"),
        "units_2": ints("units_2"),
        "optimizer": trial.suggest_categorical("optimizer", space.optimizer),
        "activation": trial.suggest_categorical("activation", space.activation),
        "dropout": floats("dropout"),
        "l2": floats("l2"),
    })


def study_name(params: Params, ws: Workspace) -> str:
    """Same search settings, data and training code -> same study (resumed); anything else -> a new one."""
    fingerprint = json.dumps({"tune": params.tune.model_dump(exclude={"storage", "n_trials", "select", "timeout_minutes"}),
                              "base": params.train.hyperparams.model_dump(), "split": params.split.model_dump(),
                              "max_epoch_steps": params.train.max_epoch_steps,
                              "seed": params.train.seed, "data": file_sha256(ws.raw),
                              "code": [file_sha256(module_file(name)) for name in sorted(closure({__name__}))]},
                             sort_keys=True)
    return f"{params.tracking.experiment}-{hashlib.sha256(fingerprint.encode()).hexdigest()[:12]}"


def smoothed_best(val_loss: list[float], window: int = SMOOTHING_EPOCHS) -> float:
    """The lowest mean validation loss over `window` consecutive epochs.

    On a small validation set the single best epoch is mostly luck: a trial whose loss jumps
    around gets picked for one lucky epoch. Averaging over a window favours trials that are good
    for a stretch of training, which is what the train stage's early stopping can reproduce.
    """
    if len(val_loss) <= window:
        return float(np.mean(val_loss))
    sums = np.convolve(val_loss, np.ones(window), mode="valid")
    return float(sums.min() / window)


def pruned(trial: optuna.Trial, reason: str) -> optuna.TrialPruned:
    trial.set_user_attr(PRUNED_BECAUSE_ATTR, reason)  # the trial's MLflow run carries it as a tag
    return optuna.TrialPruned(reason)


def trial_rows(directory: Path, params: Params) -> Splits:
    """The rows trials fit and validate on: all train + val rows, or a sample of tune.sample_rows of them (said in one
    line), read without loading the rest of the table."""
    sample = read_development_sample(directory, params.tune.sample_rows, params.tune.seed)
    total = parquet_rows(directory / "train.parquet") + parquet_rows(directory / "val.parquet")
    if len(sample.train) + len(sample.val) < total:
        print(f"tune: trials fit and validate on a sample of {len(sample.train) + len(sample.val):,} of the"
              f" {total:,} train + val rows (tune.sample_rows); train uses them all", flush=True)
    return sample


def make_objective(splits: Splits, params: Params):
    folds = development_folds(splits, params.split.folds, params.split.seed)
    cfg = params.tune

    def objective(trial: optuna.Trial) -> float:
        """The mean over the folds of each network's smoothed best validation loss. The median pruner
        watches the first fold only: a trial it would stop there is not worth k fits."""
        hp = suggest(trial, cfg.space, params.train.hyperparams)
        keras.backend.clear_session()

        def report(epoch: int, _train_loss: float, val_loss: float | None) -> bool:
            if not math.isfinite(val_loss):
                return True
            if epoch % REPORT_EVERY:  # each report is a storage write; every epoch would dominate a trial
                return False
            trial.report(val_loss, epoch)
            return trial.should_prune()

        losses, epochs_run = [], 0
        for index, fold in enumerate(folds):
            _, history = fit_fold(hp, fold, splits.schema, index, params, epochs=cfg.epochs, patience=cfg.patience,
                                  on_epoch=report if index == 0 else None)
            epochs_run += history.epochs_run
            trial.set_user_attr(EPOCHS_RUN_ATTR, epochs_run)
            last = history.val_loss[-1]
            if not math.isfinite(last):
                raise pruned(trial, f"diverged: validation loss {last} at epoch {history.epochs_run}"
                                    + (f" of fold {index + 1}" if len(folds) > 1 else ""))
            if index == 0 and history.epochs_run % REPORT_EVERY == 0 and trial.should_prune():
                raise pruned(trial, f"validation loss {last:.4g} at epoch {history.epochs_run} is worse than the median")
            losses.append(smoothed_best(history.val_loss))
        trial.set_user_attr(FOLD_LOSSES_ATTR, losses)
        return float(np.mean(losses))

    return objective


def open_study(params: Params, ws: Workspace, storage: optuna.storages.RDBStorage | None = None,
               join: bool = False) -> optuna.Study:
    """Create or resume the study. `join` (a worker): wait for the stage to create it, and sample with a seed
    of its own, so that concurrent workers don't propose the same hyperparameters."""
    cfg = params.tune
    storage = storage or open_storage(params)
    kwargs = {"study_name": study_name(params, ws), "storage": storage,
              "sampler": optuna.samplers.TPESampler() if join else ResumableTPESampler(seed=cfg.seed),
              "pruner": optuna.pruners.MedianPruner(n_startup_trials=cfg.pruner.n_startup_trials,
                                                    n_warmup_steps=cfg.pruner.n_warmup_steps)}
    if join:
        return join_study(storage_url(params), **kwargs)
    study = optuna.create_study(direction="minimize", load_if_exists=True, **kwargs)
    study.set_user_attr(TARGET_ATTR, cfg.n_trials)
    # Each run of the stage gets the whole budget from its own start; wall-clock time, as workers on other machines read it.
    study.set_user_attr(DEADLINE_ATTR, None if cfg.timeout_minutes is None else time.time() + 60 * cfg.timeout_minutes)
    return study


def tune(splits: Splits, params: Params, ws: Workspace, worker: bool = False) -> HyperParams | None:
    """Run the study on `splits` (the trial rows) up to `n_trials` finished trials (with any workers that joined) and
    return the best trial's hyperparameters; a worker only runs trials and returns None."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    experiment_id = tracking.configure(params.tracking)
    on_lost = LostTrials()
    storage = open_storage(params, on_lost)
    study = open_study(params, ws, storage, join=worker)
    parent = parent_run_id(study, params)
    on_lost.log = logger = MlflowTrialLogger(parent, experiment_id, storage_url(params))
    target = study.user_attrs.get(TARGET_ATTR, params.tune.n_trials)
    progress = ProgressBar(target, min(finished_trials(study), target), deadline=study.user_attrs.get(DEADLINE_ATTR))
    try:
        done = run_trials(study, storage, make_objective(splits, params), params.tune.n_trials, [logger, progress])
    finally:
        progress.close()
    if params.tune.timeout_minutes is not None and finished_trials(study) < target:
        print(f"tune: time budget spent (tune.timeout_minutes: {params.tune.timeout_minutes:g}) after"
              f" {finished_trials(study)} of {target} trials; a re-run resumes the study", flush=True)
    if worker:
        print(f"tune --worker: ran {done} trial(s); study {study.study_name} has {finished_trials(study)} finished")
        return None
    logger.log_missing(study)
    if not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        raise PipelineError(f"tune: none of the {finished_trials(study)} trials completed (all were pruned or diverged;"
                         " the MLflow child runs say why); try a lower tune.space.learning_rate or more tune.epochs")
    lowest = study.best_trial
    chosen, threshold = choose_trial(study, lowest, params)
    hp = trial_hyperparams(chosen, params)
    if chosen.number == lowest.number:
        print(f"tune: trial {chosen.number} has the lowest mean validation loss ({chosen.value:.4g})")
    else:
        print(f"tune: trial {chosen.number} (L2 {hp.l2:.3g}, validation loss {chosen.value:.4g}) is the most"
              f" regularised within one standard error of the lowest, trial {lowest.number} (L2"
              f" {trial_hyperparams(lowest, params).l2:.3g}, {lowest.value:.4g}; threshold {threshold:.4g})")
    logger.mark_chosen(chosen, "lowest validation loss" if chosen.number == lowest.number else "one_se")
    with mlflow.start_run(run_id=parent):
        mlflow.set_tag("mlflow.runName", f"tune {study.study_name}: {finished_trials(study)} trials, chosen trial"
                                         f" {chosen.number:03d} (val_loss {chosen.value:.4g})")
        # Tags, not params: a resumed study with more trials can change its pick, and MLflow params are write-once.
        # best_* is the trial train gets (tune.select); lowest_* the one with the lowest loss.
        mlflow.set_tags({"select": params.tune.select} | {f"best_{k}": v for k, v in chosen.params.items()})
        mlflow.log_metrics({"val_loss": chosen.value, "best_val_loss": chosen.value, "best_trial": chosen.number,
                            "lowest_val_loss": lowest.value, "lowest_trial": lowest.number,
                            "pruned_trials": len(study.get_trials(states=(optuna.trial.TrialState.PRUNED,)))})
    return hp


def trial_hyperparams(trial: optuna.trial.FrozenTrial, params: Params) -> HyperParams:
    return suggest(optuna.trial.FixedTrial(trial.params), params.tune.space, params.train.hyperparams)


def choose_trial(study: optuna.Study, lowest: optuna.trial.FrozenTrial,
                 params: Params) -> tuple[optuna.trial.FrozenTrial, float]:
    """The finished trial whose hyperparameters train gets, and the loss threshold it was chosen under;
    `lowest` is the study's best trial.

    `best`: the lowest mean validation loss. `one_se`: the one-standard-error rule (Breiman et al.'s, as
    in glmnet's lambda.1se): of the trials whose mean loss is within one standard error of the lowest
    (the lowest trial's, over its folds), the most regularised: largest L2, then largest dropout, then
    fewest hidden units. On a few hundred rows the lowest mean is partly the luck of the folds, and the
    search then tends to hand train a weakly penalised network that fits the folds' noise.
    """
    if params.tune.select == "best":
        return lowest, lowest.value
    losses = lowest.user_attrs[FOLD_LOSSES_ATTR]
    threshold = lowest.value + float(np.std(losses, ddof=1)) / math.sqrt(len(losses))
    within = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
              if t.value <= threshold]

    def regularisation(trial: optuna.trial.FrozenTrial) -> tuple:
        hp = trial_hyperparams(trial, params)
        return hp.l2, hp.dropout, -(hp.units_1 + hp.units_2), -trial.value

    return max(within, key=regularisation), threshold


def write_best_params(hp: HyperParams, path: Path) -> None:
    import yaml

    write_text(path, "# written by the tune stage; train reads it\n" + yaml.safe_dump(hp.model_dump(), sort_keys=True))


def read_best_params(path: Path) -> HyperParams:
    import yaml

    return HyperParams.model_validate(yaml.safe_load(path.read_text()))


def main(params: Params, ws: Workspace, worker: bool = False) -> None:
    if worker:  # joins the stage's study; writes no outputs
        tune(trial_rows(ws.split_dir, params), params, ws, worker=True)
        return
    ensure_writable(ws.best_params)
    if params.tune.n_trials == 0:
        write_best_params(params.train.hyperparams, ws.best_params)
        print("tune: n_trials = 0, using train.hyperparams as they are")
        return
    best = tune(trial_rows(ws.split_dir, params), params, ws)
    write_best_params(best, ws.best_params)
    print(f"tune: best {best.model_dump()}")
