"""Our tuned MLP against scikit-learn baselines on the same split, default params otherwise.

Goals: breast_cancer accuracy >= LogisticRegression's; diabetes R2 >= Ridge's; synthetic
multi-class accuracy >= LogisticRegression's and MLPClassifier's (scikit-learn defaults).
"""

from __future__ import annotations

import warnings

from common import default_params, run_pipeline

CASES = [
    ("breast_cancer", {"source": "sklearn", "sklearn": {"name": "breast_cancer"}}, "accuracy", ["baseline_logistic"]),
    ("diabetes", {"source": "sklearn", "sklearn": {"name": "diabetes"}}, "r2", ["baseline_ridge"]),
    ("synthetic multiclass", {"source": "synthetic", "synthetic": "classification", "n_samples": 1000},
     "accuracy", ["baseline_logistic", "sklearn_mlp"]),
]


def mlp_classifier_accuracy(splits) -> float:
    from sklearn.metrics import accuracy_score
    from sklearn.neural_network import MLPClassifier

    from pipeline.data import features_and_target

    x, y = features_and_target(splits.train, splits.schema)
    x_test, y_test = features_and_target(splits.test, splits.schema)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # defaults may not converge in 200 iterations; that is the baseline
        model = MLPClassifier(random_state=0).fit(x, y[:, 0].astype(int))
    return float(accuracy_score(y_test[:, 0].astype(int), model.predict(x_test)))


def main() -> None:
    rows = []
    for name, data, metric, baselines in CASES:
        raw = default_params()
        raw["data"].update(data)
        metrics, best, splits, _ = run_pipeline(raw)
        scores = {b: metrics[b][metric] for b in baselines if b in metrics}
        if "sklearn_mlp" in baselines:
            scores["sklearn_mlp"] = mlp_classifier_accuracy(splits)
        ours = metrics["model"][metric]
        rows.append((name, metric, ours, scores))
        print(f"{name}: {metric} ours {ours:.4f} {scores} best {best.model_dump()}", flush=True)
    print(f"\n{'dataset':<22}{'metric':<10}{'ours':>8}   baselines (same split)")
    for name, metric, ours, scores in rows:
        verdict = "goal met" if all(ours >= s for s in scores.values()) else "below a baseline"
        print(f"{name:<22}{metric:<10}{ours:>8.4f}   " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items())
              + f"   {verdict}")


if __name__ == "__main__":
    main()
