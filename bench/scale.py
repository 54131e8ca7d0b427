"""Scaling with rows: the whole real `dvc repro` on 10k, 100k and 1M rows, against HistGradientBoosting.

    .venv/bin/python bench/scale.py [--rows 10000 100000 1000000] [--codes] [--keep DIR] [--set KEY=VALUE ...]

Per table size the bench writes a non-linear synthetic regression (8 numeric columns and 2 categorical
ones: 6 and 30 string levels) as Parquet into a fresh copy of the project, points params.yaml at it
(data.source: file; every other param is the default, or as `--set` says) and runs `dvc repro` as a user would. It records
each stage's wall time (from DVC's "Running stage" lines), the peak RSS of the whole process tree (the
sum over DVC and its stage processes, sampled every 0.2 s; and the sum of PSS, see TreeRss) and the model's test RMSE (metrics/evaluate.json).
Then it fits scikit-learn's HistGradientBoostingRegressor (categorical columns as categories) on the
same training rows of the same split (data/split/train.parquet) and scores it on the same test rows:
with its defaults, and early-stopped on the split's validation rows (HGB-ES), as our MLP is. `--codes` writes the categorical columns as integer codes (for a pipeline without categorical support).

Goals (2-core machine): 1M rows whole repro <= 10 min, peak RSS <= 3 GB, cost 100k -> 1M <= 5x,
test RMSE within 1.1x of HistGradientBoosting's at 100k and 1M rows.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import add_params_options, bench_params, command_line_overrides  # noqa: E402
from devtools.project_copy import copy_project  # noqa: E402

STAGES = ["generate", "split", "tune", "train", "evaluate", "package"]
NOISE = 0.5
GOAL_MINUTES, GOAL_RSS_GB, GOAL_COST_RATIO, GOAL_RMSE_RATIO = 10, 3.0, 5.0, 1.1


def make_table(n_rows: int, seed: int = 0, codes: bool = False) -> pd.DataFrame:
    """y = smooth non-linear terms of x1..x8, an interaction, per-category offsets and a category-dependent slope,
    plus N(0, NOISE^2). The same seed gives the same generating function at every size."""
    effects = np.random.default_rng(1000 + seed)
    colour_offset, region_offset = effects.normal(0, 1.0, 6), effects.normal(0, 0.7, 30)
    region_slope = effects.normal(0, 0.5, 30)
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2, 2, size=(n_rows, 8))
    colour = rng.integers(0, 6, n_rows)
    region = np.minimum(rng.zipf(1.6, n_rows) - 1, 29)  # skewed, as real categories are
    y = (1.5 * np.sin(1.5 * x[:, 0]) + 0.5 * x[:, 1] * x[:, 2] + 0.4 * x[:, 3] ** 2 + np.tanh(2 * x[:, 4])
         + np.exp(-x[:, 5] ** 2) + 0.3 * x[:, 6] + region_slope[region] * x[:, 7]
         + colour_offset[colour] + region_offset[region] + rng.normal(0, NOISE, n_rows))
    frame = pd.DataFrame(x.astype(np.float32), columns=[f"x{i}" for i in range(1, 9)])
    if codes:
        frame["colour"], frame["region"] = colour, region
    else:
        frame["colour"] = np.array(["red", "green", "blue", "cyan", "amber", "violet"])[colour]
        frame["region"] = np.array([f"r{i:02d}" for i in range(30)])[region]
    frame["y"] = y
    return frame


class TreeRss:
    """Peak of the summed RSS of a process and all its descendants, overall and per label (the running stage); and
    of the summed PSS (proportional set size), which counts a page shared by several processes once in all. The RSS
    sum is an upper bound: a child forked by a stage (a `git` call, say) shares the stage's pages and counts them
    again until it execs."""

    def __init__(self, pid: int, interval: float = 0.2):
        self.root, self.interval = psutil.Process(pid), interval
        self.label, self.peak, self.peak_pss, self.per_label = None, 0, 0, {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(self.interval):
            total = proportional = 0
            try:
                processes = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            for process in processes:
                try:
                    memory = process.memory_full_info()
                    total, proportional = total + memory.rss, proportional + memory.pss
                except psutil.Error:
                    pass
            self.peak, self.peak_pss = max(self.peak, total), max(self.peak_pss, proportional)
            if self.label:
                self.per_label[self.label] = max(self.per_label.get(self.label, 0), total)

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


def dvc_env() -> dict[str, str]:
    env = dict(os.environ, DVC_NO_ANALYTICS="1", GIT_AUTHOR_NAME="bench", GIT_AUTHOR_EMAIL="bench@localhost",
               GIT_COMMITTER_NAME="bench", GIT_COMMITTER_EMAIL="bench@localhost")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("TUNE_STORAGE", None)
    return env


def prepare(project: Path, n_rows: int, codes: bool, params: dict) -> None:
    copy_project(project)
    make_table(n_rows, codes=codes).to_parquet(project / "table.parquet", index=False)
    params = json.loads(json.dumps(params))
    params["data"]["source"] = "file"
    params["data"]["file"].update(path="table.parquet", target="y", features=None)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for command in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"], ["git", "commit", "-qm", "bench"]):
        subprocess.run(command, cwd=project, env=dvc_env(), check=True, capture_output=True)


def repro(project: Path, log: Path) -> dict:
    """`dvc repro` in `project`: wall time per stage, peak RSS (tree, and per stage), its output in `log`."""
    started = time.monotonic()
    stage_start: dict[str, float] = {}
    with log.open("w") as out:
        process = subprocess.Popen(["dvc", "repro"], cwd=project, env=dvc_env(), stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, bufsize=1)
        rss = TreeRss(process.pid)
        for line in process.stdout:
            out.write(line)
            out.flush()
            match = re.match(r"Running stage '(\w+)'", line)
            if match:
                stage_start[match.group(1)] = time.monotonic()
                rss.label = match.group(1)
        code = process.wait()
        rss.close()
    ended = time.monotonic()
    if code:
        raise SystemExit(f"dvc repro failed ({code}) in {project}; its output: {log}")
    order = sorted(stage_start, key=stage_start.get)
    seconds = {stage: (stage_start[order[i + 1]] if i + 1 < len(order) else ended) - stage_start[stage]
               for i, stage in enumerate(order)}
    return {"seconds": seconds, "total": ended - started, "peak_rss": rss.peak, "peak_pss": rss.peak_pss,
            "stage_rss": rss.per_label}


def hist_gradient_boosting(project: Path) -> dict[str, dict]:
    """HistGradientBoostingRegressor on the split's training rows, scored on its test rows: with its defaults
    (100 iterations; what the goal compares with), and early-stopped on the split's validation rows as our
    MLP is (up to 1000 iterations, patience 20), a stronger baseline."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    schema = json.loads((project / "data" / "schema.json").read_text())
    features, target = schema["features"], schema["target"]
    parts = {name: pd.read_parquet(project / "data" / "split" / f"{name}.parquet") for name in ("train", "val", "test")}
    categorical = list(parts["train"][features].select_dtypes(exclude="number").columns)
    levels = {column: sorted(parts["train"][column].astype(str).unique()) for column in categorical}

    def xy(name: str) -> tuple[pd.DataFrame, np.ndarray]:
        x = parts[name][features].copy()
        for column in categorical:  # the training rows' categories; an unseen one is missing, as HGB expects
            x[column] = pd.Categorical(x[column].astype(str), categories=levels[column])
        return x, parts[name][target].to_numpy()

    (x_train, y_train), (x_val, y_val), (x_test, y_test) = xy("train"), xy("val"), xy("test")
    results = {}
    for name, settings, fit_kwargs in (
            ("defaults", {}, {}),
            ("early-stopped", {"max_iter": 1000, "early_stopping": True, "n_iter_no_change": 20},
             {"X_val": x_val, "y_val": y_val})):
        started = time.monotonic()
        model = HistGradientBoostingRegressor(categorical_features="from_dtype", random_state=0, **settings)
        model.fit(x_train, y_train, **fit_kwargs)
        rmse = float(np.sqrt(np.mean((model.predict(x_test) - y_test) ** 2)))
        results[name] = {"seconds": time.monotonic() - started, "rmse": rmse, "iterations": model.n_iter_}
    return results


