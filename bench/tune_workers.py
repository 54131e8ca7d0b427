"""Wall time of one tune search run by the stage alone vs the stage plus `tune --worker` processes.

Each run is a fresh study of params.yaml's search (30 trials by default) on the tutorial's data, in a
scratch directory: `python -m pipeline tune` (what `dvc repro` runs) and, for N > 1, N - 1 processes of
`python -m pipeline tune --worker` started at the same moment. The clock runs from the launch until the
stage exits (Python + TensorFlow start-up included, as a user sees it); "search" is the span from the
first trial's start to the last trial's end, read from the study. Runs are interleaved (1, 2, 1, 2, ...)
so that load from other jobs on the machine hits both alike; figures are medians.

Worker processes sample with seeds of their own, so the trials (and how many get pruned) differ from
the single-process search: the pruned column shows it. The last line is the machine's own ceiling:
how much more work two busy pure-Python processes got done than one, measured before each round
(2.0x only on two idle cores).

    python bench/tune_workers.py [--trials 30] [--workers 1 2] [--repeats 1]
        [--storage postgresql://...]   # default: SQLite in the scratch directory (workers on one machine)
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # before MLflow is imported: no schema-creation chatter


def prepare(scratch: Path, trials: int) -> dict:
    """params.yaml with a study of its own (the experiment name is part of the study name) and the data."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"]["source"] = "synthetic"
    params["data"]["synthetic"] = "line"
    params["tune"]["n_trials"] = trials
    params["tune"]["storage"] = None
    params["tracking"]["experiment"] = f"bench-tune-{uuid.uuid4().hex[:8]}"
    scratch.mkdir(parents=True)
    (scratch / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{scratch}/mlflow.db"}
    for stage in ("generate", "split"):
        subprocess.run([sys.executable, "-m", "pipeline", stage], cwd=scratch, env=env, check=True,
                       capture_output=True)
    # Create MLflow's SQLite schema and the experiment up front: two processes migrating one new file race.
    from mlflow.tracking import MlflowClient

    MlflowClient(env["MLFLOW_TRACKING_URI"]).create_experiment(params["tracking"]["experiment"])
    return env


def run(workers: int, trials: int, storage: str | None, scratch: Path) -> dict:
    import optuna

    env = prepare(scratch, trials)
    env["TUNE_STORAGE"] = storage or f"sqlite:///{scratch}/optuna.db"
    cmd = [sys.executable, "-m", "pipeline", "tune"]
    start = time.perf_counter()
    logs = [(scratch / f"process{i}.log").open("wb") for i in range(workers)]
    procs = [subprocess.Popen(cmd + (["--worker"] if i else []), cwd=scratch, env=env, stdin=subprocess.DEVNULL,
                              stdout=log, stderr=subprocess.STDOUT) for i, log in enumerate(logs)]
    codes = [p.wait() for p in procs]
    wall = time.perf_counter() - start
    for log in logs:
        log.close()
    if any(codes):
        failed = codes.index(next(c for c in codes if c))
        sys.exit(f"process {failed} exited with {codes[failed]}:\n{(scratch / f'process{failed}.log').read_text()}")

    summaries = optuna.get_all_study_summaries(env["TUNE_STORAGE"])
    name = next(s.study_name for s in summaries if s.study_name.startswith(yaml.safe_load(
        (scratch / "params.yaml").read_text())["tracking"]["experiment"]))
    study = optuna.load_study(study_name=name, storage=env["TUNE_STORAGE"])
    done = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    assert len(done) == trials, f"{len(done)} finished trials, expected {trials}"
    search = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
    return {"wall": wall, "search": search, "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in done),
            "best": study.best_value}


BUSY = "import time; t = time.perf_counter(); n = 0\nwhile time.perf_counter() - t < 3: n += 1\nprint(n)"


def parallel_capacity() -> float:
    """Work done by two CPU-bound processes at once / by one alone, 3 s each."""
    def busy(n: int) -> int:
        procs = [subprocess.Popen([sys.executable, "-c", BUSY], stdout=subprocess.PIPE, text=True) for _ in range(n)]
        return sum(int(p.communicate()[0]) for p in procs)

    return busy(2) / busy(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="processes per run (stage + workers)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--storage", help="Optuna storage URL shared by the processes (default: SQLite per run)")
    args = parser.parse_args()
    results: dict[int, list[dict]] = {n: [] for n in args.workers}
    ceilings = []
    with tempfile.TemporaryDirectory(prefix="bench-tune-") as tmp:
        for repeat in range(args.repeats):
            ceilings.append(parallel_capacity())  # the machine is shared: measured next to each round of runs
            for n in args.workers:
                results[n].append(run(n, args.trials, args.storage, Path(tmp) / f"r{repeat}-w{n}"))
                print(f"  run {repeat + 1}, {n} process(es): {results[n][-1]['wall']:.1f} s", file=sys.stderr)

    storage = "SQLite" if args.storage is None else args.storage.split(":", 1)[0]
    base = statistics.median(r["wall"] for r in results[args.workers[0]])
    base_search = statistics.median(r["search"] for r in results[args.workers[0]])
    print(f"{args.trials}-trial search (params.yaml), storage {storage}, {os.cpu_count()} cores, "
          f"median of {args.repeats} run(s)")
    print(f"{'processes':<11}{'wall s':>9}{'speed-up':>10}{'search s':>10}{'speed-up':>10}{'pruned':>8}"
          f"{'best val':>10}")
    for n, runs in results.items():
        wall = statistics.median(r["wall"] for r in runs)
        search = statistics.median(r["search"] for r in runs)
        pruned = statistics.median(r["pruned"] for r in runs)
        best = statistics.median(r["best"] for r in runs)
        print(f"{n:<11}{wall:>9.1f}{base / wall:>9.2f}x{search:>10.1f}{base_search / search:>9.2f}x"
              f"{pruned:>8.0f}{best:>10.4f}")
    print(f"machine ceiling: 2 busy processes did {statistics.median(ceilings):.2f}x the work of 1 (median)")
    first = args.workers[0]
    for i, ceiling in enumerate(ceilings):  # a shared machine: each round next to its own ceiling
        walls = ", ".join(f"{n}: {results[n][i]['wall']:.1f} s "
                          f"({results[first][i]['wall'] / results[n][i]['wall']:.2f}x)" for n in args.workers)
        print(f"  round {i + 1}: ceiling {ceiling:.2f}x; wall by processes {walls}")


if __name__ == "__main__":
    main()
