"""The train stage: fit the MLP on the training split, early-stopped on validation (or a bag of
networks on cross-validation folds of train + val), logged to MLflow."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
from mlflow.entities import Metric
from mlflow.models import infer_signature

from pipeline import streaming, tracking
from pipeline.artifacts import atomic_path, ensure_writable, file_sha256
from pipeline.config import HyperParams, Params
from pipeline.console import EpochProgress
from pipeline.data import (SPLIT_NAMES, Fold, Schema, Splits, development_folds, features_and_target, parquet_rows,
                           read_splits)
from pipeline.errors import PipelineError
from pipeline.paths import Workspace
from pipeline.model import (
    BatchStream,
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
    x_train, y_train = (fold.train.x_stats, fold.train.y_stats) if isinstance(fold.train, BatchStream) else fold.train
    name = member_name(index) if folds > 1 else "mlp"
    return build_model(hp, len(schema.features), schema.task, schema.n_outputs, x_train, y_train, name=name,
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
    return train_folds(development_folds(splits, params.split.folds, params.split.seed), splits.schema, hp, params)


def train_folds(folds: list[Fold], schema: Schema, hp: HyperParams, params: Params) -> tuple[keras.Model, list[History]]:
    members, histories = [], []
    cfg = params.train
    for index, fold in enumerate(folds):
        progress = EpochProgress(f"train{f' network {index + 1}/{len(folds)}' if len(folds) > 1 else ''}",
                                 cfg.epochs, cfg.patience, cfg.min_epochs)
        model, history = fit_fold(hp, fold, schema, index, params, epochs=cfg.epochs,
                                  patience=cfg.patience, min_epochs=cfg.min_epochs, on_epoch=progress)
        members.append(model)
        histories.append(history)
    return (members[0] if len(members) == 1 else average(members)), histories


@dataclass(frozen=True)
class TrainingData:
    """What `train` learns from and what it logs about it, whether the training rows are held or streamed."""

    folds: list[Fold]
    schema: Schema
    example: pd.DataFrame  # a few training rows: the logged model's input example
    inputs: dict[str, pd.DataFrame | Path]  # MLflow context -> the split's rows, or its file when streamed
    n_rows: int  # train + validation + test


def training_data(params: Params, split_dir: Path) -> TrainingData:
    """The development rows: in memory, or (above train.stream_above_rows) the training split streamed from its
    Parquet file with only the validation rows held, as float32 inputs."""
    train_path = split_dir / "train.parquet"
    decision = streaming.decide(train_path, params.train.stream_above_rows, params.split.folds)
    if decision.reason:
        print(decision.reason, flush=True)
    if not decision.streamed:
        splits = read_splits(split_dir)
        return TrainingData(development_folds(splits, params.split.folds, params.split.seed), splits.schema,
                            splits.train.head(5), {"training": splits.train, "validation": splits.val},
                            len(splits.train) + len(splits.val) + len(splits.test))
    schema = Schema.read(split_dir / "schema.json")
    val_path = split_dir / "val.parquet"
    fold = Fold(streaming.stream(train_path, schema, params.train.seed), streaming.read_encoded(val_path, schema))
    n_rows = sum(parquet_rows(split_dir / f"{name}.parquet") for name in SPLIT_NAMES)
    return TrainingData([fold], schema, streaming.head(train_path, 5), {"training": train_path, "validation": val_path},
                        n_rows)


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
            data: TrainingData, model_sha256: str, data_sha256: str) -> str:
    """One MLflow run: params, the learning curve's per-epoch losses, the model with its signature,
    provenance tags; returns its id. `model_sha256` (of models/model.keras) is how evaluate finds
    the run: DVC's outputs hold no run ids, so a fresh clone's run reproduces dvc.lock."""
    x_example, _ = features_and_target(data.example, data.schema)
    best_epochs = [h.best_epoch or 0 for h in histories]
    with mlflow.start_run(run_name=run_name(hp, params.split.folds)) as run:
        mlflow.log_params({**hp.model_dump(), "epochs": params.train.epochs, "max_epoch_steps": params.train.max_epoch_steps,
                           "patience": params.train.patience, "min_epochs": params.train.min_epochs,
                           "seed": params.train.seed, "folds": params.split.folds})
        mlflow.set_tags({
            "stage": "train", "git_commit": tracking.git_commit(), MODEL_SHA256_TAG: model_sha256,
            "data_sha256": data_sha256, "task": data.schema.task,
            "features": ",".join(data.schema.features), "data_rows": str(data.n_rows),
        })
        now = int(time.time() * 1000)
        metrics = [Metric(column, value, now, int(step))
                   for column in curve.columns.drop("epoch")
                   for step, value in zip(curve["epoch"], curve[column]) if not np.isnan(value)]
        for start in range(0, len(metrics), 1000):  # MLflow caps a batch at 1000 metrics
            mlflow.tracking.MlflowClient().log_batch(run.info.run_id, metrics=metrics[start : start + 1000])
        mlflow.log_metrics({"best_epoch": float(np.mean(best_epochs)), "epochs_run": len(curve)})
        tracking.log_data_inputs(params.data, data.schema.target, data.inputs)
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
    hp = hp or params.train.hyperparams
    tracking.configure(params.tracking)
    data = training_data(params, ws.split_dir)
    model, histories = train_folds(data.folds, data.schema, hp, params)
    curve = learning_curve(histories)
    with atomic_path(ws.model) as tmp:
        save_model(model, tmp)
        run_id = log_run(model, histories, curve, hp, params, data, file_sha256(tmp), file_sha256(ws.raw))
    with atomic_path(ws.learning_curve) as tmp:
        curve.to_csv(tmp, index=False)
    epochs = "/".join(str(h.epochs_run) for h in histories)
    best = "/".join(str(h.best_epoch) for h in histories)
    print(f"trained {run_name(hp, params.split.folds)}: {epochs} epochs, best {best}, MLflow run {run_id}")
