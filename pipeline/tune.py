"""The tune stage: an Optuna study over the tutorial's knobs, one MLflow child run per trial.

The study lives in persistent storage (SQLite in the project by default) under a name derived from
the search settings and the data, so re-running with the same inputs resumes it: finished trials
are never redone, and the stage only tops the study up to `tune.n_trials`.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import keras
import mlflow
import optuna
from tqdm import tqdm

from pipeline import tracking
from pipeline.artifacts import file_sha256, write_text
from pipeline.config import HyperParams, Params, SearchSpace
from pipeline.data import RAW_PATH, Splits, features_and_target, read_splits
from pipeline.model import fit, seed_everything
from pipeline.train import model_for

BEST_PARAMS_PATH = Path("models/best_params.yaml")
DEFAULT_STORAGE = "sqlite:///optuna.db"
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
PARENT_RUN_ATTR = "mlflow_parent_run_id"
CODE_FILES = ("model.py", "train.py", "tune.py")  # what a trial's result depends on
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


def storage_url(params: Params) -> str:
    return os.environ.get("TUNE_STORAGE") or params.tune.storage or DEFAULT_STORAGE


def study_name(params: Params) -> str:
    """Same search settings, data and training code -> same study (resumed); anything else -> a new one."""
    fingerprint = json.dumps({"tune": params.tune.model_dump(exclude={"storage", "n_trials"}),
                              "base": params.train.hyperparams.model_dump(), "split": params.split.model_dump(),
                              "seed": params.train.seed, "data": file_sha256(RAW_PATH),
                              "code": [file_sha256(Path(__file__).with_name(name)) for name in CODE_FILES]},
                             sort_keys=True)
    return f"{params.tracking.experiment}-{hashlib.sha256(fingerprint.encode()).hexdigest()[:12]}"


def make_objective(splits: Splits, params: Params):
    train_xy = features_and_target(splits.train, splits.schema)
    val_xy = features_and_target(splits.val, splits.schema)
    cfg = params.tune

    def objective(trial: optuna.Trial) -> float:
        hp = suggest(trial, cfg.space, params.train.hyperparams)
        keras.backend.clear_session()
        # Every trial starts from the train stage's seed, so the winner retrains to the same model.
        seed_everything(params.train.seed)

        def report(epoch: int, _train_loss: float, val_loss: float | None) -> bool:
            if epoch % REPORT_EVERY:  # each report is a storage write; every epoch would dominate a trial
                return False
            trial.report(val_loss, epoch)
            return trial.should_prune()

        model = model_for(hp, splits)
        history = fit(model, hp, train_xy, val_xy, epochs=cfg.epochs, patience=cfg.patience,
                      seed=params.train.seed, on_epoch=report)
        trial.set_user_attr("epochs_run", history.epochs_run)
        if history.epochs_run % REPORT_EVERY == 0 and trial.should_prune():
            raise optuna.TrialPruned(f"validation loss {history.val_loss[-1]:.4g} at epoch {history.epochs_run}")
        return min(history.val_loss)

    return objective


class MlflowTrialLogger:
    """Optuna callback: each finished trial becomes one nested MLflow run under the search's parent."""

    def __init__(self, parent_run_id: str, experiment_id: str):
        self.parent_run_id = parent_run_id
        self.experiment_id = experiment_id

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        state = trial.state.name.lower()
        with mlflow.start_run(run_name=f"trial {trial.number:03d} ({state})", nested=True,
                              parent_run_id=self.parent_run_id, experiment_id=self.experiment_id):
            mlflow.log_params(trial.params)
            mlflow.set_tags({"stage": "tune", "trial_number": str(trial.number), "trial_state": state,
                             "optuna_study": study.study_name})
            values = trial.intermediate_values
            if trial.value is not None:
                mlflow.log_metric("val_loss", trial.value)
            elif values:
                mlflow.log_metric("val_loss", min(values.values()))
            mlflow.log_metric("epochs_run", trial.user_attrs.get("epochs_run", len(values)))


class ProgressBar:
    """Trials done, best value so far, elapsed time; silent without a terminal (CI, dvc logs)."""

    def __init__(self, total: int, done: int):
        self.bar = tqdm(total=total, initial=done, desc="tune", unit="trial", disable=not sys.stderr.isatty())

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.bar.update(1)
        if any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
            self.bar.set_postfix(best=f"{study.best_value:.5f}")

    def close(self) -> None:
        self.bar.close()


def finished_trials(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def open_study(params: Params) -> optuna.Study:
    cfg = params.tune
    return optuna.create_study(
        study_name=study_name(params), storage=storage_url(params), direction="minimize", load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=cfg.seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=cfg.pruner.n_startup_trials,
                                           n_warmup_steps=cfg.pruner.n_warmup_steps),
    )


def parent_run_id(study: optuna.Study, params: Params) -> str:
    """The search's MLflow parent run, created once per study and shared through its user attributes."""
    run_id = study.user_attrs.get(PARENT_RUN_ATTR)
    if run_id is None:
        run = mlflow.start_run(run_name=f"tune {study.study_name} ({params.tune.n_trials} trials)")
        mlflow.set_tags({"stage": "tune", "optuna_study": study.study_name})
        mlflow.log_params({"n_trials": params.tune.n_trials, "sampler": "TPE", "pruner": "median",
                           "tune_seed": params.tune.seed})
        mlflow.log_dict(params.tune.space.model_dump(), "search_space.json")
        mlflow.end_run()
        run_id = run.info.run_id
        study.set_user_attr(PARENT_RUN_ATTR, run_id)
    return run_id


def tune(splits: Splits, params: Params) -> HyperParams:
    """Run the study up to `n_trials` finished trials and return the best trial's hyperparameters."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    experiment_id = tracking.configure(params.tracking)
    study = open_study(params)
    parent = parent_run_id(study, params)
    remaining = params.tune.n_trials - finished_trials(study)
    if remaining > 0:
        progress = ProgressBar(params.tune.n_trials, finished_trials(study))
        study.optimize(
            make_objective(splits, params), n_trials=remaining, gc_after_trial=False,
            callbacks=[MlflowTrialLogger(parent, experiment_id), progress,
                       optuna.study.MaxTrialsCallback(params.tune.n_trials, states=FINISHED)],
        )
        progress.close()
    best = suggest(optuna.trial.FixedTrial(study.best_params), params.tune.space, params.train.hyperparams)
    with mlflow.start_run(run_id=parent):
        mlflow.log_params({f"best_{k}": v for k, v in study.best_params.items()})
        mlflow.log_metrics({"best_val_loss": study.best_value, "best_trial": study.best_trial.number,
                            "pruned_trials": len(study.get_trials(states=(optuna.trial.TrialState.PRUNED,)))})
    return best


def write_best_params(hp: HyperParams, path: Path = BEST_PARAMS_PATH) -> None:
    import yaml

    write_text(path, "# written by the tune stage; train reads it\n" + yaml.safe_dump(hp.model_dump(), sort_keys=True))


def read_best_params(path: Path = BEST_PARAMS_PATH) -> HyperParams:
    import yaml

    return HyperParams.model_validate(yaml.safe_load(path.read_text()))


def main(params: Params) -> None:
    if params.tune.n_trials == 0:
        write_best_params(params.train.hyperparams)
        print("tune: n_trials = 0, using train.hyperparams as they are")
        return
    best = tune(read_splits(), params)
    write_best_params(best)
    print(f"tune: best {best.model_dump()}")
