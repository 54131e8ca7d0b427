"""Model Registry: register each evaluated model; move the `champion` alias only on improvement.

The comparison re-scores the current champion on *this* test set instead of trusting a number
recorded when it was trained on other data.
"""

from __future__ import annotations

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from sklearn.metrics import root_mean_squared_error

CHAMPION = "champion"


def champion_rmse(name: str, x_test: np.ndarray, y_test: np.ndarray) -> tuple[str, float | None] | None:
    """(version, RMSE on this test set) of the current champion; None if there is none."""
    client = MlflowClient()
    try:
        version = str(client.get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:
        return None
    from pipeline.model import predict

    try:
        model = mlflow.tensorflow.load_model(f"models:/{name}@{CHAMPION}")
        return version, float(root_mean_squared_error(y_test, predict(model, x_test)))
    except (ValueError, MlflowException, OSError):
        return version, None  # cannot score these inputs (e.g. other features): not comparable


def register_and_promote(name: str, model_uri: str, run_id: str, test_rmse: float,
                         x_test: np.ndarray, y_test: np.ndarray) -> dict:
    """Register the model; give it the champion alias if it is at least as good as the champion."""
    client = MlflowClient()
    current = champion_rmse(name, x_test, y_test)
    version = str(mlflow.register_model(model_uri, name, tags={"run_id": run_id}).version)
    client.set_model_version_tag(name, version, "test_rmse", f"{test_rmse:.6g}")
    promoted = current is None or current[1] is None or test_rmse <= current[1]
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, version)
    return {
        "registered_model": name,
        "version": version,
        "promoted": promoted,
        "champion_version": version if promoted else current[0],
        "test_rmse": test_rmse,
        "previous_champion": None if current is None else {"version": current[0], "test_rmse_rescored": current[1]},
    }
