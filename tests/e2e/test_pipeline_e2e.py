"""The whole pipeline for real: the outputs, MLflow records, package and served answers of the run's
shared built project (one `dvc repro` of a throw-away copy, tiny params; tests/conftest.py)."""

from __future__ import annotations

import json

import httpx
import keras
import mlflow
import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipeline.artifacts import file_sha256
from tests.service.conftest import Server

pytestmark = pytest.mark.slow


def test_repro_outputs_metrics_mlflow_and_package(built_project):
    project = built_project
    output = project.repro_output
    for stage in ["tune", "train", "evaluate", "package"]:
        assert f"Running stage '{stage}'" in output
    for noise in ["oneDNN custom operations", "absl::InitializeLog", "Failed to resolve installed pip", "np.object"]:
        assert noise not in output, noise  # a newcomer's first run shows the pipeline's lines, not library chatter
    root = project.path
    for out in ["data/raw.parquet", "data/split/train.parquet", "models/model.keras", "metrics/evaluate.json",
                "plots/evaluate/predictions.png", "plots/evaluate/residuals.png", "plots/evaluate/learning_curve.png",
                "plots/evaluate/predictions.csv"]:
        assert (root / out).stat().st_size > 0, out
    metrics = json.loads((root / "metrics/evaluate.json").read_text())
    assert set(metrics) == {"task", "model", "baseline_linear", "baseline_ridge", "baseline_tutorial", "versions"}
    assert metrics.pop("task") == "regression"
    assert metrics.pop("versions") == {"candidate": "1", "served": "1"}
    for scores in metrics.values():
        assert {"rmse", "mae", "r2", "noise_floor_ratio"} <= set(scores)
        assert scores["noise_floor_ratio"] >= 0.9  # no model beats the noise floor by much on fresh points
    assert metrics["baseline_linear"]["noise_floor_ratio"] < 1.2
    assert 0 <= metrics["model"]["interval_coverage_test"] <= 1

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("keras-mlp")
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.stage = 'train'")
    assert len(runs) == 1
    run = runs[0]
    best = yaml.safe_load((root / "models/best_params.yaml").read_text())
    assert run.info.run_name.startswith(f"train {best['units_1']}-{best['units_2']} {best['activation']}")
    assert run.data.params["units_1"] == str(best["units_1"]) and run.data.params["epochs"] == "30"
    assert run.data.tags["data_sha256"] == file_sha256(root / "data/raw.parquet")
    assert len(run.data.tags["git_commit"]) >= 40
    assert run.data.metrics["test_rmse"] == pytest.approx(metrics["model"]["rmse"], rel=1e-5)
    history = client.get_metric_history(run.info.run_id, "val_loss")
    assert len(history) == run.data.metrics["epochs_run"] > 0
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert "plots/predictions.png" in artifacts and "plots/residuals.png" in artifacts
    assert run.data.tags["model_sha256"] == file_sha256(root / "models/model.keras")
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    assert mlflow.models.get_model_info(run.data.tags["model_uri"]).signature is not None

    check_package_and_service(root, run.info.run_id, tmp_path_factory_dir=root.parent)

    assert "up to date" in project.run("dvc", "status").stdout
    shown = project.run("dvc", "metrics", "show", "--json").stdout
    assert json.loads(shown)  # DVC can read the metrics file


def check_package_and_service(root, run_id, tmp_path_factory_dir):
    """The package stage's output: card contents, a built bento, and a served model that matches Keras."""
    card = json.loads((root / "models/package/card.json").read_text())
    train = __import__("pandas").read_parquet(root / "data/split/train.parquet")
    assert card["features"] == [{"name": "x", "kind": "numeric", "min": float(train["x"].min()),
                                 "max": float(train["x"].max())}]
    assert "mlflow" not in card and "git_commit" not in card  # run provenance stays out of DVC's hash
    provenance = json.loads((root / "models/package/provenance.json").read_text())
    assert provenance["mlflow"]["run_id"] == run_id and provenance["mlflow"]["model_version"] == "1"
    assert provenance["model_sha256"] == file_sha256(root / "models/package/model.onnx")
    assert card["data_hash"] == file_sha256(root / "data/raw.parquet") and len(provenance["git_commit"]) >= 40
    assert card["onnx_parity_max_abs_diff"] <= 1e-5 and len(card["interval"]["abs_residuals"]) == 12
    bento = json.loads((root / "models/bento.json").read_text())["bento"]
    assert (root / "bentoml/bentos" / bento.replace(":", "/") / "bento.yaml").exists()

    model = keras.saving.load_model(root / "models/model.keras", safe_mode=True)
    x = np.array([[-1.5], [-0.3], [0.0], [0.7], [2.0]], dtype=np.float32)
    expected = np.asarray(model(x))[:, 0]
    server = Server(root / "models/package", tmp_path_factory_dir / "serve.log", tmp_path_factory_dir / "bentoml_home")
    server.start().wait_ready()
    try:
        answer = httpx.post(f"{server.url}/predict", json={"x": x.tolist()}, timeout=30).json()
        np.testing.assert_allclose(answer["predictions"], expected, atol=1e-5)
        assert answer["extrapolated"] == [True, False, False, False, True]
        metadata = httpx.get(f"{server.url}/metadata", timeout=30).json()
        assert metadata["mlflow"]["run_id"] == run_id and metadata["git_commit"] == provenance["git_commit"]
    finally:
        server.stop()
