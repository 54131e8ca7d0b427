"""Run the real stage code in-process, in a scratch directory with its own MLflow and Optuna stores."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # so `python bench/<name>.py` finds the pipeline package from any directory

from pipeline.config import ConfigError, parse_params  # noqa: E402

# The README's tuning profile for tables (`dvc exp run -S ...` there; a test keeps the two the same).
TABLES_PROFILE = ["split.folds=5", "tune.space.l2.low=1.0e-4", "tune.space.l2.high=0.1", "tune.select=one_se"]


def default_params(overrides: list[str] = ()) -> dict:
    """params.yaml with `dotted.key=value` overrides applied, as `dvc exp run -S` applies them."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for override in overrides:
        key, separator, value = override.partition("=")
        *parents, leaf = key.split(".")
        section = raw
        for name in parents:
            if not isinstance(section.get(name), dict):
                raise SystemExit(f"--set {override}: params.yaml has no section '{name}' under that path")
            section = section[name]
        if not separator or leaf not in section:
            raise SystemExit(f"--set {override}: expected KEY=VALUE with KEY one of params.yaml's keys")
        section[leaf] = parse_value(value)
    return raw


def parse_value(text: str):
    """YAML, except that 1e-4 is a number (YAML 1.1 wants 1.0e-4), as `dvc exp run -S` reads it."""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def add_params_options(parser) -> None:
    parser.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                        help="override a params.yaml value, e.g. tune.space.l2.high=0.1 (repeatable)")
    parser.add_argument("--folds", type=int, help="short for --set split.folds=K")


def command_line_overrides(args) -> list[str]:
    """The params.yaml overrides the command line asked for: each --set, and --folds as split.folds."""
    return args.set + ([f"split.folds={args.folds}"] if args.folds is not None else [])


def bench_params(args, set_per_run: dict[str, str], profile: list[str] = ()) -> dict:
    """params.yaml with `profile`'s overrides, then the command line's --set and --folds, applied. A key in
    `set_per_run` (key: what sets it) is refused: the bench overwrites it on every run, so the override would
    do nothing."""
    overrides = command_line_overrides(args)
    for override in overrides:
        key = override.partition("=")[0]
        for owned, by in set_per_run.items():
            if key == owned or key.startswith(owned + "."):
                raise SystemExit(f"--set {override}: the bench sets {owned} on every run ({by})")
    raw = default_params([*profile, *overrides])
    try:
        parse_params(raw)  # fail before the first run, not an hour in
    except ConfigError as error:
        raise SystemExit(f"params.yaml with {', '.join([*profile, *overrides])}: {error}") from None
    return raw


def run_pipeline(raw_params: dict):
    """generate -> split -> tune -> train -> evaluate's scoring; returns (metrics, best hyperparams, splits, model)."""
    from pipeline.console import quiet_libraries

    quiet_libraries()  # before the stages import MLflow, which reads its log level once, on import
    from pipeline.config import parse_params
    from pipeline.data import load, split, write_frame, write_splits
    from pipeline.evaluate import evaluate
    from pipeline.train import train
    from pipeline.paths import Workspace
    from pipeline.tune import trial_rows, tune

    params = parse_params(raw_params)
    previous = Path.cwd()
    with tempfile.TemporaryDirectory() as scratch:
        os.chdir(scratch)  # the study and MLflow stores are relative to the working directory
        ws = Workspace(Path(scratch))
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{scratch}/mlflow.db"
        try:
            frame, schema = load(params.data)
            write_frame(frame, ws.raw)
            splits = split(frame, schema, params.split)
            write_splits(splits, ws.split_dir)
            best = tune(trial_rows(ws.split_dir, params), params, ws) if params.tune.n_trials else params.train.hyperparams
            model, _ = train(splits, best, params)
            return evaluate(model, splits, params), best, splits, model
        finally:
            os.chdir(previous)
            del os.environ["MLFLOW_TRACKING_URI"]
