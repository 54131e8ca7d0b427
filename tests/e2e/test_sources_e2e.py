"""`dvc repro` for every source and task, on tiny params; a served classifier matches Keras; a table with
categorical columns goes from CSV to the served bento, which takes strings and flags unseen categories."""

from __future__ import annotations

import json
import shutil

import httpx
import keras
import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.data import Schema, features_and_target
from pipeline.model import predict

from tests.conftest import CATEGORICAL_PARAMS, Project
from tests.service.conftest import Server

pytestmark = pytest.mark.slow

# Two cases with a bag of 2 networks (split.folds), one of them with the README's profile for tables;
# one with one network, trained streamed from its Parquet split (train.stream_above_rows), tuned and evaluated on
# samples read from it (tune.sample_rows, evaluate.sample_rows). (The built project runs the default source, the tutorial's line.) The file is
# the example table with categorical columns, run once per test run (the container test serves it too).
CASES = {
    "file-regression": CATEGORICAL_PARAMS,
    "sklearn-binary": {"data": {"source": "sklearn", "sklearn": {"name": "breast_cancer"}}, "split": {"folds": 2},
                       "tune": {"select": "one_se", "space": {"l2": {"low": 1.0e-4, "high": 0.1}}}},
    "synthetic-multiclass": {"data": {"synthetic": "classification", "n_samples": 300}, "split": {"folds": 1},
                             "train": {"stream_above_rows": 50}, "tune": {"sample_rows": 100},
                             "evaluate": {"sample_rows": 100}},
}
EXPECTED = {
    "file-regression": ("regression", {"rmse", "mae", "r2", "interval_coverage_test"}, {"baseline_linear", "baseline_ridge"}),
    "sklearn-binary": ("binary", {"accuracy", "precision", "recall", "f1", "roc_auc", "log_loss"},
                       {"baseline_majority", "baseline_logistic"}),
    "synthetic-multiclass": ("multiclass", {"accuracy", "precision", "recall", "f1", "roc_auc", "log_loss"},
                             {"baseline_majority", "baseline_logistic"}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_repro_for_each_source_and_task(request, case):
    if case == "file-regression":
        project = request.getfixturevalue("categorical_project")
        output = project.repro_output
    else:
        project = request.getfixturevalue("project")
        project.set_params(CASES[case])
        output = project.run("dvc", "repro").stdout
    root = project.path
    if "space" in CASES[case].get("tune", {}):
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
    # Rents are in the thousands (up to ~10^5 on the parity check's far points), where float32 itself is
    # exact to ~10^-3: the package stage's check is relative beyond 1.
    assert card["task"] == task and card["onnx_parity_max_abs_diff"] <= (1e-2 if case == "file-regression" else 1e-5)
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
        check_categorical_run(output, card)
        check_served_categories(root, card)
        copy = Project(request.getfixturevalue("tmp_path") / "project")  # the shared project stays as built
        shutil.copytree(root, copy.path, symlinks=True, ignore=shutil.ignore_patterns("bentoml", "mlartifacts"))
        edited = pd.read_csv(copy.path / "examples/rentals.csv").iloc[:-5]
        edited.to_csv(copy.path / "examples/rentals.csv", index=False)
        assert "generate" in copy.run("dvc", "status").stdout  # the user's file is a dependency
    if case == "synthetic-multiclass":
        assert "train: streaming " in output and "(more than train.stream_above_rows = 50)" in output
        check_sampled_stages(root, output, model, metrics, card)
        check_served_classifier(root, card)


def check_sampled_stages(root, output, model, metrics, card):
    """tune and evaluate read samples of the split files; the metrics still cover every test row, and the card's
    ranges every training row."""
    assert "tune: trials fit and validate on a sample of 100 of the 240 train + val rows" in output
    assert ("evaluate: the baselines and the card's training profile use a sample of 100 of the model's 180 training"
            " rows (evaluate.sample_rows)") in output
    assert card["profile"]["rows"] == 100
    test = pd.read_parquet(root / "data/split/test.parquet")
    schema = Schema.read(root / "data/split/schema.json")
    x, y = features_and_target(test, schema)
    assert len(test) == 60
    assert metrics["model"]["accuracy"] == round(float((predict(model, x).argmax(axis=1) == y[:, 0]).mean()), 6)
    train = pd.read_parquet(root / "data/split/train.parquet")
    assert {f["name"]: (f["min"], f["max"]) for f in card["features"]} == \
        {name: (train[name].min(), train[name].max()) for name in schema.features}


def check_categorical_run(output, card):
    """The console explains the task, the dropped constant column and the encodings; the card carries
    the vocabularies learnt on the training rows."""
    assert "task: regression (target 'rent': 230 distinct whole numbers, more than the 20 that auto reads as " \
           "classes; set data.task to override)" in output
    assert "dropped near-constant feature(s) (split.near_constant: 0.999): country: constant 'NL'" in output
    assert ("categorical feature(s): district (5 categories, one-hot); zip (16 categories, embedded in 8 dims); "
            "furnished (2 categories, one-hot)") in output
    kinds = {f["name"]: (f["kind"], f.get("categories")) for f in card["features"]}
    assert kinds["district"] == ("categorical", ["centre", "east", "north", "south", "west"])
    assert kinds["zip"][0] == "categorical" and "1012" in kinds["zip"][1] and kinds["area_m2"] == ("numeric", None)
    assert "country" not in kinds and card["dropped_features"] == {"country": "constant 'NL'"}


def check_served_categories(root, card):
    """`make serve`'s bento answers string records as the Keras bag does; an unseen category is answered
    (200), read as out-of-vocabulary and flagged; a number for a category is a 400 naming the field."""
    model = keras.saving.load_model(root / "models/model.keras", safe_mode=True)
    records = [{"area_m2": 60.0, "district": "centre", "zip": "1012", "furnished": "yes", "floor": 2},
               {"area_m2": 60.0, "district": "harbour", "zip": "9999", "furnished": "no", "floor": 2}]
    specs = card["features"]
    x = np.float32([[(f["categories"].index(r[f["name"]]) + 1 if r[f["name"]] in f["categories"] else 0)
                     if f["kind"] == "categorical" else r[f["name"]] for f in specs] for r in records])
    bento = json.loads((root / "models/bento.json").read_text())["bento"]
    server = Server(None, root.parent / "serve.log", root / "bentoml", bento=bento)
    server.start().wait_ready()
    try:
        answer = httpx.post(f"{server.url}/predict", json={"records": records}, timeout=30)
        wrong = httpx.post(f"{server.url}/predict", json={"records": [{**records[0], "zip": 1012}]}, timeout=30)
        metadata = httpx.get(f"{server.url}/metadata", timeout=30).json()
        spec = httpx.get(f"{server.url}/docs.json", timeout=30).text
    finally:
        server.stop()
    assert answer.status_code == 200, answer.text
    body = answer.json()
    np.testing.assert_allclose(body["predictions"], np.asarray(model(x))[:, 0], rtol=1e-5)
    assert body["unseen_categories"] == [[], ["district", "zip"]] and body["extrapolated"] == [False, True]
    assert body["interval"]["lower"][0] is not None and body["interval"]["lower"][1] is None
    assert wrong.status_code == 400
    assert "records[0].zip: Input should be a valid string" in wrong.json()["error"]
    assert "categorical feature(s) district, zip, furnished: strings" in wrong.json()["error"]
    assert metadata["features"] == specs
    assert "A category (string): 'centre', 'east', 'north', 'south', 'west'" in spec


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
