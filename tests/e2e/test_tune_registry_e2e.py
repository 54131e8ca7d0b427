"""Tune + registry through `dvc repro` and `dvc exp run`: only the stages downstream of a change re-run, the
champion alias stays on a fair loss and moves when no fair comparison is possible, and what `package` ships
(model, card, metrics) is the champion, also when it is older. (A candidate that wins a fair comparison is
promoted: tests/pipeline/test_registry.py, on a real store.)"""

from __future__ import annotations

import json

import mlflow
import numpy as np
import onnxruntime as ort
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import copy_of

pytestmark = pytest.mark.slow


def test_a_worse_experiment_keeps_the_champion_and_a_resplit_promotes_without_a_fair_comparison(built_project, tmp_path):
    project = copy_of(built_project, tmp_path / "project")  # its first `dvc repro` is committed: v1, the champion
    root = project.path
    name = project.params()["tracking"]["registered_model"]
    registry = json.loads((root / "models/registry.json").read_text())
    assert registry["version"] == "1" and registry["promoted"]
    expected_champion = "1"
    champion_metrics = json.loads((root / "metrics/evaluate.json").read_text())["model"]
    champion_card = json.loads((root / "models/package/card.json").read_text())

    # A deliberately worse model (no search, a tiny learning rate, two epochs), as a DVC experiment
    # against the committed baseline: `dvc params diff` and `dvc status` name what changed first.
    assert project.run("git", "status", "--porcelain").stdout == ""
    worse_params = {"tune": {"n_trials": 0},
                    "train": {"epochs": 2, "min_epochs": 0, "hyperparams": {"learning_rate": 0.0001, "optimizer": "sgd"}}}
    project.set_params(worse_params)
    diff = json.loads(project.run("dvc", "params", "diff", "--json").stdout)["params.yaml"]
    assert {k: diff["train.epochs"][k] for k in ("old", "new")} == {"old": 30, "new": 2}
    status = project.run("dvc", "status").stdout
    assert "train" in status and "generate" not in status and "split" not in status
    project.run("git", "checkout", "params.yaml")
    out = project.run("dvc", "exp", "run", "-S", "tune.n_trials=0", "-S", "train.epochs=2", "-S", "train.min_epochs=0",
                      "-S", "train.hyperparams.learning_rate=0.0001", "-S", "train.hyperparams.optimizer=sgd").stdout
    assert project.params()["train"]["epochs"] == 2
    assert "Stage 'split' didn't change" in out and "Running stage 'train'" in out  # only downstream of the change
    shown = json.dumps(json.loads(project.run("dvc", "exp", "show", "--json").stdout))
    assert '"epochs": 2' in shown and '"epochs": 30' in shown
    worse = json.loads((root / "models/registry.json").read_text())
    assert not worse["promoted"]
    assert worse["champion_version"] == expected_champion
    assert worse["metric"] == "rmse"
    compared = worse["previous_champion"]["compared"]
    assert compared["champion"] < compared["candidate"] == pytest.approx(worse["test_value"], abs=1e-6)
    assert compared["rows"] == len(__import__("pandas").read_parquet(root / "data/split/test.parquet"))
    assert f"kept champion v{expected_champion}, which package ships; rmse" in out and "(same data and split;" in out
    # What ships is the champion, described by its own card, not by the model just evaluated.
    metrics = json.loads((root / "metrics/evaluate.json").read_text())
    assert metrics["versions"] == {"candidate": worse["version"], "served": expected_champion,
                                   "served_metrics": champion_metrics}
    assert metrics["model"]["rmse"] == pytest.approx(worse["test_value"])
    card = json.loads((root / "models/package/card.json").read_text())
    assert card == champion_card  # every field: metrics, interval, ranges, params, fingerprint
    assert card["metrics"] == champion_metrics != metrics["model"]
    provenance = json.loads((root / "models/package/provenance.json").read_text())
    assert provenance["mlflow"]["model_version"] == expected_champion
    assert f"package ships v{expected_champion}, not this run's v{worse['version']}" in out

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    assert str(client.get_model_version_by_alias(name, "champion").version) == expected_champion
    mlflow.set_tracking_uri(uri)
    champion = mlflow.tensorflow.load_model(f"models:/{name}@champion")
    x = np.array([[-0.8], [0.0], [0.5]], dtype=np.float32)
    shipped = ort.InferenceSession(str(root / "models/package/model.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(shipped.run(None, {shipped.get_inputs()[0].name: x})[0], np.asarray(champion(x)),
                               atol=1e-5)  # the package holds the registry's champion, not the latest model

    # A re-split: the champion learnt from most of the new test rows, so it cannot be compared
    # fairly; the new model is promoted and shipped, and the console and the version say why.
    project.set_params({"split": {"seed": 1}})
    out = project.run("dvc", "repro").stdout
    resplit = json.loads((root / "models/registry.json").read_text())
    assert resplit["promoted"] and resplit["previous_champion"]["compared"] is None
    assert f"the new champion, as no fair comparison is possible (champion v{expected_champion} learnt from" in out
    assert "too few to compare on (evaluate.min_fair_rows: 20)" in resplit["reason"]
    version = client.get_model_version(name, resplit["version"])
    assert "no fair comparison" in version.tags["promotion"] and version.tags["split_fingerprint"] != ""
    metrics = json.loads((root / "metrics/evaluate.json").read_text())
    assert metrics["versions"] == {"candidate": resplit["version"], "served": resplit["version"]}
    card = json.loads((root / "models/package/card.json").read_text())
    assert card["metrics"] == metrics["model"] and card["split_fingerprint"] == version.tags["split_fingerprint"]

