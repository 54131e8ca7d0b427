"""`dvc repro` for every source and task, on tiny params; a served classifier matches Keras."""

from __future__ import annotations

import json

import httpx
import keras
import numpy as np
import pandas as pd
import pytest

from tests.service.conftest import Server

pytestmark = pytest.mark.slow

CASES = {
    "file-regression": {"data": {"source": "file", "file": {"path": "examples/line.csv", "target": "y"}}},
    "sklearn-binary": {"data": {"source": "sklearn", "sklearn": {"name": "breast_cancer"}}},
    "synthetic-binary": {"data": {"synthetic": "classification", "n_samples": 150,
                                  "classification": {"n_classes": 2}}},
    "synthetic-multiclass": {"data": {"synthetic": "classification", "n_samples": 150}},
}
EXPECTED = {
    "file-regression": ("regression", {"rmse", "mae", "r2", "interval_coverage_test"}, {"baseline_linear", "baseline_ridge"}),
    "sklearn-binary": ("binary", {"accuracy", "precision", "recall", "f1", "roc_auc", "log_loss"},
                       {"baseline_majority", "baseline_logistic"}),
    "synthetic-binary": ("binary", {"accuracy", "roc_auc", "log_loss"}, {"baseline_majority", "baseline_logistic"}),
    "synthetic-multiclass": ("multiclass", {"accuracy", "precision", "recall", "f1", "roc_auc", "log_loss"},
                             {"baseline_majority", "baseline_logistic"}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_repro_for_each_source_and_task(project, case):
    project.set_params(CASES[case])
    project.run("dvc", "repro")
    root = project.path
    task, metric_keys, baselines = EXPECTED[case]
    metrics = json.loads((root / "metrics/evaluate.json").read_text())
    assert metrics["task"] == task
    assert metric_keys <= set(metrics["model"]) and baselines <= set(metrics)
    assert "noise_floor_ratio" not in metrics["model"]
    card = json.loads((root / "models/package/card.json").read_text())
    assert card["task"] == task and card["onnx_parity_max_abs_diff"] <= 1e-5
    plots = {p.name for p in (root / "plots/evaluate").iterdir()}
    if task == "regression":
        assert {"predictions.png", "residuals.png", "predictions.csv"} <= plots and card["interval"]
    else:
        assert {"confusion_matrix.png", "roc_pr_curves.png", "confusion.csv"} <= plots and card["interval"] is None
        assert metrics["model"]["accuracy"] > metrics["baseline_majority"]["accuracy"]
    if case == "file-regression":
        edited = pd.read_csv(root / "examples/line.csv").iloc[:-5]
        edited.to_csv(root / "examples/line.csv", index=False)
        assert "generate" in project.run("dvc", "status").stdout  # the user's file is a dependency
    if case == "synthetic-multiclass":
        check_served_classifier(root, card)


def check_served_classifier(root, card):
    """The service answers labels and probabilities that match the Keras model's."""
    model = keras.saving.load_model(root / "models/model.keras", safe_mode=True)
    test = pd.read_parquet(root / "data/split/test.parquet")
    names = [f["name"] for f in card["features"]]
    rows = test[names].head(8)
    expected = np.asarray(model(rows.to_numpy(np.float32)))
    server = Server(root / "models/package", root.parent / "serve.log", root.parent / "bentoml_home")
    server.start().wait_ready()
    try:
        answer = httpx.post(f"{server.url}/predict", json={"records": rows.to_dict("records")}, timeout=30).json()
        np.testing.assert_allclose(answer["probabilities"], expected, atol=1e-5)
        assert answer["labels"] == [card["class_labels"][i] for i in expected.argmax(axis=1)]
        wrong = httpx.post(f"{server.url}/predict", json={"records": [{"nope": 1.0}]}, timeout=30)
        assert wrong.status_code == 400 and "nope" in wrong.json()["error"]
    finally:
        server.stop()
