"""Tune + registry through `dvc repro`: caching of upstream stages, champion alias on improvement only."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

SEARCH = {"tune": {"n_trials": 4, "epochs": 60, "patience": 10, "pruner": {"n_startup_trials": 2, "n_warmup_steps": 5}}}


def test_n_trials_change_reruns_only_downstream_and_champion_moves_on_improvement(project):
    project.set_params(SEARCH)
    project.run("dvc", "repro")
    root = project.path
    registry = json.loads((root / "models/registry.json").read_text())
    assert registry["version"] == "1" and registry["promoted"]

    best_before = (root / "models/best_params.yaml").read_text()
    project.set_params({"tune": {"n_trials": 8}})
    out = project.run("dvc", "repro").stdout
    assert "Stage 'generate' didn't change" in out and "Stage 'split' didn't change" in out
    assert "Running stage 'tune'" in out
    # train and evaluate follow whenever the search found better values (DVC skips them otherwise)
    changed = (root / "models/best_params.yaml").read_text() != best_before
    assert changed == ("Running stage 'train'" in out) == ("Running stage 'evaluate'" in out)
    expected_champion = "2" if changed else "1"

    # A deliberately worse model: no search, a tiny learning rate, two epochs.
    project.set_params({"tune": {"n_trials": 0},
                        "train": {"epochs": 2, "hyperparams": {"learning_rate": 0.0001, "optimizer": "sgd"}}})
    out = project.run("dvc", "repro").stdout
    worse = json.loads((root / "models/registry.json").read_text())
    assert not worse["promoted"]
    assert worse["champion_version"] == expected_champion
    assert worse["metric"] == "rmse"
    assert worse["previous_champion"]["test_value_rescored"] < worse["test_value"]
    assert f"kept champion v{expected_champion}, which package ships; test rmse" in out

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    assert str(client.get_model_version_by_alias("keras-mlp", "champion").version) == expected_champion
    mlflow.set_tracking_uri(uri)
    champion = mlflow.tensorflow.load_model("models:/keras-mlp@champion")
    prediction = np.asarray(champion(np.array([[0.0], [0.5]], dtype=np.float32)))
    assert np.allclose(prediction[:, 0], [1.0, 2.0], atol=0.5)
