"""Noise-floor ratio with default params on data seeds 0-4: ours (tuned), the tutorial config, linear.

Runs the real stage code (generate, split, tune, train, evaluate's scoring) for each data seed.
The ratio is RMSE on 10,000 fresh points divided by the generating noise; 1.00 is the floor,
the goal is <= 1.05.
"""

from __future__ import annotations

import argparse
import time

from common import add_params_options, bench_params, run_pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2, 3, 4])
    add_params_options(parser)
    args = parser.parse_args()
    raw = bench_params(args, {"data.seed": "--seeds"})
    if args.set:
        print("params.yaml overridden: " + ", ".join(args.set))
    print(f"split.folds = {raw['split']['folds']}")
    rows = []
    for seed in args.seeds:
        raw["data"]["seed"] = seed
        start = time.perf_counter()
        metrics, best, _, _ = run_pipeline(raw)
        ratios = [metrics[k]["noise_floor_ratio"] for k in ("model", "baseline_tutorial", "baseline_linear")]
        rows.append((seed, *ratios))
        print(f"seed {seed}: {ratios[0]:.4f} ({time.perf_counter() - start:.0f} s) {best.model_dump()}", flush=True)
    print(f"\n{'data seed':<10}{'ours':>8}{'tutorial':>10}{'linear':>8}   (noise-floor ratio, goal <= 1.05)")
    for seed, ours, tutorial, linear in rows:
        print(f"{seed:<10}{ours:>8.3f}{tutorial:>10.3f}{linear:>8.3f}{'' if ours <= 1.05 else '   over goal'}")


if __name__ == "__main__":
    main()
