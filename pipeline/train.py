"""The train stage: fit the MLP on the training split, early-stopped on validation, logged to MLflow."""

from __future__ import annotations

import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.entities import Metric
from mlflow.models import infer_signature

from pipeline import tracking
from pipeline.artifacts import atomic_path, ensure_writable, file_sha256, write_json
from pipeline.config import HyperParams, Params
from pipeline.data import RAW_PATH, Splits, features_and_target, read_splits
from pipeline.model import History, build_model, fit, seed_everything

MODEL_PATH = Path("models/model.keras")
RUN_INFO_PATH = Path("models/train_run.json")
LEARNING_CURVE_PATH = Path("plots/learning_curve.csv")


def model_for(hp: HyperParams, splits: Splits):
    """The MLP for this data set: its task's output layer, features standardised on the training split."""
    x_train, y_train = features_and_target(splits.train, splits.schema)
    return build_model(hp, x_train.shape[1], splits.schema.task, splits.schema.n_outputs, x_train, y_train)


def train(splits: Splits, hp: HyperParams, params: Params):
    """Build the model from `hp` and fit it on train, early-stopped on validation."""
    seed_everything(params.train.seed)
    train_xy = features_and_target(splits.train, splits.schema)
    val_xy = features_and_target(splits.val, splits.schema)
    model = model_for(hp, splits)
    history = fit(
        model, hp, train_xy, val_xy,
        epochs=params.train.epochs, patience=params.train.patience,
        min_epochs=params.train.min_epochs,
    )
    return model, history


def run_name(hp: HyperParams) -> str:
    return f"train {hp.units_1}-{hp.units_2} {hp.activation} {hp.optimizer} lr={hp.learning_rate:.3g}"


def log_run(model, history: History, hp: HyperParams, params: Params, splits: Splits) -> dict:
    """One MLflow run: params, per-epoch losses, the model with its signature, provenance tags."""
    x_example, _ = features_and_target(splits.train.head(5), splits.schema)
    with mlflow.start_run(run_name=run_name(hp)) as run:
        mlflow.log_params({**hp.model_dump(), "epochs": params.train.epochs,
                           "patience": params.train.patience,
                           "min_epochs": params.train.min_epochs, "seed": params.train.seed})
        mlflow.set_tags({
            "stage": "train", "git_commit": tracking.git_commit(),
            "data_sha256": file_sha256(RAW_PATH), "task": splits.schema.task,
            "features": ",".join(splits.schema.features),
            "data_rows": str(len(splits.train) + len(splits.val) + len(splits.test)),
        })
        now = int(time.time() * 1000)
        metrics = [Metric("train_loss", v, now, step) for step, v in enumerate(history.train_loss, 1)]
        metrics += [Metric("val_loss", v, now, step) for step, v in enumerate(history.val_loss, 1)]
        for start in range(0, len(metrics), 1000):  # MLflow caps a batch at 1000 metrics
            mlflow.tracking.MlflowClient().log_batch(run.info.run_id, metrics=metrics[start : start + 1000])
        mlflow.log_metrics({"best_epoch": history.best_epoch or 0, "epochs_run": history.epochs_run})
        info = mlflow.tensorflow.log_model(
            model, name="model", signature=infer_signature(x_example, np.asarray(model(x_example))),
            pip_requirements=tracking.MODEL_PIP_REQUIREMENTS,
        )
    return {"run_id": run.info.run_id, "model_uri": info.model_uri, "best_epoch": history.best_epoch,
            "epochs_run": history.epochs_run}


def main(params: Params, hp: HyperParams | None = None) -> None:
    ensure_writable(MODEL_PATH, RUN_INFO_PATH, LEARNING_CURVE_PATH)
    splits = read_splits()
    hp = hp or params.train.hyperparams
    tracking.configure(params.tracking)
    model, history = train(splits, hp, params)
    run_info = log_run(model, history, hp, params, splits)
    with atomic_path(MODEL_PATH) as tmp:
        model.save(tmp)
    curve = pd.DataFrame({"epoch": range(1, history.epochs_run + 1), "train_loss": history.train_loss,
                          "val_loss": history.val_loss or [None] * history.epochs_run})
    with atomic_path(LEARNING_CURVE_PATH) as tmp:
        curve.to_csv(tmp, index=False)
    write_json(RUN_INFO_PATH, run_info)
    print(f"trained {run_name(hp)}: {history.epochs_run} epochs, best {history.best_epoch}, "
          f"MLflow run {run_info['run_id']}")
