"""Tiny ONNX models and model cards for the service tests, built with onnx.helper (no TensorFlow)."""

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

# Residuals |y - yhat| of a pretend validation set: 10 values, so coverage 0.9 picks the
# ceil(11 * 0.9) = 10th smallest (0.5) and coverage 0.95 (rank 11) has no finite interval.
ABS_RESIDUALS = [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5]


def linear_onnx(weights, bias, *, activation: str | None = None, input_name: str = "features") -> onnx.ModelProto:
    """y = activation(x @ weights + bias) for x float32 [batch, n_in], y float32 [batch, n_out]."""
    weights = np.asarray(weights, dtype=np.float32)
    bias = np.asarray(bias, dtype=np.float32)
    n_in, n_out = weights.shape
    nodes = [
        helper.make_node("MatMul", [input_name, "W"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["linear" if activation else "y"]),
    ]
    if activation == "sigmoid":
        nodes.append(helper.make_node("Sigmoid", ["linear"], ["y"]))
    elif activation == "softmax":
        nodes.append(helper.make_node("Softmax", ["linear"], ["y"], axis=1))
    graph = helper.make_graph(
        nodes,
        "tiny_mlp",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", n_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n_out])],
        initializer=[numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by any onnxruntime >= 1.10
    onnx.checker.check_model(model)
    return model


def card(task: str, features: list[tuple[str, float, float]], **extra) -> dict:
    card = {
        "name": "keras-mlp",
        "task": task,
        "features": [{"name": n, "min": lo, "max": hi} for n, lo, hi in features],
        "target": "y",
        "class_labels": None,
        "interval": None,
        "metrics": {"val_mae": 0.25},
        "mlflow": {"run_id": "abc123", "model_version": "3"},
        "git_commit": "deadbeef",
        "data_hash": "md5:0123",
        "params": {"units_1": "8"},
    }
    if task == "regression":
        card["interval"] = {
            "method": "split-conformal",
            "calibration": "validation",
            "default_coverage": 0.9,
            "abs_residuals": ABS_RESIDUALS,
        }
    card.update(extra)
    return card


def write_model_dir(directory: Path, model: onnx.ModelProto, model_card: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(directory / "model.onnx"))
    (directory / "card.json").write_text(json.dumps(model_card, indent=2))
    return directory


def regression_1d(directory: Path) -> Path:
    """y = 2x + 1, one feature x trained on [-1, 1]."""
    return write_model_dir(directory, linear_onnx([[2.0]], [1.0]), card("regression", [("x", -1.0, 1.0)]))


def regression_2d(directory: Path) -> Path:
    """y = a + 10 b, features a in [0, 1] and b in [-5, 5]."""
    return write_model_dir(
        directory,
        linear_onnx([[1.0], [10.0]], [0.0]),
        card("regression", [("a", 0.0, 1.0), ("b", -5.0, 5.0)]),
    )


def binary_2d(directory: Path) -> Path:
    """P(yes) = sigmoid(4a - 4b)."""
    return write_model_dir(
        directory,
        linear_onnx([[4.0], [-4.0]], [0.0], activation="sigmoid"),
        card("binary", [("a", -1.0, 1.0), ("b", -1.0, 1.0)], class_labels=["no", "yes"]),
    )


def multiclass_2d(directory: Path) -> Path:
    """softmax([a, b, -a - b]) over classes red, green, blue."""
    return write_model_dir(
        directory,
        linear_onnx([[1.0, 0.0, -1.0], [0.0, 1.0, -1.0]], [0.0, 0.0, 0.0], activation="softmax"),
        card("multiclass", [("a", -2.0, 2.0), ("b", -2.0, 2.0)], class_labels=["red", "green", "blue"]),
    )


def overflowing_1d(directory: Path) -> Path:
    """y = 1e30 x: finite on the training range [-1, 1], +/-inf in float32 for |x| > ~3.4e8."""
    return write_model_dir(directory, linear_onnx([[1e30]], [0.0]), card("regression", [("x", -1.0, 1.0)]))


def direct_predictions(model_dir: Path, rows) -> list[list[float]]:
    """What onnxruntime itself answers for these rows: the reference for the service."""
    session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return session.run(None, {name: np.asarray(rows, dtype=np.float32)})[0].astype(np.float64).tolist()


COLORS = ["blue", "green", "red"]


def regression_categorical(directory: Path, **extra) -> Path:
    """y = area + 10 * index(color): area in [0, 100], color one of COLORS (index 1..3, 0 out-of-vocabulary)."""
    model_card = card("regression", [], **extra)
    model_card["features"] = [
        {"name": "area", "kind": "numeric", "min": 0.0, "max": 100.0},
        {"name": "color", "kind": "categorical", "categories": COLORS, "min": None, "max": None},
    ]
    return write_model_dir(directory, linear_onnx([[1.0], [10.0]], [0.0]), model_card)
