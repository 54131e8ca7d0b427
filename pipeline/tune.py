"""The tune stage: an Optuna study over the tutorial's knobs, one MLflow child run per trial.

The study lives in persistent storage (SQLite in the project by default) under a name derived from
the search settings and the data, so re-running with the same inputs resumes it: finished trials
are never redone, and the stage only tops the study up to `tune.n_trials`.

Several processes or machines can share one search: point `TUNE_STORAGE` (or `tune.storage`) at a
database server and start `python -m pipeline tune --worker` next to `dvc repro`. Every process
takes trials until the study has exactly `tune.n_trials` finished ones (the stage's number): a
trial is admitted only while finished + running trials are fewer, under a lock on the storage
(PostgreSQL advisory lock; a file lock for SQLite, i.e. workers on one machine). Running trials
send heartbeats; one whose worker died (killed, machine lost) is marked failed by the next worker
that looks and queued again with the same hyperparameters. The stage itself runs trials too, then
waits for the study to complete and writes the best parameters.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import math
import os
import socket
import sys
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import keras
import mlflow
import numpy as np
import optuna
from tqdm import tqdm

from pipeline import tracking
from pipeline.artifacts import ensure_writable, file_sha256, write_text
from pipeline.config import HyperParams, Params, SearchSpace
from pipeline.data import RAW_PATH, Splits, development_folds, read_splits
from pipeline.errors import PipelineError
from pipeline.imports import closure, module_file
from pipeline.optuna_private import retried_trial_number, trial_id
from pipeline.sampling import ResumableTPESampler
from pipeline.train import fit_fold

BEST_PARAMS_PATH = Path("models/best_params.yaml")
DEFAULT_STORAGE = "sqlite:///optuna.db"
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
RUNNING = optuna.trial.TrialState.RUNNING
SMOOTHING_EPOCHS = 10
PRUNED_BECAUSE_ATTR = "pruned_because"
PARENT_RUN_ATTR = "mlflow_parent_run_id"
TARGET_ATTR = "n_trials"  # the stage's tune.n_trials, which workers run the study up to
WORKER_ATTR = "worker"  # host:pid of the process that ran a trial
WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"
HEARTBEAT_INTERVAL_S = 10  # env TUNE_HEARTBEAT_INTERVAL; a trial silent for 3 intervals counts as lost
MAX_RETRY = 2  # a lost trial is queued again (same hyperparameters) at most this many times
POLL_S = 1.0  # how often a process with nothing to run looks again
JOIN_TIMEOUT_S = 600  # how long `tune --worker` waits for the stage to create the study
LOCK_KEY = 0x74756E652D6C6F63  # PostgreSQL advisory lock id ("tune-loc")
REPORT_EVERY = 5  # epochs between pruning checks
FOLD_LOSSES_ATTR = "fold_losses"  # each fold's smoothed best validation loss; tune.select: one_se needs them


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
    fingerprint = json.dumps({"tune": params.tune.model_dump(exclude={"storage", "n_trials", "select"}),
                              "base": params.train.hyperparams.model_dump(), "split": params.split.model_dump(),
                              "seed": params.train.seed, "data": file_sha256(RAW_PATH),
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
            trial.set_user_attr("epochs_run", epochs_run)
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
        state = trial.state.name.lower()
        with mlflow.start_run(run_name=f"trial {trial.number:03d} ({state})", nested=True,
                              parent_run_id=self.parent_run_id, experiment_id=self.experiment_id):
            mlflow.log_params(trial.params)
            mlflow.set_tags({"stage": "tune", "trial_number": str(trial.number), "trial_state": state,
                             "optuna_study": study.study_name, "worker": trial.user_attrs.get(WORKER_ATTR, "unknown")})
            if PRUNED_BECAUSE_ATTR in trial.user_attrs:
                mlflow.set_tag(PRUNED_BECAUSE_ATTR, trial.user_attrs[PRUNED_BECAUSE_ATTR])
            retried = retried_trial_number(trial)
            if retried is not None:
                mlflow.set_tag("retry_of_trial", str(retried))
            values = trial.intermediate_values
            if trial.value is not None:
                mlflow.log_metric("val_loss", trial.value)
            elif values:
                mlflow.log_metric("val_loss", min(values.values()))
            mlflow.log_metric("epochs_run", trial.user_attrs.get("epochs_run", len(values)))
            fold_losses = trial.user_attrs.get(FOLD_LOSSES_ATTR, [])
            if len(fold_losses) > 1:
                mlflow.log_metrics({f"val_loss_fold_{i}": loss for i, loss in enumerate(fold_losses, start=1)})

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
    """Trials done, best value so far, elapsed time; silent without a terminal (CI, dvc logs)."""

    def __init__(self, total: int, done: int):
        self.bar = tqdm(total=total, initial=done, desc="tune", unit="trial", disable=not sys.stderr.isatty())

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.bar.update(finished_trials(study) - self.bar.n)  # other workers' trials count too
        if any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
            self.bar.set_postfix(best=f"{study.best_value:.5f}")

    def close(self) -> None:
        self.bar.close()


def finished_trials(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


@functools.cache
def _lock_engine(url: str):
    import sqlalchemy

    return sqlalchemy.create_engine(url, pool_size=1, pool_pre_ping=True)


_lock_depth = threading.local()


@contextlib.contextmanager
def storage_lock(url: str) -> Iterator[None]:
    """Re-entrant within a thread: a lost trial is logged from inside the locked trial admission."""
    if getattr(_lock_depth, "n", 0):
        yield
        return
    _lock_depth.n = 1
    try:
        with _storage_lock(url):
            yield
    finally:
        _lock_depth.n = 0


@contextlib.contextmanager
def _storage_lock(url: str) -> Iterator[None]:
    """Serialise the check-then-write steps that concurrent workers would race on (creating the tables,
    the parent run, admitting a trial): a transaction-scoped advisory lock on a PostgreSQL server, a
    file lock on a SQLite database's directory (workers on one machine). Other databases: no lock (one process only)."""
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        with _lock_engine(url).begin() as connection:  # released at commit, or when a killed worker's connection drops
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})
            yield
    elif backend == "sqlite" and parsed.database not in (None, "", ":memory:"):
        # flock on the database's directory: no lock file to leave behind, and unlike a second descriptor on the
        # database file itself it cannot disturb SQLite's own (POSIX) locks.
        directory = os.open(Path(parsed.database).resolve().parent, os.O_RDONLY)
        try:
            fcntl.flock(directory, fcntl.LOCK_EX)
            yield
        finally:
            os.close(directory)  # releases the lock
    else:
        yield


