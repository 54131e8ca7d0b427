"""`dvc repro` for every source and task, on tiny params; a served classifier matches Keras."""

from __future__ import annotations

import json

import httpx
import keras
import numpy as np
import pandas as pd
import pytest
import yaml

from tests.service.conftest import Server

pytestmark = pytest.mark.slow

# Two cases with a bag of 2 networks (split.folds), one of them with the README's profile for tables;
# one with one network. (The built project runs the default source, the tutorial's line.)
CASES = {
    "file-regression": {"data": {"source": "file", "file": {"path": "examples/line.csv", "target": "y"}},
                        "split": {"folds": 2}},
    "sklearn-binary": {"data": {"source": "sklearn", "sklearn": {"name": "breast_cancer"}}, "split": {"folds": 2},
                       "tune": {"select": "one_se", "space": {"l2": {"low": 1.0e-4, "high": 0.1}}}},
    "synthetic-multiclass": {"data": {"synthetic": "classification", "n_samples": 150}, "split": {"folds": 1}},
}
EXPECTED = {
    "file-regression": ("regression", {"rmse", "mae", "r2", "interval_coverage_test"}, {"baseline_linear", "baseline_ridge"}),
    "sklearn-binary": ("binary", {"accuracy", "precision", "recall", "f1", "roc_auc", "log_loss"},
                       {"baseline_majority", "baseline_logistic"}),
    "synthetic-multiclass": ("multiclass", {"accuracy", "precision", "recall", "f1", "roc_auc", "log_loss"},
                             {"baseline_majority", "baseline_logistic"}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_repro_for_each_source_and_task(project, case):
    project.set_params(CASES[case])
    output = project.run("dvc", "repro").stdout
    root = project.path
    if "tune" in CASES[case]:
        chosen = yaml.safe_load((root / "models/best_params.yaml").read_text())
        assert 1e-4 <= chosen["l2"] <= 0.1
        assert ("has the lowest mean validation loss" in output
                or "is the most regularised within one standard error" in output)
    task, metric_keys, baselines = EXPECTED[case]
    metrics = json.loads((root / "metrics/evaluate.json").read_text())
    assert metrics["task"] == task
    assert metric_keys <= set(metrics["model"]) and baselines <= set(metrics)
    assert "noise_floor_ratio" not in metrics["model"]
    card = json.loads((root / "models/package/card.json").read_text())
    assert card["task"] == task and card["onnx_parity_max_abs_diff"] <= 1e-5
    plots = {p.name for p in (root / "plots/evaluate").iterdir()}
    folds = CASES[case]["split"]["folds"]
    model = keras.saving.load_model(root / "models/model.keras", safe_mode=True)
    assert len([layer for layer in model.layers if layer.name.startswith("member_")]) == (folds if folds > 1 else 0)
    curve = pd.read_csv(root / "plots/learning_curve.csv")
    assert {"epoch", "train_loss", "val_loss"} <= set(curve.columns)
    assert (f"val_loss_{folds}" in curve.columns) == (folds > 1)
    if task == "regression":
        assert {"predictions.png", "residuals.png", "predictions.csv"} <= plots and card["interval"]
        development = sum(len(pd.read_parquet(root / f"data/split/{part}.parquet")) for part in ("train", "val"))
        assert card["interval"]["method"] == "cross-conformal"
        assert card["interval"]["calibration"] == f"out-of-fold ({folds} folds of train + val)"
        assert len(card["interval"]["abs_residuals"]) == development  # every development row, held out once
    else:
        assert {"confusion_matrix.png", "roc_pr_curves.png", "confusion.csv"} <= plots and card["interval"] is None
        assert metrics["model"]["accuracy"] > metrics["baseline_majority"]["accuracy"]
    if case == "file-regression":
        edited = pd.read_csv(root / "examples/line.csv").iloc[:-5]
        edited.to_csv(root / "examples/line.csv", index=False)
        assert "generate" in project.run("dvc", "status").stdout  # the user's file is a dependency
    if case == "file-regression":
        check_served_bag_interval(root, card)
    if case == "synthetic-multiclass":
        check_served_classifier(root, card)


def check_served_bag_interval(root, card):
    """A bag serves the Keras bag's predictions, with the cross-conformal interval from its card."""
    model = keras.saving.load_model(root / "models/model.keras", safe_mode=True)
    x = [[-0.5], [0.25]]
    server = Server(root / "models/package", root.parent / "serve.log", root.parent / "bentoml_home")
    server.start().wait_ready()
    try:
        answer = httpx.post(f"{server.url}/predict", json={"x": x}, timeout=30).json()
    finally:
        server.stop()
    np.testing.assert_allclose(answer["predictions"], np.asarray(model(np.float32(x)))[:, 0], atol=1e-5)
    residuals = card["interval"]["abs_residuals"]
    rank = int(np.ceil((len(residuals) + 1) * 0.9))
    assert answer["interval"]["method"] == "cross-conformal"
    assert answer["interval"]["half_width"] == pytest.approx(residuals[rank - 1])


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
