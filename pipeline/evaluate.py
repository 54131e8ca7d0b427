"""The evaluate stage: test metrics for the task, baselines on the same split, plots; to DVC and MLflow.

Regression: RMSE, MAE, R2 against LinearRegression and Ridge (and, on the tutorial's line, the
noise-floor ratio and the tutorial's own configuration). Classification: accuracy, precision,
recall, F1 (macro for multi-class), ROC AUC, log loss and the confusion matrix, against the
majority class and LogisticRegression.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import keras  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn import metrics as skm  # noqa: E402
from sklearn.dummy import DummyClassifier  # noqa: E402
from sklearn.linear_model import LinearRegression, LogisticRegression, RidgeCV  # noqa: E402
from sklearn.compose import ColumnTransformer  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import OneHotEncoder, StandardScaler  # noqa: E402

from pipeline import runs_view, tracking  # noqa: E402
from pipeline.artifacts import atomic_path, ensure_writable, write_json  # noqa: E402
from pipeline.config import HyperParams, Params  # noqa: E402
from pipeline.data import (  # noqa: E402
    Schema,
    Splits,
    development_folds,
    development_rows,
    features_and_target,
    numeric_ranges,
    parquet_rows,
    read_row_ids,
    read_sample,
    read_splits,
    sample_fresh,
    sampled,
)
from pipeline.model import build_model, fit, in_chunks, members_of, predict, seed_everything  # noqa: E402
from pipeline.card import log_card, model_card, stored_card  # noqa: E402
from pipeline.registry import (  # noqa: E402
    SPLIT_FINGERPRINT_TAG,
    current_champion,
    fair_rows,
    log_development_rows,
    outcome_line,
    register_and_promote,
    split_fingerprint,
)
from pipeline.paths import Workspace  # noqa: E402
from pipeline.profile import reference_profile  # noqa: E402
from pipeline.train import MODEL_URI_TAG, find_run  # noqa: E402
from service.api_models import conformal_half_width  # noqa: E402


# The tutorial's exact set-up: 10-5-1 ReLU, Adam at its default rate, 200 epochs, Keras' default batch.
TUTORIAL = HyperParams(units_1=10, units_2=5, activation="relu", dropout=0.0, l1=0.0, l2=0.0,
                       optimizer="adam", learning_rate=0.001, batch_size=32)
TUTORIAL_EPOCHS = 200
# The metric the registry compares on (lower is better): a proper score for every task.
PRIMARY_METRIC = {"regression": "rmse", "binary": "log_loss", "multiclass": "log_loss"}

PLOTTED_ROWS = 10_000  # test rows drawn in the plots and their CSV files (all of them up to this many)
CARD_RESIDUALS = 10_000  # calibration residuals in the card at most (see thinned)

Predictor = Callable[[np.ndarray], np.ndarray]  # x -> values (regression) or class probabilities (n, k)


def read_evaluation_splits(directory: Path, params: Params) -> Splits:
    """The split as evaluate needs it: validation and test whole (metrics and the interval's calibration use every
    row), and the training rows as the sample `learnt_rows` draws (all of them within evaluate.sample_rows). Cross-
    validated (split.folds > 1) train is read whole too: the folds pool train and val, as in train."""
    if params.split.folds > 1:
        return read_splits(directory)
    train = read_sample(directory / "train.parquet", params.evaluate.sample_rows, params.evaluate.seed)
    return Splits(train, pd.read_parquet(directory / "val.parquet"), pd.read_parquet(directory / "test.parquet"),
                  Schema.read(directory / "schema.json"))


def learnt_rows(splits: Splits, params: Params) -> pd.DataFrame:
    """The rows the baselines learn from and the card's profile describes: the model's own training rows (train, or
    train + val when cross-validated), or a seeded sample of evaluate.sample_rows of them (rows keep their order)."""
    return sampled(development_rows(splits, params.split.folds), params.evaluate.sample_rows, params.evaluate.seed)


def probabilities(model: keras.Model, x: np.ndarray, task: str) -> np.ndarray:
    """(n, k) class probabilities; the binary model's single sigmoid output is P(second label)."""
    out = predict(model, x)
    return np.hstack([1 - out, out]) if task == "binary" else out


