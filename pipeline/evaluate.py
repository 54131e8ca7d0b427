"""The evaluate stage: test metrics, the noise-floor ratio, two baselines, plots; all to DVC and MLflow."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import keras  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.linear_model import LinearRegression  # noqa: E402
from sklearn.metrics import mean_absolute_error, r2_score, root_mean_squared_error  # noqa: E402

from pipeline import tracking  # noqa: E402
from pipeline.artifacts import atomic_path, write_json  # noqa: E402
from pipeline.config import HyperParams, Params  # noqa: E402
from pipeline.data import Splits, features_and_target, read_splits, sample_fresh  # noqa: E402
from pipeline.model import build_model, fit, predict, seed_everything  # noqa: E402
from pipeline.registry import register_and_promote  # noqa: E402
from pipeline.train import LEARNING_CURVE_PATH, MODEL_PATH, RUN_INFO_PATH  # noqa: E402

METRICS_PATH = Path("metrics/evaluate.json")
REGISTRY_PATH = Path("models/registry.json")
PLOTS_DIR = Path("plots")
PREDICTIONS_CSV = PLOTS_DIR / "predictions.csv"
RESIDUALS_CSV = PLOTS_DIR / "residuals.csv"

# The tutorial's exact set-up: 10-5-1 ReLU, Adam at its default rate, 200 epochs, Keras' default batch.
TUTORIAL = HyperParams(units_1=10, units_2=5, activation="relu", dropout=0.0, l1=0.0, l2=0.0,
                       optimizer="adam", learning_rate=0.001, batch_size=32)
TUTORIAL_EPOCHS = 200
INTERVAL_COVERAGE = 0.9  # the service's default


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    return {
        "rmse": float(root_mean_squared_error(y_true, y_pred)),
        "mae": float(mean_absolute_error(y_true, y_pred)),
        "r2": float(r2_score(y_true, y_pred)),
    }


def score(predict_fn, splits: Splits, params: Params) -> dict[str, float]:
    """Test-set metrics plus the noise-floor ratio: RMSE on fresh points / the generating sigma.

    1.00 is the floor no model can beat; a 20-point test set is too small to judge against sigma.
    """
    x_test, y_test = features_and_target(splits.test)
    metrics = regression_metrics(y_test, predict_fn(x_test))
    fresh_x, fresh_y = features_and_target(
        sample_fresh(params.data, params.evaluate.noise_floor_points, params.evaluate.seed))
    fresh_rmse = root_mean_squared_error(fresh_y, predict_fn(fresh_x))
    metrics["noise_floor_ratio"] = float(fresh_rmse / params.data.noise) if params.data.noise > 0 else None
    return metrics


def conformal_interval(model: keras.Model, splits: Splits, coverage: float) -> dict[str, float]:
    """Split-conformal interval calibrated on validation (as the service does); its coverage on test."""
    x_val, y_val = features_and_target(splits.val)
    residuals = np.sort(np.abs(y_val - predict(model, x_val))[:, 0])
    rank = math.ceil((len(residuals) + 1) * coverage)
    if rank > len(residuals):
        return {"interval_half_width": None, "interval_coverage_test": 1.0}
    half_width = float(residuals[rank - 1])
    x_test, y_test = features_and_target(splits.test)
    inside = np.abs(y_test - predict(model, x_test)) <= half_width
    return {"interval_half_width": half_width, "interval_coverage_test": float(inside.mean())}


def tutorial_baseline(splits: Splits, params: Params) -> keras.Model:
    """The tutorial's configuration trained on the same training split."""
    seed_everything(params.train.seed)
    train_xy = features_and_target(splits.train)
    model = build_model(TUTORIAL, n_features=train_xy[0].shape[1])
    fit(model, TUTORIAL, train_xy, None, epochs=TUTORIAL_EPOCHS, patience=0, seed=params.train.seed)
    return model


def linear_baseline(splits: Splits) -> LinearRegression:
    return LinearRegression().fit(*features_and_target(splits.train))


def _rounded(metrics: dict) -> dict:
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in metrics.items()}


