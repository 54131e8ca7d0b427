"""The whole pipeline for real: `dvc repro` in a throw-away copy of the project, tiny params."""

from __future__ import annotations

import json

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from pipeline.artifacts import file_sha256

pytestmark = pytest.mark.slow


def test_repro_outputs_metrics_mlflow_and_determinism(project):
    project.run("dvc", "repro")
    root = project.path
    for out in ["data/raw.parquet", "data/split/train.parquet", "models/model.keras", "metrics/evaluate.json",
                "plots/predictions.png", "plots/residuals.png", "plots/learning_curve.png", "plots/predictions.csv"]:
        assert (root / out).stat().st_size > 0, out
    metrics = json.loads((root / "metrics/evaluate.json").read_text())
    assert set(metrics) == {"model", "baseline_linear", "baseline_tutorial"}
    for scores in metrics.values():
        assert set(scores) == {"rmse", "mae", "r2", "noise_floor_ratio"}
        assert scores["noise_floor_ratio"] >= 0.9  # no model beats the noise floor by much on fresh points
    assert metrics["baseline_linear"]["noise_floor_ratio"] < 1.2

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("keras-mlp")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_name.startswith("train 10-5 relu adam")
    assert run.data.params["units_1"] == "10" and run.data.params["epochs"] == "30"
    assert run.data.tags["data_sha256"] == file_sha256(root / "data/raw.parquet")
    assert len(run.data.tags["git_commit"]) >= 40
    assert run.data.metrics["test_rmse"] == pytest.approx(metrics["model"]["rmse"], rel=1e-5)
    history = client.get_metric_history(run.info.run_id, "val_loss")
    assert len(history) == run.data.metrics["epochs_run"] > 0
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert "plots/predictions.png" in artifacts
    model_uri = json.loads((root / "models/train_run.json").read_text())["model_uri"]
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    assert mlflow.models.get_model_info(model_uri).signature is not None

    assert "up to date" in project.run("dvc", "repro").stdout
    first = (root / "metrics/evaluate.json").read_bytes()
    project.run("dvc", "repro", "--force")
    assert (root / "metrics/evaluate.json").read_bytes() == first
    shown = project.run("dvc", "metrics", "show", "--json").stdout
    assert json.loads(shown)  # DVC can read the metrics file


def test_params_diff_and_experiments(project):
    project.run("dvc", "repro")
    project.commit("baseline run")
    project.set_params({"train": {"epochs": 12}})
    diff = json.loads(project.run("dvc", "params", "diff", "--json").stdout)
    assert {k: diff["params.yaml"]["train.epochs"][k] for k in ("old", "new")} == {"old": 30, "new": 12}
    status = project.run("dvc", "status").stdout
    assert "train" in status and "generate" not in status and "split" not in status
    project.run("git", "checkout", "params.yaml")
    result = project.run("dvc", "exp", "run", "-S", "train.epochs=8")
    assert "evaluate" in result.stdout
    assert project.params()["train"]["epochs"] == 8
    rows = project.run("dvc", "exp", "show", "--csv").stdout.splitlines()
    header = rows[0].split(",")
    epochs = {row.split(",")[header.index("train.epochs")] for row in rows[1:]}
    assert {"30", "8"} <= epochs