def training_profile(model: keras.Model, rows: pd.DataFrame, schema: Schema) -> dict:
    """The card's reference profile: `rows` (learnt_rows), and the model's outputs on them."""
    x, _ = features_and_target(rows, schema)
    return reference_profile(rows, schema.features, predict(model, x), schema.task, schema.class_labels,
                             schema.categories)


def keras_predictor(model: keras.Model, task: str) -> Predictor:
    if task == "regression":
        return lambda x: predict(model, x)[:, 0]
    return lambda x: probabilities(model, x, task)


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    return {
        "rmse": float(skm.root_mean_squared_error(y_true, y_pred)),
        "mae": float(skm.mean_absolute_error(y_true, y_pred)),
        "r2": float(skm.r2_score(y_true, y_pred)),
    }


def _normalised(proba: np.ndarray) -> np.ndarray:
    proba = np.clip(proba, 1e-7, 1)
    return proba / proba.sum(axis=1, keepdims=True)  # float32 softmax sums are 1 only to ~1e-7


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, task: str) -> dict[str, float]:
    classes = np.arange(proba.shape[1])
    y_pred = proba.argmax(axis=1)
    average = "binary" if task == "binary" else "macro"
    proba = _normalised(proba)
    return {
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "precision": float(skm.precision_score(y_true, y_pred, average=average, zero_division=0)),
        "recall": float(skm.recall_score(y_true, y_pred, average=average, zero_division=0)),
        "f1": float(skm.f1_score(y_true, y_pred, average=average, zero_division=0)),
        "roc_auc": float(skm.roc_auc_score(y_true, proba[:, 1]) if task == "binary" else
                         skm.roc_auc_score(y_true, proba, multi_class="ovr", labels=classes)),
        "log_loss": float(skm.log_loss(y_true, proba, labels=classes)),
    }


def score(predictor: Predictor, splits: Splits, params: Params) -> dict[str, float]:
    """Test-set metrics for the task; on the tutorial's line also the noise-floor ratio.

    The noise-floor ratio is RMSE on fresh points / the generating sigma: 1.00 is the floor no
    model can beat, and a 20-point test set is too small to judge against sigma.
    """
    schema = splits.schema
    x_test, y_test = features_and_target(splits.test, schema)
    if schema.task != "regression":
        return classification_metrics(y_test[:, 0].astype(int), predictor(x_test), schema.task)
    metrics = regression_metrics(y_test[:, 0], predictor(x_test))
    if params.data.is_line:
        fresh = sample_fresh(params.data, params.evaluate.noise_floor_points, params.evaluate.seed)
        fresh_x, fresh_y = features_and_target(fresh, schema)
        fresh_rmse = skm.root_mean_squared_error(fresh_y[:, 0], predictor(fresh_x))
        metrics["noise_floor_ratio"] = float(fresh_rmse / params.data.noise) if params.data.noise > 0 else None
    return metrics


def calibration_residuals(model: keras.Model, splits: Splits, seed: int) -> np.ndarray:
    """Sorted |actual - prediction| on rows the networks did not learn from: the validation split for
    one network; for a bag, each member on its own held-out fold (out-of-fold residuals, as in CV+)."""
    members = members_of(model)
    residuals = [np.abs(fold.val[1][:, 0] - predict(member, fold.val[0])[:, 0])
                 for member, fold in zip(members, development_folds(splits, len(members), seed), strict=True)]
    return np.sort(np.concatenate(residuals))


