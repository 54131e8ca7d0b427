"""Our tuned MLP against scikit-learn baselines on the same split, with the tuning profile for tables.

    .venv/bin/python bench/datasets.py [--split-seeds 0 1 2 3 4] [--only diabetes] [--profile defaults]
                                       [--set tune.seed=1 ...] [--folds 5]

Goals (on the default split, split.seed 0): breast_cancer accuracy >= LogisticRegression's;
diabetes R2 >= Ridge's; synthetic multi-class accuracy >= LogisticRegression's and
MLPClassifier's (scikit-learn defaults).

"Ours" is params.yaml with the README's tuning profile for tables (TABLES_PROFILE, which is what
the README tells a table's user to run); `--profile defaults` runs params.yaml as it is.

A test set of 89-200 rows moves a metric by 0.005-0.011 per row, so one split says little about
which model is better. The bench therefore repeats the whole pipeline (split, tune, train,
evaluate) on several split seeds and also prints, per data set, the mean over the splits and on
how many splits ours matched or beat each baseline. Per split it prints a 95 % paired bootstrap
interval of the difference (resampling test rows): an interval that spans 0 means that test set
cannot tell the two models apart.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings

import numpy as np
import scipy.stats
from common import TABLES_PROFILE, add_params_options, bench_params, run_pipeline
from sklearn.metrics import r2_score

CASES = [
    ("breast_cancer", {"source": "sklearn", "sklearn": {"name": "breast_cancer"}}, "accuracy", ["baseline_logistic"]),
    ("diabetes", {"source": "sklearn", "sklearn": {"name": "diabetes"}}, "r2", ["baseline_ridge"]),
    ("synthetic multiclass", {"source": "synthetic", "synthetic": "classification", "n_samples": 1000},
     "accuracy", ["baseline_logistic", "sklearn_mlp"]),
]
GOAL_SPLIT_SEED = 0
BOOTSTRAP_RESAMPLES = 2000


def mlp_classifier(splits, folds: int):
    from sklearn.neural_network import MLPClassifier

    from pipeline.data import development_rows, features_and_target

    x, y = features_and_target(development_rows(splits, folds), splits.schema)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # defaults may not converge in 200 iterations; that is the baseline
        return MLPClassifier(random_state=0).fit(x, y[:, 0].astype(int))


def test_predictions(model, splits, baselines: list[str], folds: int) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """(test targets, ours, {baseline: predictions}): values for regression, class indices otherwise.
    The baselines learn from the same rows as ours (train, or train + val when cross-validated)."""
    from pipeline.data import development_rows, features_and_target
    from pipeline.evaluate import keras_predictor, sklearn_baselines

    x, y = features_and_target(splits.test, splits.schema)
    task = splits.schema.task
    fitted = sklearn_baselines(development_rows(splits, folds), splits.schema)
    if "sklearn_mlp" in baselines:
        fitted["sklearn_mlp"] = mlp_classifier(splits, folds).predict_proba

    def decided(out: np.ndarray) -> np.ndarray:
        return out if task == "regression" else out.argmax(axis=1)

    return (y[:, 0] if task == "regression" else y[:, 0].astype(int),
            decided(keras_predictor(model, task)(x)), {b: decided(fitted[b](x)) for b in baselines})


def score(metric: str, y: np.ndarray, predicted: np.ndarray) -> float:
    return float(r2_score(y, predicted) if metric == "r2" else np.mean(predicted == y))


def difference_interval(metric: str, y: np.ndarray, ours: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    """95 % paired bootstrap interval (over test rows) of ours' metric minus the other model's."""
    result = scipy.stats.bootstrap(
        (y, ours, other), lambda yb, ob, bb: score(metric, yb, ob) - score(metric, yb, bb),
        paired=True, vectorized=False, n_resamples=BOOTSTRAP_RESAMPLES, method="percentile", random_state=0)
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def measure(params: dict, data: dict, metric: str, baselines: list[str], split_seed: int):
    """(ours, {baseline: (score, 95 % interval of ours minus it)}, best hyperparameters) on one split."""
    raw = copy.deepcopy(params)
    raw["data"].update(data)
    raw["split"]["seed"] = split_seed
    folds = raw["split"]["folds"]
    metrics, best, splits, model = run_pipeline(raw)
    y, ours, others = test_predictions(model, splits, baselines, folds)
    ours_score = score(metric, y, ours)
    assert abs(ours_score - metrics["model"][metric]) < 1e-4, "bench scoring drifted from the evaluate stage"
    scores = {b: (score(metric, y, p), difference_interval(metric, y, ours, p)) for b, p in others.items()}
    return ours_score, scores, best.model_dump()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split-seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--only", help="run only the data sets whose name starts with this")
    parser.add_argument("--profile", choices=["tables", "defaults"], default="tables",
                        help="tables: params.yaml with " + " ".join(TABLES_PROFILE) + "; defaults: params.yaml as it is")
    add_params_options(parser)
    args = parser.parse_args()
    set_per_run = {"split.seed": "--split-seeds"} | {f"data.{key}": "the data set's own" for _, data, _, _ in CASES for key in data}
    profile = TABLES_PROFILE if args.profile == "tables" else []
    params = bench_params(args, set_per_run, profile)
    folds = params["split"]["folds"]
    cases = [case for case in CASES if not args.only or case[0].startswith(args.only)]
    print(f"profile {args.profile}" + (f" ({', '.join(profile)})" if profile else " (params.yaml)")
          + (f", overridden: {', '.join(args.set)}" if args.set else ""))
    print(f"split.folds = {folds}: " + ("train on train, early-stop on val" if folds == 1 else
          f"{folds}-fold cross-validated tuning and a bag of {folds}; baselines fitted on train + val"))
    results: dict[str, list[tuple[int, float, dict[str, tuple[float, tuple[float, float]]]]]] = {}
    for name, data, metric, baselines in cases:
        for seed in args.split_seeds:
            start = time.perf_counter()
            ours, scores, best = measure(params, data, metric, baselines, seed)
            results.setdefault(name, []).append((seed, ours, scores))
            print(f"{name} split {seed}: {metric} ours {ours:.4f} "
                  + " ".join(f"{k} {v:.4f}" for k, (v, _) in scores.items())
                  + f" ({time.perf_counter() - start:.0f} s) best {best}", flush=True)

    print(f"\n{'dataset':<22}{'metric':<10}{'split':>5}{'ours':>8}   baselines on the same split: score"
          " (ours minus it, 95 % paired-bootstrap interval over test rows)")
    for name, _, metric, _ in cases:
        for seed, ours, scores in results[name]:
            verdict = "ours >= all" if all(ours >= v for v, _ in scores.values()) else "below a baseline"
            print(f"{name:<22}{metric:<10}{seed:>5}{ours:>8.4f}   "
                  + ", ".join(f"{k} {v:.4f} ({ours - v:+.3f}, {low:+.3f} to {high:+.3f})"
                              for k, (v, (low, high)) in scores.items()) + f"   {verdict}")

    print(f"\n{'dataset':<22}{'splits':>6}{'mean ours':>11}   mean baseline (ours >= it on k of n splits)")
    for name, _, _, baselines in cases:
        rows = results[name]
        mean_ours = statistics.mean(ours for _, ours, _ in rows)
        summary = []
        for baseline in baselines:
            mean = statistics.mean(scores[baseline][0] for _, _, scores in rows)
            matched = sum(ours >= scores[baseline][0] for _, ours, scores in rows)
            summary.append(f"{baseline} {mean:.4f} ({matched} of {len(rows)})")
        print(f"{name:<22}{len(rows):>6}{mean_ours:>11.4f}   " + ", ".join(summary))

    goal_rows = {name: r for name, rows in results.items() for r in rows if r[0] == GOAL_SPLIT_SEED}
    if goal_rows:
        met = [name for name, (_, ours, scores) in goal_rows.items() if all(ours >= v for v, _ in scores.values())]
        print(f"\ngoal (split seed {GOAL_SPLIT_SEED}): met on {len(met)} of {len(goal_rows)} data sets"
              + (f" ({', '.join(met)})" if met else ""))


if __name__ == "__main__":
    main()
