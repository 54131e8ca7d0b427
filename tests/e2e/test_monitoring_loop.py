"""The monitoring loop end to end: serve -> log -> feedback -> `monitor` flags drift -> append the labelled
rows to the data file -> `dvc repro` -> a new champion by the fair rule, better where the traffic went.

The first model is the session's built project (served read-only from its models/package by a real
`bentoml serve`); the retraining runs in a clone of it that carries its MLflow store (so the registry
holds the champion to beat) and is the one `dvc repro` this file adds (tune.n_trials 0: the built
project's tuned settings are kept, the search is not what is tested here).
"""

import json

import httpx
import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import yaml

from devtools.server import Server
from tests.conftest import Project, carry_mlflow_store, run

pytestmark = pytest.mark.slow
TOKEN = "loop-token"


def rmse(model_dir, x: np.ndarray, y: np.ndarray) -> float:
    session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: x.reshape(-1, 1).astype(np.float32)})[0][:, 0]
    return float(np.sqrt(np.mean((out - y) ** 2)))


def test_drift_is_flagged_and_retraining_on_the_labelled_rows_serves_a_better_champion(built_project, tmp_path):
    package = built_project.path / "models" / "package"
    train = pd.read_parquet(built_project.path / "data" / "split" / "train.parquet")
    sigma = train["x"].std()
    rng = np.random.default_rng(11)

    # 1. Serve the packaged model with the request log on; traffic whose x moved up by one sigma.
    log_dir = tmp_path / "request_log"
    server = Server(package, tmp_path / "server.log", tmp_path / "bentoml_home",
                    {"SERVICE_REQUEST_LOG": str(log_dir), "SERVICE_API_TOKEN": TOKEN})
    (tmp_path / "bentoml_home").mkdir()
    try:
        server.start().wait_ready()
        with httpx.Client(base_url=server.url, timeout=30, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            for _ in range(30):  # 30 requests of 10 rows
                x = rng.uniform(-1, 1, 10) + sigma
                answer = client.post("/predict", json={"x": x.reshape(-1, 1).tolist()}).json()
                truth = 2 * x + 1 + rng.normal(0, 0.1, 10)  # the ground truth arrives later
                feedback = client.post("/feedback", json={"id": answer["request_id"], "targets": truth.tolist()})
                assert feedback.status_code == 200
            metrics = client.get("/metrics").text
        assert next(float(line.split()[-1]) for line in metrics.splitlines()
                    if line.startswith('service_drift_psi{feature="x"}')) > 0.2
    finally:
        server.stop()

    # 2. `monitor` flags the drift (exit 1) and writes the labelled rows.
    report = tmp_path / "report"
    result = built_project.run("python", "-m", "pipeline", "monitor", "--log", str(log_dir), "--out", str(report),
                               check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "retrain: feature 'x' drifted" in result.stdout
    summary = json.loads((report / "summary.json").read_text())
    assert summary["rows"] == 300 and summary["error"]["matched_rows"] == 300 and summary["model_version"] == "1"
    assert summary["error"]["live"] > summary["error"]["test"]
    labelled = pd.read_csv(report / "labelled.csv")
    assert list(labelled.columns) == ["x", "y"] and len(labelled) == 300

    # 3. Append them to the data file and retrain with `dvc repro`, against the champion in the registry.
    clone = Project(tmp_path / "clone")
    run(["git", "clone", "-q", str(built_project.path), str(clone.path)], cwd=tmp_path)
    carry_mlflow_store(built_project, clone)
    data = pd.concat([pd.read_parquet(built_project.path / "data" / "raw.parquet"), labelled], ignore_index=True)
    data.to_csv(clone.path / "data.csv", index=False)
    tuned = yaml.safe_load((built_project.path / "models" / "best_params.yaml").read_text())
    clone.set_params({"data": {"source": "file", "file": {"path": "data.csv", "target": "y", "features": None}},
                      "tune": {"n_trials": 0}, "train": {"hyperparams": tuned}})
    repro = clone.run("dvc", "repro", timeout=900)
    assert "the new champion" in repro.stdout, repro.stdout
    assert "compared on the" in repro.stdout  # the fair rule had rows to compare on
    assert json.loads((clone.path / "metrics" / "evaluate.json").read_text())["versions"]["served"] == "2"

    # 4. The retrained model's error where the traffic went is lower than the old model's.
    x_new = rng.uniform(1.0, 1.0 + sigma, 500)
    y_new = 2 * x_new + 1
    old, new = rmse(package, x_new, y_new), rmse(clone.path / "models" / "package", x_new, y_new)
    assert new < old, (new, old)


def test_a_categorical_model_s_profile_is_what_the_service_counts_for_its_training_rows(categorical_project):
    """The packaged card of the categorical table: the service's counting (strings to model indices) of
    the rows the model learnt from reproduces the profile's shares, so PSI is 0 on the training data."""
    import sys

    from devtools.server import SERVICE_DIR

    sys.path.insert(0, str(SERVICE_DIR))
    from api_models import ModelCard
    from monitoring import Monitoring, MonitoringSettings

    project = categorical_project.path
    card = ModelCard.model_validate_json((project / "models" / "package" / "card.json").read_text())
    for feature, column in zip(card.features, card.profile.features):
        assert column.kind == feature.kind
        if feature.kind == "categorical":
            assert column.categories[1:] == feature.categories
    split = project / "data" / "split"
    rows = pd.concat([pd.read_parquet(split / "train.parquet"), pd.read_parquet(split / "val.parquet")])  # 2 folds
    assert card.profile.rows == len(rows)
    settings = MonitoringSettings(drift=True, window_rows=len(rows), window_s=None, request_log=None,
                                  log_max_bytes=1, log_files=1, log_batch=1)
    monitoring = Monitoring(settings, card)
    # As a client sends them: numbers, and strings for the categorical features.
    values = [[str(v) if f.kind == "categorical" else float(v) for f, v in zip(card.features, row)]
              for row in rows[card.feature_names].itertuples(index=False)]
    window = monitoring.drift.window
    window.min_rows = 1
    monitoring.drift.window.observe(
        np.column_stack([np.asarray(monitoring._indexed(values), dtype=np.float64), np.zeros(len(values))]),
        np.zeros(len(values), bool))
    *per_feature, _ = window.psi()  # the output column got zeros here: only the inputs are compared
    assert max(per_feature) < 1e-6, dict(zip(card.feature_names, per_feature))
