"""The package stage's parts, in-process: ONNX export with its parity check, and provenance."""

from __future__ import annotations

import json

import keras
import numpy as np
import pandas as pd
import pytest

from pipeline import package
from pipeline.artifacts import file_sha256
from pipeline.config import HyperParams
from pipeline.data import Schema, Splits, features_and_target, write_splits
from pipeline.errors import PipelineError
from pipeline.model import build_model, save_model, seed_everything
from pipeline.train import categorical_inputs

HP = HyperParams(units_1=8, units_2=4, activation="tanh", dropout=0.0, l1=0.0, l2=0.0, optimizer="adam",
                 learning_rate=0.01, batch_size=16)


@pytest.fixture(scope="module")
def model():
    seed_everything(0)
    x = np.linspace(-1, 1, 40, dtype=np.float32).reshape(-1, 2)
    return build_model(HP, 2, x_train=x, y_train=x[:, :1] * 3)


def test_export_matches_keras_far_outside_the_training_range(model, tmp_path):
    inputs = np.linspace(-50, 50, 202, dtype=np.float32).reshape(-1, 2)
    gap = package.export_onnx(model, tmp_path / "model.onnx", inputs)
    assert 0 <= gap <= package.PARITY_TOLERANCE and (tmp_path / "model.onnx").stat().st_size > 0


def test_an_export_that_differs_from_keras_stops_the_stage(model, tmp_path, monkeypatch):
    monkeypatch.setattr(package, "PARITY_TOLERANCE", -1.0)  # any gap, even 0, is now too large
    with pytest.raises(PipelineError, match=r"package: ONNX export differs from Keras by .* relative; allowed -1 of max\(1, \|output\|\)"):
        package.export_onnx(model, tmp_path / "model.onnx", np.zeros((3, 2), np.float32))


def test_provenance_names_the_version_run_and_the_exact_model_file(tmp_path):
    model_file = tmp_path / "model.onnx"
    model_file.write_bytes(b"onnx bytes")
    version = type("Version", (), {"run_id": "r1", "name": "line-mlp", "version": 4})()
    run = type("Run", (), {"data": type("Data", (), {"tags": {"git_commit": "abc123"}})()})()
    record = package.provenance(version, run, model_file)
    assert record == {"model_sha256": file_sha256(model_file), "git_commit": "abc123",
                      "mlflow": {"run_id": "r1", "registered_model": "line-mlp", "model_version": "4",
                                 "alias": "champion"}}
    json.dumps(record)


def test_a_model_with_categories_exports_with_parity_on_every_index(tmp_path):
    """One-hot and embedded categories are inside the exported graph: the ONNX model takes category
    indices (0 = out-of-vocabulary) and answers as Keras does for every index of each vocabulary."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"area": rng.uniform(0, 100, 60), "color": rng.choice(["blue", "red", "green"], 60),
                          "zip": rng.choice([f"z{i}" for i in range(14)], 60), "y": rng.normal(size=60)})
    schema = Schema("regression", "y", ["area", "color", "zip"], None,
                    categories={"color": ["blue", "green", "red"], "zip": sorted(frame["zip"].unique())},
                    embedding_dims={"zip": 4})
    splits = Splits(frame[:40], frame[40:50], frame[50:], schema)
    x, y = features_and_target(splits.train, schema)
    seed_everything(0)
    built = build_model(HP, 3, x_train=x, y_train=y, categorical=categorical_inputs(schema))
    assert {layer.name for layer in built.layers} >= {"onehot_1", "embed_2"}
    save_model(built, tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True)
    write_splits(splits, tmp_path / "split")
    inputs = package.parity_inputs(tmp_path / "split")
    assert set(inputs[:, 2]) == set(range(len(schema.categories["zip"]) + 1))  # every index, 0 too
    assert package.export_onnx(loaded, tmp_path / "model.onnx", inputs) <= package.PARITY_TOLERANCE
