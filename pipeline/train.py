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
from pipeline.artifacts import atomic_path, ensure_writable, file_sha256
from pipeline.config import HyperParams, Params
from pipeline.console import EpochProgress
from pipeline.data import Fold, Schema, Splits, development_folds, features_and_target, read_splits
from pipeline.errors import PipelineError
from pipeline.paths import Workspace
from pipeline.model import (
    CategoricalInput,
    EpochCallback,
    History,
    average,
    build_model,
    fit,
    member_name,
    save_model,
    seed_everything,
)

MODEL_SHA256_TAG = "model_sha256"
MODEL_URI_TAG = "model_uri"


def categorical_inputs(schema: Schema) -> tuple[CategoricalInput, ...]:
    """The schema's categorical features as model input columns: their vocabulary size and encoding."""
    return tuple(CategoricalInput(schema.features.index(name), len(vocab), schema.embedding_dims.get(name, 0))
                 for name, vocab in schema.categories.items())


def model_for(hp: HyperParams, fold: Fold, schema: Schema, index: int, folds: int) -> keras.Model:
    """The MLP for one fold: its task's output layer, numeric features standardised on the fold's training
    rows, categorical ones encoded from their vocabulary."""
    x_train, y_train = fold.train
    name = member_name(index) if folds > 1 else "mlp"
    return build_model(hp, x_train.shape[1], schema.task, schema.n_outputs, x_train, y_train, name=name,
                       categorical=categorical_inputs(schema))


def fit_fold(hp: HyperParams, fold: Fold, schema: Schema, index: int, params: Params, *, epochs: int,
             patience: int, min_epochs: int = 0, on_epoch: EpochCallback | None = None) -> tuple[keras.Model, History]:
    """One network on one fold, from seed train.seed + fold index: tune's trials and the train stage
    both fit through here, so the winner's final networks start from the same initial weights as
    its trial's and see the same rows (they may stop later: train's patience and min_epochs)."""
    seed_everything(params.train.seed + index)
    model = model_for(hp, fold, schema, index, params.split.folds)
    history = fit(model, hp, fold.train, fold.val, epochs=epochs, patience=patience, min_epochs=min_epochs,
                  max_epoch_steps=params.train.max_epoch_steps, on_epoch=on_epoch)
    return model, history


def train(splits: Splits, hp: HyperParams, params: Params) -> tuple[keras.Model, list[History]]:
    """Fit `hp` on each fold, early-stopped on its held-out rows: one network (split.folds = 1), or
    a bag of split.folds networks whose outputs are averaged."""
    members, histories = [], []
    cfg = params.train
    for index, fold in enumerate(development_folds(splits, params.split.folds, params.split.seed)):
        progress = EpochProgress(f"train{f' network {index + 1}/{params.split.folds}' if params.split.folds > 1 else ''}",
                                 cfg.epochs, cfg.patience, cfg.min_epochs)
        model, history = fit_fold(hp, fold, splits.schema, index, params, epochs=cfg.epochs,
                                  patience=cfg.patience, min_epochs=cfg.min_epochs, on_epoch=progress)
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
            splits: Splits, model_sha256: str, data_sha256: str) -> str:
    """One MLflow run: params, the learning curve's per-epoch losses, the model with its signature,
    provenance tags; returns its id. `model_sha256` (of models/model.keras) is how evaluate finds
    the run: DVC's outputs hold no run ids, so a fresh clone's run reproduces dvc.lock."""
    x_example, _ = features_and_target(splits.train.head(5), splits.schema)
    best_epochs = [h.best_epoch or 0 for h in histories]
    with mlflow.start_run(run_name=run_name(hp, params.split.folds)) as run:
        mlflow.log_params({**hp.model_dump(), "epochs": params.train.epochs, "max_epoch_steps": params.train.max_epoch_steps,
                           "patience": params.train.patience, "min_epochs": params.train.min_epochs,
                           "seed": params.train.seed, "folds": params.split.folds})
        mlflow.set_tags({
            "stage": "train", "git_commit": tracking.git_commit(), MODEL_SHA256_TAG: model_sha256,
            "data_sha256": data_sha256, "task": splits.schema.task,
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
        tracking.log_data_inputs(params.data, splits.schema.target, {"training": splits.train, "validation": splits.val})
        if len(histories) > 1:
            mlflow.log_metrics({f"best_epoch_{index}": epoch for index, epoch in enumerate(best_epochs, 1)})
        info = mlflow.tensorflow.log_model(
            model, name="model", signature=infer_signature(x_example, np.asarray(model(x_example))),
            pip_requirements=tracking.MODEL_PIP_REQUIREMENTS,
        )
        mlflow.set_tag(MODEL_URI_TAG, info.model_uri)
    return run.info.run_id


def find_run(experiment: str, model_path: Path):
    """The newest train run in the active experiment that logged exactly this model file (its bytes are deterministic, so
    any run that did holds the same model); raises PipelineError when none did."""
    sha256 = file_sha256(model_path)
    runs = mlflow.search_runs(filter_string=f"tags.stage = 'train' and tags.{MODEL_SHA256_TAG} = '{sha256}'",
                              order_by=["attributes.start_time DESC"], max_results=1, output_format="list")
    if not runs:
        raise PipelineError(f"{model_path} was not logged by any train run in MLflow experiment {experiment!r} at "
                            f"{mlflow.get_tracking_uri()}; run `dvc repro --force train`")
    return runs[0]


def main(params: Params, ws: Workspace, hp: HyperParams | None = None) -> None:
    ensure_writable(ws.model, ws.learning_curve)
    splits = read_splits(ws.split_dir)
    hp = hp or params.train.hyperparams
    tracking.configure(params.tracking)
    model, histories = train(splits, hp, params)
    curve = learning_curve(histories)
    with atomic_path(ws.model) as tmp:
        save_model(model, tmp)
        run_id = log_run(model, histories, curve, hp, params, splits, file_sha256(tmp), file_sha256(ws.raw))
    with atomic_path(ws.learning_curve) as tmp:
        curve.to_csv(tmp, index=False)
    epochs = "/".join(str(h.epochs_run) for h in histories)
    best = "/".join(str(h.best_epoch) for h in histories)
    print(f"trained {run_name(hp, params.split.folds)}: {epochs} epochs, best {best}, MLflow run {run_id}")