def heartbeat_interval() -> int:
    raw = os.environ.get("TUNE_HEARTBEAT_INTERVAL") or str(HEARTBEAT_INTERVAL_S)
    if not raw.isdigit() or int(raw) < 1:
        raise PipelineError(f"TUNE_HEARTBEAT_INTERVAL must be a whole number of seconds >= 1, got {raw!r}")
    return int(raw)


class LostTrials:
    """Storage callback for a running trial whose heartbeats stopped (worker killed, machine gone): optuna has
    just marked it failed; queue it again with the same hyperparameters and log it as a failed child run."""

    def __init__(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)
        self.log: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.retry(study, trial)
        print(f"tune: trial {trial.number} lost its worker ({trial.user_attrs.get(WORKER_ATTR, 'unknown')}):"
              " marked failed and queued again", file=sys.stderr)
        if self.log is not None:
            self.log(study, trial)


def open_storage(params: Params, on_lost: LostTrials | None = None) -> optuna.storages.RDBStorage:
    """The study database, with heartbeats for running trials."""
    interval = heartbeat_interval()
    url = storage_url(params)
    with storage_lock(url), warnings.catch_warnings():  # the lock: two first workers creating the tables at once
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(url, heartbeat_interval=interval, grace_period=3 * interval,
                                          heartbeat_stale_trial_callback=on_lost or LostTrials())