def measure(n_rows: int, scratch: Path, codes: bool, params: dict) -> dict:
    project = scratch / f"rows-{n_rows}"
    prepare(project, n_rows, codes, params)
    load_before = os.getloadavg()[0]
    result = repro(project, scratch / f"rows-{n_rows}.log")
    result["load"] = (load_before, os.getloadavg()[0])
    result["rmse"] = json.loads((project / "metrics" / "evaluate.json").read_text())["model"]["rmse"]
    result["hgb"] = hist_gradient_boosting(project)
    log = (scratch / f"rows-{n_rows}.log").read_text().splitlines()
    result["trials"] = last_line(log, "tune: ", "trials finished")
    result["trained"] = last_line(log, "trained ", "epochs")
    return result


def last_line(lines: list[str], start: str, holding: str) -> str:
    found = [line.strip() for line in lines if line.startswith(start) and holding in line]
    return found[-1].split(", MLflow run")[0] if found else ""


def table(results: dict[int, dict]) -> str:
    header = f"{'rows':>9} " + " ".join(f"{s:>8}" for s in STAGES) + f" {'repro s':>8} {'peak RSS':>9}" \
             f" {'MLP RMSE':>9} {'HGB s':>6} {'HGB RMSE':>9} {'MLP/HGB':>8} {'HGB-ES s':>9} {'HGB-ES RMSE':>12}" \
             f" {'MLP/HGB-ES':>11} {'load':>9}"
    lines = [header]
    for n_rows, r in results.items():
        stages = " ".join(f"{r['seconds'].get(s, float('nan')):8.1f}" for s in STAGES)
        default, stopped = r["hgb"]["defaults"], r["hgb"]["early-stopped"]
        lines.append(f"{n_rows:>9,} {stages} {r['total']:8.1f} {r['peak_rss'] / 2**30:6.2f} GB {r['rmse']:9.4f}"
                     f" {default['seconds']:6.1f} {default['rmse']:9.4f} {r['rmse'] / default['rmse']:7.3f}x"
                     f" {stopped['seconds']:9.1f} {stopped['rmse']:12.4f} {r['rmse'] / stopped['rmse']:10.3f}x"
                     f" {r['load'][0]:4.1f}/{r['load'][1]:4.1f}")
    return "\n".join(lines)