def thinned(residuals: np.ndarray) -> np.ndarray:
    """At most CARD_RESIDUALS of the sorted `residuals`, which the card carries and the service reads at start: the
    order statistics at ranks ceil(i * n / K), i = 1..K. With n >= K the conformal rank ceil((K + 1) * c) among
    them is rank >= ceil((n + 1) * c) among all n, so every interval is at least as wide as from all of them (or
    unbounded), and at most 2n / K + 1 ranks wider: with K = 10,000, coverage rises by at most 0.0002."""
    n, k = len(residuals), CARD_RESIDUALS
    if n <= k:
        return residuals
    return residuals[-(-np.arange(1, k + 1) * n // k) - 1]


def interval_calibration(model: keras.Model) -> tuple[str, str]:
    """(conformal method, rows it is calibrated on), as `calibration_residuals` computes them."""
    n = len(members_of(model))
    if n == 1:
        return "split-conformal", "validation"
    return "cross-conformal", f"out-of-fold ({n} folds of train + val)"


def conformal_interval(residuals: np.ndarray, predictor: Predictor, splits: Splits,
                       coverage: float) -> dict[str, float | None]:
    """The conformal half-width from sorted calibration residuals (the service's own formula) and
    its coverage on test."""
    half_width = conformal_half_width(residuals.tolist(), coverage)
    if half_width is None:
        return {"interval_half_width": None, "interval_coverage_test": 1.0}
    x_test, y_test = features_and_target(splits.test, splits.schema)
    inside = np.abs(y_test[:, 0] - predictor(x_test)) <= half_width
    return {"interval_half_width": half_width, "interval_coverage_test": float(inside.mean())}


def tutorial_baseline(rows: pd.DataFrame, schema: Schema, params: Params) -> keras.Model:
    """The tutorial's configuration (no feature scaling, as in the tutorial) on `rows` (learnt_rows); an epoch is
    capped at train.max_epoch_steps steps, as our model's are."""
    seed_everything(params.train.seed)
    x, y = features_and_target(rows, schema)
    model = build_model(TUTORIAL, x.shape[1])
    fit(model, TUTORIAL, (x, y), None, epochs=TUTORIAL_EPOCHS, patience=0, max_epoch_steps=params.train.max_epoch_steps)
    return model


def sklearn_baselines(rows: pd.DataFrame, schema: Schema) -> dict[str, Predictor]:
    """scikit-learn models fitted on `rows`: the rows our model learnt from (the training split, or train + val when
    it is cross-validated: a bag learns from both), or learnt_rows' sample of them."""
    x, y = features_and_target(rows, schema)
    if schema.task == "regression":
        linear = make_pipeline(one_hot(schema, "passthrough"), LinearRegression()).fit(x, y[:, 0])
        ridge = make_pipeline(one_hot(schema, StandardScaler()), RidgeCV(alphas=np.logspace(-3, 3, 13))).fit(x, y[:, 0])
        return {"baseline_linear": in_chunks(linear.predict), "baseline_ridge": in_chunks(ridge.predict)}
    labels = y[:, 0].astype(int)
    majority = DummyClassifier(strategy="most_frequent").fit(x, labels)
    logistic = make_pipeline(one_hot(schema, StandardScaler()), LogisticRegression(max_iter=5000)).fit(x, labels)
    return {"baseline_majority": in_chunks(majority.predict_proba), "baseline_logistic": in_chunks(logistic.predict_proba)}


def one_hot(schema: Schema, numeric):
    """A baseline's input step: the categorical features' indices one-hot encoded (an unseen index to
    zeros, as in the network), the numeric ones through `numeric`; without categories, `numeric` alone."""
    columns = [schema.features.index(name) for name in schema.categories]
    if not columns:
        return numeric
    return ColumnTransformer([("categories", OneHotEncoder(handle_unknown="ignore"), columns)], remainder=numeric)


def _rounded(metrics: dict) -> dict:
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in metrics.items()}


def evaluate(model: keras.Model, splits: Splits, params: Params) -> dict[str, dict]:
    """Metrics of the model and of the baselines, on the same split (and the same fresh points)."""
    predictor = keras_predictor(model, splits.schema.task)
    ours = score(predictor, splits, params)
    if splits.schema.task == "regression":
        residuals = thinned(calibration_residuals(model, splits, params.split.seed))
        ours |= conformal_interval(residuals, predictor, splits, params.evaluate.interval_coverage)
    results = {"model": _rounded(ours)}
    rows = learnt_rows(splits, params)
    for name, baseline in sklearn_baselines(rows, splits.schema).items():
        results[name] = _rounded(score(baseline, splits, params))
    if params.data.is_line:
        tutorial = tutorial_baseline(rows, splits.schema, params)
        results["baseline_tutorial"] = _rounded(score(keras_predictor(tutorial, "regression"), splits, params))
    return results


# --- plots -------------------------------------------------------------------------------------------


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g")


def plotted(frame: pd.DataFrame, seed: int) -> pd.DataFrame:
    """At most PLOTTED_ROWS of `frame`'s rows, a seeded draw (rows keep their order): a plot of a million points shows
    no more, and a CSV of them is too big for `dvc plots` to render."""
    return sampled(frame, PLOTTED_ROWS, seed)


def plot_line(model: keras.Model, splits: Splits, params: Params, path: Path) -> None:
    """The tutorial's picture: the data (PLOTTED_ROWS of each part at most), the true line and the network's prediction."""
    grid = np.linspace(params.data.x_min, params.data.x_max, 200, dtype=np.float32).reshape(-1, 1)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for name, style in (("train", dict(c="tab:blue", s=14)), ("val", dict(c="tab:orange", s=14)),
                        ("test", dict(c="tab:red", s=22, marker="x"))):
        frame = plotted(getattr(splits, name), params.evaluate.seed)
        ax.scatter(frame["x"], frame["y"], label=f"{name} data ({len(frame)})", alpha=0.8, **style)
    ax.plot(grid, params.data.slope * grid + params.data.intercept, "k--", lw=1,
            label=f"true line y = {params.data.slope:g}x + {params.data.intercept:g}")
    ax.plot(grid, predict(model, grid), c="tab:green", lw=2.2, label="neural network prediction")
    ax.set(xlabel="x", ylabel="y", title="Predictions vs data")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, path)