def open_study(params: Params, storage: optuna.storages.RDBStorage | None = None, join: bool = False) -> optuna.Study:
    """Create or resume the study. `join` (a worker): wait for the stage to create it, and sample with a seed
    of its own, so that concurrent workers don't propose the same hyperparameters."""
    cfg = params.tune
    storage = storage or open_storage(params)
    kwargs = {"study_name": study_name(params), "storage": storage,
              "sampler": optuna.samplers.TPESampler() if join else ResumableTPESampler(seed=cfg.seed),
              "pruner": optuna.pruners.MedianPruner(n_startup_trials=cfg.pruner.n_startup_trials,
                                                    n_warmup_steps=cfg.pruner.n_warmup_steps)}
    if not join:
        study = optuna.create_study(direction="minimize", load_if_exists=True, **kwargs)
        study.set_user_attr(TARGET_ATTR, cfg.n_trials)
        return study
    from sqlalchemy.engine import make_url

    where = make_url(storage_url(params)).render_as_string(hide_password=True)
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    for attempt in range(sys.maxsize):
        try:
            return optuna.load_study(**kwargs)
        except KeyError:
            if time.monotonic() > deadline:
                raise PipelineError(f"tune --worker: no study {kwargs['study_name']} in {where} after {JOIN_TIMEOUT_S} s;"
                                 " the tune stage (dvc repro) creates it, and a worker needs the same params, data and"
                                 " code, and the same TUNE_STORAGE, to find it") from None
            if attempt == 0:
                print(f"tune --worker: waiting for study {kwargs['study_name']} in {where} (the tune stage creates it)",
                      flush=True)
            time.sleep(POLL_S)
    raise AssertionError("unreachable")


def parent_run_id(study: optuna.Study, params: Params) -> str:
    """The search's MLflow parent run, created once per study (under the storage lock: by whichever process comes
    first) and shared through its user attributes."""
    with storage_lock(storage_url(params)):
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


class Heartbeat:
    """Records a running trial's heartbeat every interval from a thread, so a dead worker's trial is noticed."""

    def __init__(self, storage: optuna.storages.RDBStorage, trial: optuna.Trial):
        self.storage, self.trial_id = storage, trial_id(trial)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, name=f"heartbeat-{trial.number}", daemon=True)

    def _beat(self) -> None:
        while not self.stop.wait(self.storage.get_heartbeat_interval()):
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception as exc:  # noqa: BLE001 - a missed beat is what the grace period is for
                print(f"tune: heartbeat of trial {self.trial_id} not recorded ({exc})", file=sys.stderr)

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop.set()
        self.thread.join()


