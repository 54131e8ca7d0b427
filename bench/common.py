"""Run the real stage code in-process, in a scratch directory with its own MLflow and Optuna stores."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def default_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def run_pipeline(raw_params: dict):
    """generate -> split -> tune -> train -> evaluate's scoring; returns (metrics, best hyperparams, splits, model)."""
    from pipeline.console import import_tensorflow_quietly

    import_tensorflow_quietly()
    from pipeline import tracking
    from pipeline.config import parse_params
    from pipeline.data import RAW_PATH, load, split, write_frame, write_splits
    from pipeline.evaluate import evaluate
    from pipeline.train import train
    from pipeline.tune import tune

    tracking.quiet_mlflow_logs()
    params = parse_params(raw_params)
    previous = Path.cwd()
    with tempfile.TemporaryDirectory() as scratch:
        os.chdir(scratch)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{scratch}/mlflow.db"
        try:
            frame, schema = load(params.data)
            write_frame(frame, RAW_PATH)
            splits = split(frame, schema, params.split)
            write_splits(splits)
            best = tune(splits, params) if params.tune.n_trials else params.train.hyperparams
            model, _ = train(splits, best, params)
            return evaluate(model, splits, params), best, splits, model
        finally:
            os.chdir(previous)
            del os.environ["MLFLOW_TRACKING_URI"]