def plot_predicted_vs_actual(frame: pd.DataFrame, target: str, rows: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 5), dpi=110)
    ax.scatter(frame[target], frame["prediction"], c="tab:green", s=16)
    low, high = frame[[target, "prediction"]].min().min(), frame[[target, "prediction"]].max().max()
    ax.plot([low, high], [low, high], "k--", lw=1, label="perfect prediction")
    ax.set(xlabel=f"actual {target}", ylabel="predicted", title=f"Predictions vs data ({rows})")
    ax.legend()
    ax.grid(alpha=0.3)
    _save(fig, path)


def plot_residuals(frame: pd.DataFrame, x_column: str, rows: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=110)
    ax.axhline(0, c="k", lw=1)
    ax.scatter(frame[x_column], frame["residual"], c="tab:red")
    ax.set(xlabel=x_column, ylabel="actual - prediction", title=f"Residuals ({rows})")
    ax.grid(alpha=0.3)
    _save(fig, path)


def plot_learning_curve(curve: pd.DataFrame, path: Path) -> None:
    """Training and validation loss per epoch; for a bag, each member faintly and their mean boldly."""
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=110)
    members = [c.removeprefix("val_loss_") for c in curve.columns if c.startswith("val_loss_")]
    for member in members:
        ax.plot(curve["epoch"], curve[f"train_loss_{member}"], c="tab:blue", lw=0.7, alpha=0.35)
        ax.plot(curve["epoch"], curve[f"val_loss_{member}"], c="tab:orange", lw=0.7, alpha=0.35)
    mean = f" (mean of {len(members)} networks)" if members else ""
    ax.plot(curve["epoch"], curve["train_loss"], c="tab:blue", label=f"train{mean}")
    if curve["val_loss"].notna().any():
        ax.plot(curve["epoch"], curve["val_loss"], c="tab:orange", label=f"validation{mean}")
    ax.set(xlabel="epoch", ylabel="loss", yscale="log", title="Learning curves")
    ax.legend()
    ax.grid(alpha=0.3)
    _save(fig, path)


def plot_classification(y_true: np.ndarray, proba: np.ndarray, schema: Schema, rows: str, directory: Path) -> None:
    labels = [str(label) for label in schema.class_labels]
    fig, ax = plt.subplots(figsize=(5.5, 5), dpi=110)
    skm.ConfusionMatrixDisplay.from_predictions(y_true, proba.argmax(axis=1), labels=range(len(labels)),
                                                display_labels=labels, ax=ax, colorbar=False)
    ax.set_title(f"Confusion matrix ({rows})")
    _save(fig, directory / "confusion_matrix.png")
    fig, (roc_ax, pr_ax) = plt.subplots(1, 2, figsize=(11, 4.5), dpi=110)
    classes = [1] if schema.task == "binary" else range(len(labels))
    for k in classes:
        name = labels[k] if schema.task == "multiclass" else f"{labels[1]} vs {labels[0]}"
        skm.RocCurveDisplay.from_predictions(y_true == k, proba[:, k], name=name, ax=roc_ax)
        skm.PrecisionRecallDisplay.from_predictions(y_true == k, proba[:, k], name=name, ax=pr_ax)
    roc_ax.set_title(f"ROC curve(s), {rows}")
    pr_ax.set_title(f"Precision-recall curve(s), {rows}")
    _save(fig, directory / "roc_pr_curves.png")