def verdicts(results: dict[int, dict]) -> list[str]:
    lines = []
    for n_rows, r in results.items():
        stage_rss = ", ".join(f"{s} {r['stage_rss'][s] / 2**30:.2f}" for s in STAGES if s in r["stage_rss"])
        iterations = "/".join(str(r["hgb"][name]["iterations"]) for name in ("defaults", "early-stopped"))
        lines.append(f"{n_rows:,} rows: peak RSS per stage (GB, tree) {stage_rss}; peak PSS (tree)"
                     f" {r['peak_pss'] / 2**30:.2f} GB; {r['trials']}; {r['trained']};"
                     f" HGB iterations (defaults/early-stopped) {iterations}")
    if 1_000_000 in results:
        r = results[1_000_000]
        lines.append(f"1M rows: whole repro {r['total'] / 60:.1f} min (goal <= {GOAL_MINUTES}), peak RSS "
                     f"{r['peak_rss'] / 2**30:.2f} GB (goal <= {GOAL_RSS_GB:g}; PSS {r['peak_pss'] / 2**30:.2f} GB)")
    if 100_000 in results and 1_000_000 in results:
        ratio = results[1_000_000]["total"] / results[100_000]["total"]
        hgb = results[1_000_000]["hgb"]["defaults"]["seconds"] / results[100_000]["hgb"]["defaults"]["seconds"]
        lines.append(f"cost 100k -> 1M rows: repro {ratio:.2f}x (goal <= {GOAL_COST_RATIO:g}x); HistGradientBoosting"
                     f" {hgb:.2f}x")
    for n_rows in (100_000, 1_000_000):
        if n_rows in results:
            r = results[n_rows]
            default, stopped = r["hgb"]["defaults"]["rmse"], r["hgb"]["early-stopped"]["rmse"]
            lines.append(f"{n_rows:,} rows: test RMSE MLP / HistGradientBoosting {r['rmse'] / default:.3f}x (goal <="
                         f" {GOAL_RMSE_RATIO:g}x), / early-stopped HGB {r['rmse'] / stopped:.3f}x; noise floor {NOISE:g}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--codes", action="store_true", help="categorical columns as integer codes")
    parser.add_argument("--keep", type=Path, help="build the projects here and keep them (default: a temp dir)")
    add_params_options(parser)
    args = parser.parse_args()
    params = bench_params(args, {"data.source": "the bench's table", "data.file": "the bench's table"})
    overridden = ", ".join(command_line_overrides(args))
    print(f"bench/scale.py: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start;"
          f" {'params: ' + overridden if overridden else 'default params'}"
          f" (data.source: file), {'integer-coded' if args.codes else 'string'} categorical columns", flush=True)
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        scratch = args.keep or Path(tmp)
        scratch.mkdir(parents=True, exist_ok=True)
        for n_rows in args.rows:
            results[n_rows] = measure(n_rows, scratch, args.codes, params)
            print(table({n_rows: results[n_rows]}).splitlines()[-1], flush=True)
    print()
    print(table(results))
    print("\n".join(verdicts(results)))
    print("load average (1 min) before/after each repro is the last column; the machine is shared")


if __name__ == "__main__":
    main()
