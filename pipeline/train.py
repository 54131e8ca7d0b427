"""The train stage: fit the MLP on the training split, early-stopped on validation (or a bag of
networks on cross-validation folds of train + val), logged to MLflow."""

from __future__ import annotations

import time
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
from mlflow.entities import Metric
from mlflow.models import infer_signature

from pipeline import tracking
from pipeline.artifacts import atomic_path, ensure_writable, file_sha256, write_json
from pipeline.config import HyperParams, Params
from pipeline.data import RAW_PATH, Fold, Schema, Splits, development_folds, features_and_target, read_splits
from pipeline.model import EpochCallback, History, average, build_model, fit, member_name, seed_everything

MODEL_PATH = Path("models/model.keras")
RUN_INFO_PATH = Path("models/train_run.json")
LEARNING_CURVE_PATH = Path("plots/learning_curve.csv")


def model_for(hp: HyperParams, fold: Fold, schema: Schema, index: int, folds: int) -> keras.Model:
    """The MLP for one fold: its task's output layer, features standardised on the fold's training rows."""
    x_train, y_train = fold.train
    name = member_name(index) if folds > 1 else "mlp"
    return build_model(hp, x_train.shape[1], schema.task, schema.n_outputs, x_train, y_train, name=name)


def fit_fold(hp: HyperParams, fold: Fold, schema: Schema, index: int, params: Params, *, epochs: int,
             patience: int, min_epochs: int = 0, on_epoch: EpochCallback | None = None) -> tuple[keras.Model, History]:
    """One network on one fold, from seed train.seed + fold index: tune's trials and the train stage
    both fit through here, so the winner's final networks start from the same initial weights as
    its trial's and see the same rows (they may stop later: train's patience and min_epochs)."""
    seed_everything(params.train.seed + index)
    model = model_for(hp, fold, schema, index, params.split.folds)
    history = fit(model, hp, fold.train, fold.val, epochs=epochs, patience=patience, min_epochs=min_epochs,
                  on_epoch=on_epoch)
    return model, history


def train(splits: Splits, hp: HyperParams, params: Params) -> tuple[keras.Model, list[History]]:
    """Fit `hp` on each fold, early-stopped on its held-out rows: one network (split.folds = 1), or
    a bag of split.folds networks whose outputs are averaged."""
    members, histories = [], []
    for index, fold in enumerate(development_folds(splits, params.split.folds, params.split.seed)):
        model, history = fit_fold(hp, fold, splits.schema, index, params, epochs=params.train.epochs,
                                  patience=params.train.patience, min_epochs=params.train.min_epochs)
        members.append(model)
        histories.append(history)
    return (members[0] if len(members) == 1 else average(members)), histories


def learning_curve(histories: list[History]) -> pd.DataFrame:
    """Per epoch: training and validation loss, the mean over the networks still training at that
    epoch; for a bag also each member's own curves."""
    frame = pd.DataFrame({"epoch": range(1, max(h.epochs_run for h in histories) + 1)})
    columns = {}
    for index, history in enumerate(histories, 1):
        columns[f"train_loss_{index}"] = pd.Series(history.train_loss, dtype=float)
        columns[f"val_loss_{index}"] = pd.Series(history.val_loss or [None] * history.epochs_run, dtype=float)
    members = pd.DataFrame(columns).reindex(range(len(frame)))
    frame["train_loss"] = members.filter(like="train_loss_").mean(axis=1)
    frame["val_loss"] = members.filter(like="val_loss_").mean(axis=1)
    return frame if len(histories) == 1 else pd.concat([frame, members], axis=1)


def run_name(hp: HyperParams, folds: int = 1) -> str:
    bag = f" bag of {folds}" if folds > 1 else ""
    return f"train {hp.units_1}-{hp.units_2} {hp.activation} {hp.optimizer} lr={hp.learning_rate:.3g}{bag}"


def log_run(model, histories: list[History], curve: pd.DataFrame, hp: HyperParams, params: Params,
            splits: Splits) -> dict:
    """One MLflow run: params, the learning curve's per-epoch losses, the model with its signature,
    provenance tags."""
    x_example, _ = features_and_target(splits.train.head(5), splits.schema)
    best_epochs = [h.best_epoch or 0 for h in histories]
    with mlflow.start_run(run_name=run_name(hp, params.split.folds)) as run:
        mlflow.log_params({**hp.model_dump(), "epochs": params.train.epochs,
                           "patience": params.train.patience, "min_epochs": params.train.min_epochs,
                           "seed": params.train.seed, "folds": params.split.folds})
        mlflow.set_tags({
            "stage": "train", "git_commit": tracking.git_commit(),
            "data_sha256": file_sha256(RAW_PATH), "task": splits.schema.task,
            "features": ",".join(splits.schema.features),
            "data_rows": str(len(splits.train) + len(splits.val) + len(splits.test)),
        })
        now = int(time.time() * 1000)
        metrics = [Metric(column, value, now, int(step))
                   for column in curve.columns.drop("epoch")
                   for step, value in zip(curve["epoch"], curve[column]) if not np.isnan(value)]
        for start in range(0, len(metrics), 1000):  # MLflow caps a batch at 1000 metrics
            mlflow.tracking.MlflowClient().log_batch(run.info.run_id, metrics=metrics[start : start + 1000])
        mlflow.log_metrics({"best_epoch": float(np.mean(best_epochs)), "epochs_run": len(curve)})
        if len(histories) > 1:
            mlflow.log_metrics({f"best_epoch_{index}": epoch for index, epoch in enumerate(best_epochs, 1)})
        info = mlflow.tensorflow.log_model(
            model, name="model", signature=infer_signature(x_example, np.asarray(model(x_example))),
            pip_requirements=tracking.MODEL_PIP_REQUIREMENTS,
        )
    return {"run_id": run.info.run_id, "model_uri": info.model_uri, "best_epochs": best_epochs,
            "epochs_run": [h.epochs_run for h in histories]}


def main(params: Params, hp: HyperParams | None = None) -> None:
    ensure_writable(MODEL_PATH, RUN_INFO_PATH, LEARNING_CURVE_PATH)
    splits = read_splits()
    hp = hp or params.train.hyperparams
    tracking.configure(params.tracking)
    model, histories = train(splits, hp, params)
    curve = learning_curve(histories)
    run_info = log_run(model, histories, curve, hp, params, splits)
    with atomic_path(MODEL_PATH) as tmp:
        model.save(tmp)
    with atomic_path(LEARNING_CURVE_PATH) as tmp:
        curve.to_csv(tmp, index=False)
    write_json(RUN_INFO_PATH, run_info)
    epochs = "/".join(str(h.epochs_run) for h in histories)
    best = "/".join(str(h.best_epoch) for h in histories)
    print(f"trained {run_name(hp, params.split.folds)}: {epochs} epochs, best {best}, MLflow run {run_info['run_id']}")
