"""Distributed trial scheduling: which process runs which trial of the tuning study, and what happens when one dies.

Several processes or machines can share one search: the tune stage and any `python -m pipeline tune --worker`
pointed at the same storage (`TUNE_STORAGE` or `tune.storage`). Every process takes trials until the study has
exactly its target of finished ones (the stage's `tune.n_trials`): a trial is admitted only while finished +
running trials are fewer, under a lock on the storage (PostgreSQL advisory lock; a file lock for SQLite, i.e.
workers on one machine), because checking the count and creating the trial must not interleave between processes.
Running trials send heartbeats; one whose worker died (killed, machine lost) is marked failed by the next process
that looks and queued again with the same hyperparameters, so the search ends with exactly the target, whoever
dies. Nothing here knows about Keras or MLflow: the objective and the callbacks come from the caller.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import socket
import sys
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna

from pipeline.config import Params
from pipeline.errors import PipelineError
from pipeline.optuna_private import trial_id
from pipeline.study_attrs import ADMITTED_ATTR, DEADLINE_ATTR, TARGET_ATTR, WORKER_ATTR

DEFAULT_STORAGE = "sqlite:///optuna.db"
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
RUNNING = optuna.trial.TrialState.RUNNING
COMPLETE = optuna.trial.TrialState.COMPLETE
WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"
HEARTBEAT_INTERVAL_S = 10  # env TUNE_HEARTBEAT_INTERVAL; a trial silent for 3 intervals counts as lost
MAX_RETRY = 2  # a lost trial is queued again (same hyperparameters) at most this many times
POLL_S = 1.0  # how often a process with nothing to run looks again
JOIN_TIMEOUT_S = 600  # how long `tune --worker` waits for the stage to create the study
LOCK_KEY = 0x74756E652D6C6F63  # PostgreSQL advisory lock id ("tune-loc")


def storage_url(params: Params) -> str:
    return os.environ.get("TUNE_STORAGE") or params.tune.storage or DEFAULT_STORAGE


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
    just marked it failed; queue it again with the same hyperparameters and hand it to `log` (the tune stage sets
    it to its MLflow logger, so the lost trial gets a failed child run)."""

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


def join_study(url: str, **load_kwargs) -> optuna.Study:
    """A worker's study (`load_kwargs` as for optuna.load_study): workers may start before the stage, so wait for
    the stage to create it, for up to JOIN_TIMEOUT_S."""
    from sqlalchemy.engine import make_url

    name = load_kwargs["study_name"]
    where = make_url(url).render_as_string(hide_password=True)
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    for attempt in range(sys.maxsize):
        try:
            return optuna.load_study(**load_kwargs)
        except KeyError:
            if time.monotonic() > deadline:
                raise PipelineError(f"tune --worker: no study {name} in {where} after {JOIN_TIMEOUT_S} s;"
                                 " the tune stage (dvc repro) creates it, and a worker needs the same params, data and"
                                 " code, and the same TUNE_STORAGE, to find it") from None
            if attempt == 0:
                print(f"tune --worker: waiting for study {name} in {where} (the tune stage creates it)", flush=True)
            time.sleep(POLL_S)
    raise AssertionError("unreachable")


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


def died_in_admission(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether a running trial's process died while taking it: between `study.ask()` and the stamp written last in
    `next_trial`, before its first heartbeat. Only valid under the storage lock, which every admission holds: no
    admission is then half-way. Without this check such a trial would count as running forever, since a trial with
    no heartbeat is never stale, and every later run would wait for it. A retried trial inherits its lost
    predecessor's stamp, whose number is not its own."""
    return trial.user_attrs.get(ADMITTED_ATTR) != trial.number


def fail_abandoned_trials(study: optuna.Study, storage: optuna.storages.RDBStorage) -> None:
    """What the heartbeat check does after its grace period, at once for a running trial whose process on this
    machine is gone (a `kill -9`ed `dvc repro`, say) or died while taking it: mark it failed and queue it again, so a
    re-run resumes exactly where the killed one stopped. Called under the storage lock."""
    for trial in study.get_trials(deepcopy=False, states=(RUNNING,)):
        if not (died_in_admission(trial) or _died_here(trial.user_attrs.get(WORKER_ATTR))):
            continue
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
            if storage.set_trial_state_values(trial_id(trial), state=optuna.trial.TrialState.FAIL):
                storage.get_heartbeat_stale_trial_callback()(study, storage.get_trial(trial_id(trial)))


def out_of_time(study_attrs: dict, states: Counter) -> bool:
    """Whether the stage's time budget (tune.timeout_minutes, shared through the study) is spent: as with
    Optuna's own `optimize(timeout=...)`, no trial starts after it and running ones finish, but only once a
    trial has completed, so that the stage always has one to hand train."""
    deadline = study_attrs.get(DEADLINE_ATTR)
    return deadline is not None and time.time() >= deadline and states[COMPLETE] > 0


def next_trial(study: optuna.Study, storage: optuna.storages.RDBStorage,
               default_target: int) -> tuple[optuna.Trial | None, Counter]:
    """Under the storage lock: fail running trials whose heartbeats stopped or whose process here is gone (queueing
    them again), then take a queued trial or a new one if the study has fewer finished + running trials than its
    target and its time budget is not spent."""
    with storage_lock(storage.url), warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
        fail_abandoned_trials(study, storage)
        optuna.storages.fail_stale_trials(study)
        states = Counter(t.state for t in study.get_trials(deepcopy=False))
        attrs = study.user_attrs
        if sum(states[s] for s in FINISHED) + states[RUNNING] >= attrs.get(TARGET_ATTR, default_target) \
                or out_of_time(attrs, states):
            return None, states
        trial = study.ask()  # a queued (retried) trial first, else a new one
        trial.set_user_attr(WORKER_ATTR, WORKER_ID)
        storage.record_heartbeat(trial_id(trial))  # before the lock is released: a trial is never without one
        trial.set_user_attr(ADMITTED_ATTR, trial.number)  # last: a trial without it died here (died_in_admission)
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
    """Take trials until the study has its target of finished trials (or its time budget is spent) and none running
    (any number of processes may do this at once); return how many this process finished. `callbacks[0]` also logs a trial that failed here."""
    done, waiting_for = 0, 0
    while True:
        trial, states = next_trial(study, storage, n_trials)
        if trial is None:
            attrs = study.user_attrs
            target_reached = sum(states[s] for s in FINISHED) >= attrs.get(TARGET_ATTR, n_trials)
            if not states[RUNNING] and (target_reached or out_of_time(attrs, states)):
                return done
            if states[RUNNING] != waiting_for:
                waiting_for = states[RUNNING]
                print(f"tune: waiting for {waiting_for} trial(s) running elsewhere (one whose process died is run "
                      f"again after {storage.grace_period} s without a heartbeat)", file=sys.stderr, flush=True)
            time.sleep(POLL_S)  # the last trials run elsewhere: wait, and take over any that get lost
            continue
        done += run_trial(study, storage, trial, objective, callbacks) is not None