def write_plots(model: keras.Model, splits: Splits, params: Params, ws: Workspace) -> None:
    """PNG pictures plus the CSV files that `dvc plots` renders, of the test rows (PLOTTED_ROWS of them at most)."""
    schema = splits.schema
    test = plotted(splits.test, params.evaluate.seed)
    rows = "test set" if len(test) == len(splits.test) else f"test set, {len(test):,} of {len(splits.test):,} rows"
    x_test, y_test = features_and_target(test, schema)
    directory = ws.plots
    plot_learning_curve(pd.read_csv(ws.learning_curve), directory / "learning_curve.png")
    if schema.task == "regression":
        frame = test.assign(prediction=predict(model, x_test)[:, 0])
        frame["residual"] = frame[schema.target] - frame["prediction"]
        _write_csv(frame[[schema.target, "prediction"]].rename(columns={schema.target: "actual"}),
                   directory / "predictions.csv")
        if params.data.is_line:
            plot_line(model, splits, params, directory / "predictions.png")
            plot_residuals(frame, "x", rows, directory / "residuals.png")
        else:
            plot_predicted_vs_actual(frame, schema.target, rows, directory / "predictions.png")
            plot_residuals(frame, "prediction", rows, directory / "residuals.png")
        return
    proba = probabilities(model, x_test, schema.task)
    labels = np.array([str(label) for label in schema.class_labels])
    truth = y_test[:, 0].astype(int)
    _write_csv(pd.DataFrame({"actual": labels[truth], "predicted": labels[proba.argmax(axis=1)]}),
               directory / "confusion.csv")
    plot_classification(truth, proba, schema, rows, directory)


def baseline_lines(metrics: dict[str, dict], primary: str) -> list[str]:
    """One line per baseline, flagging those that beat the model on `primary` (lower is better):
    on small tables a linear model often does, and the user should know it."""
    ours = metrics["model"][primary]
    lines = []
    for name, values in metrics.items():
        if name.startswith("baseline_"):
            beats = values[primary] < ours
            flag = f"  <- better than the model's {ours:.4g} on this test set" if beats else ""
            lines.append(f"  {name}: {primary} {values[primary]:.4g}{flag}")
    return lines


def interval_spec(model: keras.Model, splits: Splits, params: Params) -> dict | None:
    """The card's conformal calibration (regression only): method, rows and sorted |residuals|."""
    if splits.schema.task != "regression":
        return None
    method, calibration = interval_calibration(model)
    every = calibration_residuals(model, splits, params.split.seed)
    residuals = thinned(every)
    if len(residuals) < len(every):
        calibration += f"; {len(residuals):,} order statistics of its {len(every):,} residuals"
    return {"method": method, "calibration": calibration, "default_coverage": params.evaluate.interval_coverage,
            "abs_residuals": [round(float(r), 8) for r in residuals]}


def primary_score(predictor: Predictor, splits: Splits, rows: np.ndarray) -> float:
    """The registry's metric (lower is better) on the test rows selected by the mask `rows`."""
    x, y = features_and_target(splits.test[rows], splits.schema)
    if splits.schema.task == "regression":
        return float(skm.root_mean_squared_error(y[:, 0], predictor(x)))
    proba = predictor(x)
    return float(skm.log_loss(y[:, 0].astype(int), _normalised(proba), labels=np.arange(proba.shape[1])))


def served_model_lines(metrics: dict) -> list[str]:
    """Which model `package` ships, and its own figures when it is not the one just evaluated."""
    served = metrics["versions"]
    if "served_metrics" not in served:
        return [f"package ships v{served['served']}, the model evaluated above"]
    figures = ", ".join(f"{k} {v:.4g}" for k, v in served["served_metrics"].items() if isinstance(v, float))
    return [f"package ships v{served['served']}, not this run's v{served['candidate']}; "
            f"v{served['served']}'s test figures (on its own test set): {figures}"]