def evaluate(model: keras.Model, splits: Splits, params: Params) -> dict[str, dict]:
    """Metrics of the model and of both baselines, on the same split and the same fresh points."""
    linear = linear_baseline(splits)
    tutorial = tutorial_baseline(splits, params)
    return {
        "model": _rounded({**score(lambda x: predict(model, x), splits, params),
                           **conformal_interval(model, splits, INTERVAL_COVERAGE)}),
        "baseline_linear": _rounded(score(linear.predict, splits, params)),
        "baseline_tutorial": _rounded(score(lambda x: predict(tutorial, x), splits, params)),
    }


def plot_predictions(model: keras.Model, splits: Splits, params: Params, path: Path) -> None:
    """The tutorial's picture: the data, the true line and the network's prediction."""
    grid = np.linspace(params.data.x_min, params.data.x_max, 200, dtype=np.float32).reshape(-1, 1)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for name, style in (("train", dict(c="tab:blue", s=14)), ("val", dict(c="tab:orange", s=14)),
                        ("test", dict(c="tab:red", s=22, marker="x"))):
        frame = getattr(splits, name)
        ax.scatter(frame["x"], frame["y"], label=f"{name} data ({len(frame)})", alpha=0.8, **style)
    ax.plot(grid, params.data.slope * grid + params.data.intercept, "k--", lw=1,
            label=f"true line y = {params.data.slope:g}x + {params.data.intercept:g}")
    ax.plot(grid, predict(model, grid), c="tab:green", lw=2.2, label="neural network prediction")
    ax.set(xlabel="x", ylabel="y", title="Predictions vs data")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, path)


def plot_residuals(frame: pd.DataFrame, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=110)
    ax.axhline(0, c="k", lw=1)
    ax.scatter(frame["x"], frame["residual"], c="tab:red")
    ax.set(xlabel="x", ylabel="y - prediction", title="Test-set residuals")
    ax.grid(alpha=0.3)
    _save(fig, path)


def plot_learning_curve(curve: pd.DataFrame, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=110)
    ax.plot(curve["epoch"], curve["train_loss"], label="train")
    if curve["val_loss"].notna().any():
        ax.plot(curve["epoch"], curve["val_loss"], label="validation")
    ax.set(xlabel="epoch", ylabel="MSE", yscale="log", title="Learning curves")
    ax.legend()
    ax.grid(alpha=0.3)
    _save(fig, path)


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g")


def main(params: Params) -> None:
    splits = read_splits()
    model = keras.saving.load_model(MODEL_PATH, safe_mode=True)
    metrics = evaluate(model, splits, params)

    x_test, y_test = features_and_target(splits.test)
    test_frame = splits.test.assign(prediction=predict(model, x_test)[:, 0])
    test_frame["residual"] = test_frame["y"] - test_frame["prediction"]
    _write_csv(test_frame[["x", "y", "prediction"]], PREDICTIONS_CSV)
    _write_csv(test_frame[["x", "residual"]], RESIDUALS_CSV)
    plot_predictions(model, splits, params, PLOTS_DIR / "predictions.png")
    plot_residuals(test_frame, PLOTS_DIR / "residuals.png")
    plot_learning_curve(pd.read_csv(LEARNING_CURVE_PATH), PLOTS_DIR / "learning_curve.png")

    tracking.configure(params.tracking)
    run_info = json.loads(RUN_INFO_PATH.read_text())
    run_id = run_info["run_id"]
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics({f"test_{k}": v for k, v in metrics["model"].items() if v is not None})
        for baseline in ("baseline_linear", "baseline_tutorial"):
            mlflow.log_metrics({f"{baseline}_{k}": v for k, v in metrics[baseline].items() if v is not None})
        mlflow.log_artifacts(str(PLOTS_DIR), artifact_path="plots")
    registry = register_and_promote(params.tracking.registered_model, run_info["model_uri"], run_id,
                                    metrics["model"]["rmse"], x_test, y_test)
    write_json(REGISTRY_PATH, registry)
    write_json(METRICS_PATH, metrics)
    m, lin, tut = metrics["model"], metrics["baseline_linear"], metrics["baseline_tutorial"]
    print(f"test RMSE {m['rmse']:.4f}  R2 {m['r2']:.4f}  noise-floor ratio {m['noise_floor_ratio']} "
          f"(linear {lin['noise_floor_ratio']}, tutorial {tut['noise_floor_ratio']})")
    outcome = "is the new champion" if registry["promoted"] else f"kept champion v{registry['champion_version']}"
    print(f"registered {registry['registered_model']} v{registry['version']}: {outcome}")
