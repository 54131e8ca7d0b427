"""Noise-floor ratio with default params on data seeds 0-4: ours (tuned), the tutorial config, linear.

Runs the real stage code (generate, split, tune, train, evaluate's scoring) for each data seed in a
scratch directory with its own MLflow and Optuna stores. The ratio is RMSE on 10,000 fresh points
divided by the generating noise; 1.00 is the floor, the goal is <= 1.05.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2, 3, 4])
    args = parser.parse_args()
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    with tempfile.TemporaryDirectory() as scratch:
        os.chdir(scratch)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{scratch}/mlflow.db"
        from pipeline import tracking
        from pipeline.config import parse_params
        from pipeline.data import RAW_PATH, load, split, write_frame, write_splits
        from pipeline.evaluate import evaluate
        from pipeline.train import train
        from pipeline.tune import tune

        tracking.quiet_mlflow_logs()
        rows = []
        for seed in args.seeds:
            raw["data"]["seed"] = seed
            params = parse_params(raw)
            start = time.perf_counter()
            frame, schema = load(params.data)
            write_frame(frame, RAW_PATH)
            splits = split(frame, schema, params.split)
            write_splits(splits)
            best = tune(splits, params)
            model, _ = train(splits, best, params)
            metrics = evaluate(model, splits, params)
            rows.append((seed, *(metrics[k]["noise_floor_ratio"] for k in ("model", "baseline_tutorial",
                                                                            "baseline_linear")),
                         time.perf_counter() - start, best))
            print(f"seed {seed}: {rows[-1][1]:.4f} ({rows[-1][4]:.0f} s) {best.model_dump()}", flush=True)
    print(f"\n{'data seed':<10}{'ours':>8}{'tutorial':>10}{'linear':>8}   (noise-floor ratio, goal <= 1.05)")
    for seed, ours, tutorial, linear, _, _ in rows:
        print(f"{seed:<10}{ours:>8.3f}{tutorial:>10.3f}{linear:>8.3f}{'' if ours <= 1.05 else '   over goal'}")
    print(f"worst: ours {max(r[1] for r in rows):.3f}, tutorial {min(r[2] for r in rows):.3f}-"
          f"{max(r[2] for r in rows):.3f}")


if __name__ == "__main__":
    main()