def main(params: Params, ws: Workspace) -> None:
    ensure_writable(ws.metrics, ws.registry, ws.plots / "x")
    splits = read_evaluation_splits(ws.split_dir, params)
    schema = splits.schema
    learnt, learnt_total = learnt_rows(splits, params), parquet_rows(ws.split_dir / "train.parquet")
    if params.split.folds > 1:
        learnt_total += len(splits.val)
    if len(learnt) < learnt_total:
        print(f"evaluate: the baselines and the card's training profile use a sample of {len(learnt):,} of the model's"
              f" {learnt_total:,} training rows (evaluate.sample_rows); the metrics use every test row", flush=True)
    model = keras.saving.load_model(ws.model, safe_mode=True)
    metrics = {"task": schema.task, **evaluate(model, splits, params)}
    write_plots(model, splits, params, ws)

    tracking.configure(params.tracking)
    train_run = find_run(params.tracking.experiment, ws.model)
    run_id = train_run.info.run_id
    with mlflow.start_run(run_id=run_id):
        for name, values in metrics.items():
            if isinstance(values, dict):
                prefix = "test_" if name == "model" else f"{name}_"
                mlflow.log_metrics({f"{prefix}{k}": v for k, v in values.items() if v is not None})
        mlflow.log_artifacts(str(ws.plots), artifact_path="plots")
        tracking.log_data_inputs(params.data, schema.target, {"testing": splits.test})

    development_ids = np.concatenate([read_row_ids(ws.split_dir / f"{part}.parquet") for part in ("train", "val")])
    test_ids = splits.test.index.to_numpy()
    fingerprint = split_fingerprint(development_ids, test_ids)
    log_development_rows(run_id, development_ids)
    numeric = [name for name in schema.features if name not in schema.categories]
    card = model_card(params.tracking.registered_model, schema, numeric_ranges(ws.split_dir / "train.parquet", numeric),
                      metrics["model"], interval_spec(model, splits, params), train_run, fingerprint,
                      training_profile(model, learnt, schema))
    log_card(run_id, card)

    name, primary = params.tracking.registered_model, PRIMARY_METRIC[schema.task]
    compatibility = {"task": schema.task, "features": ",".join(schema.features)}
    if schema.categories:  # the champion must read category indices the same way
        compatibility["categories_sha256"] = hashlib.sha256(json.dumps(schema.categories, sort_keys=True).encode()).hexdigest()
    fair = fair_rows(current_champion(name), compatibility, fingerprint, test_ids, params.evaluate.min_fair_rows)

    def rescore(champion: keras.Model, rows: np.ndarray) -> tuple[float, float]:
        return (primary_score(keras_predictor(model, schema.task), splits, rows),
                primary_score(keras_predictor(champion, schema.task), splits, rows))

    registry = register_and_promote(
        name, train_run.data.tags[MODEL_URI_TAG], run_id, primary, metrics["model"][primary], fair, rescore,
        {**compatibility, SPLIT_FINGERPRINT_TAG: fingerprint, "data_sha256": card["data_hash"] or ""},
    )
    # The runs list shows names first: the version and the data tell apart runs with the same settings.
    rows = len(development_ids) + len(test_ids)
    MlflowClient().set_tag(run_id, "mlflow.runName", f"{train_run.info.run_name.split(' · ')[0]} · "
                                                     f"{tracking.data_name(params.data)}, {rows} rows · v{registry['version']}")
    runs_view.publish(train_run.info.experiment_id, schema.task)
    metrics["versions"] = {"candidate": registry["version"], "served": registry["champion_version"]}
    if not registry["promoted"]:
        champion = MlflowClient().get_model_version(name, registry["champion_version"])
        metrics["versions"]["served_metrics"] = stored_card(champion)["metrics"]
    write_json(ws.registry, registry)
    write_json(ws.metrics, metrics)
    summary = ", ".join(f"{k} {v:.4g}" for k, v in metrics["model"].items() if isinstance(v, float))
    print(f"test ({schema.task}): {summary}")
    print("\n".join(baseline_lines(metrics, primary)))
    print(outcome_line(registry))
    print("\n".join(served_model_lines(metrics)))