def _died_here(worker: str | None) -> bool:
    """Whether a trial's worker was a process on this machine that no longer exists."""
    host, _, pid = (worker or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def fail_dead_local_trials(study: optuna.Study, storage: optuna.storages.RDBStorage) -> None:
    """What the heartbeat check does after its grace period, at once for a running trial whose process on this
    machine is gone (a `kill -9`ed `dvc repro`, say): mark it failed and queue it again, so a re-run resumes exactly
    where the killed one stopped."""
    for trial in study.get_trials(deepcopy=False, states=(RUNNING,)):
        if not _died_here(trial.user_attrs.get(WORKER_ATTR)):
            continue
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
            if storage.set_trial_state_values(trial_id(trial), state=optuna.trial.TrialState.FAIL):
                storage.get_heartbeat_stale_trial_callback()(study, storage.get_trial(trial_id(trial)))


def next_trial(study: optuna.Study, storage: optuna.storages.RDBStorage,
               default_target: int) -> tuple[optuna.Trial | None, Counter]:
    """Under the storage lock: fail running trials whose heartbeats stopped or whose process here is gone (queueing
    them again), then take a queued trial or a new one if the study has fewer finished + running trials than its
    target."""
    with storage_lock(storage.url), warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
        fail_dead_local_trials(study, storage)
        optuna.storages.fail_stale_trials(study)
        states = Counter(t.state for t in study.get_trials(deepcopy=False))
        target = study.user_attrs.get(TARGET_ATTR, default_target)
        if sum(states[s] for s in FINISHED) + states[RUNNING] >= target:
            return None, states
        trial = study.ask()  # a queued (retried) trial first, else a new one
        storage.record_heartbeat(trial_id(trial))  # before the lock is released: a trial is never without one
        trial.set_user_attr(WORKER_ATTR, WORKER_ID)
    return trial, states


def run_trial(study: optuna.Study, storage: optuna.storages.RDBStorage, trial: optuna.Trial, objective,
              callbacks: list) -> optuna.trial.FrozenTrial | None:
    """Run one trial with heartbeats and record its outcome; None when another process declared it lost meanwhile
    (missed heartbeats), in which case its retry is already queued and this result is dropped."""

    def still_running() -> bool:
        return storage.get_trial(trial_id(trial)).state == RUNNING

    def lost() -> None:
        print(f"tune: trial {trial.number} was declared lost by another worker (no heartbeat for "
              f"{storage.grace_period} s) and queued again; dropping this result", file=sys.stderr)

    with Heartbeat(storage, trial):
        try:
            outcome = {"values": objective(trial)}
        except optuna.TrialPruned:
            outcome = {"state": optuna.trial.TrialState.PRUNED}
        except BaseException as exc:
            if isinstance(exc, Exception) and not still_running():  # e.g. report() on a trial failed by another
                return lost()
            with contextlib.suppress(Exception):  # record the failure; the error itself is what matters
                frozen = study.tell(trial, state=optuna.trial.TrialState.FAIL)
                callbacks[0](study, frozen)
            raise
        try:
            frozen = study.tell(trial, **outcome)
        except ValueError:  # "Cannot tell a FAIL trial": declared lost between the objective and here
            if still_running():
                raise
            return lost()
    for callback in callbacks:
        callback(study, frozen)
    return frozen


def run_trials(study: optuna.Study, storage: optuna.storages.RDBStorage, objective, n_trials: int,
               callbacks: list) -> int:
    """Take trials until the study has its target of finished trials and none running (any number of processes may
    do this at once); return how many this process finished. `callbacks[0]` also logs a trial that failed here."""
    done, waiting_for = 0, 0
    while True:
        trial, states = next_trial(study, storage, n_trials)
        if trial is None:
            if sum(states[s] for s in FINISHED) >= study.user_attrs.get(TARGET_ATTR, n_trials) and not states[RUNNING]:
                return done
            if states[RUNNING] != waiting_for:
                waiting_for = states[RUNNING]
                print(f"tune: waiting for {waiting_for} trial(s) running elsewhere (one whose process died is run "
                      f"again after {storage.grace_period} s without a heartbeat)", file=sys.stderr, flush=True)
            time.sleep(POLL_S)  # the last trials run elsewhere: wait, and take over any that get lost
            continue
        done += run_trial(study, storage, trial, objective, callbacks) is not None


def tune(splits: Splits, params: Params, worker: bool = False) -> HyperParams | None:
    """Run the study up to `n_trials` finished trials (with any workers that joined) and return the best trial's
    hyperparameters; a worker only runs trials and returns None."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    experiment_id = tracking.configure(params.tracking)
    on_lost = LostTrials()
    storage = open_storage(params, on_lost)
    study = open_study(params, storage, join=worker)
    parent = parent_run_id(study, params)
    on_lost.log = logger = MlflowTrialLogger(parent, experiment_id, storage_url(params))
    target = study.user_attrs.get(TARGET_ATTR, params.tune.n_trials)
    progress = ProgressBar(target, min(finished_trials(study), target))
    try:
        done = run_trials(study, storage, make_objective(splits, params), params.tune.n_trials, [logger, progress])
    finally:
        progress.close()
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
    with mlflow.start_run(run_id=parent):
        # Tags, not params: a resumed study with more trials can change its pick, and MLflow params are write-once.
        # best_* is the trial train gets (tune.select); lowest_* the one with the lowest loss.
        mlflow.set_tags({"select": params.tune.select} | {f"best_{k}": v for k, v in chosen.params.items()})
        mlflow.log_metrics({"best_val_loss": chosen.value, "best_trial": chosen.number,
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


def write_best_params(hp: HyperParams, path: Path = BEST_PARAMS_PATH) -> None:
    import yaml

    write_text(path, "# written by the tune stage; train reads it\n" + yaml.safe_dump(hp.model_dump(), sort_keys=True))


def read_best_params(path: Path = BEST_PARAMS_PATH) -> HyperParams:
    import yaml

    return HyperParams.model_validate(yaml.safe_load(path.read_text()))


def main(params: Params, worker: bool = False) -> None:
    if worker:  # joins the stage's study; writes no outputs
        tune(read_splits(), params, worker=True)
        return
    ensure_writable(BEST_PARAMS_PATH)
    if params.tune.n_trials == 0:
        write_best_params(params.train.hyperparams)
        print("tune: n_trials = 0, using train.hyperparams as they are")
        return
    best = tune(read_splits(), params)
    write_best_params(best)
    print(f"tune: best {best.model_dump()}")
