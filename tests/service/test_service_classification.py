"""Binary (one sigmoid output = P(class 1)) and multiclass (softmax outputs) models."""

import httpx
import pytest

from devtools import tiny_onnx_models as models

pytestmark = pytest.mark.slow

ROWS = [[0.5, -0.5], [-0.5, 0.5], [0.0, 0.0], [1.0, 3.0]]


def serve(start_server, model_dir):
    return httpx.Client(base_url=start_server(model_dir).url, timeout=30)


@pytest.fixture(scope="module")
def binary_dir(model_root):
    return models.binary_2d(model_root / "binary")


@pytest.fixture(scope="module")
def multiclass_dir(model_root):
    return models.multiclass_2d(model_root / "multiclass")


def test_binary(start_server, binary_dir):
    with serve(start_server, binary_dir) as client:
        answer = client.post("/predict", json={"x": ROWS})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        p_yes = [row[0] for row in models.direct_predictions(binary_dir, ROWS)]
        assert body["probabilities"] == [[1.0 - p, p] for p in p_yes]
        assert body["labels"] == ["yes", "no", "yes", "no"]  # P(yes) >= 0.5 -> "yes"; sigmoid(0) = 0.5
        assert body["class_labels"] == ["no", "yes"]
        assert body["extrapolated"] == [False, False, False, True]
        assert set(body) == {"labels", "probabilities", "class_labels", "extrapolated", "imputed"}
        assert body["imputed"] is None  # a model trained without imputation

        # No interval for classifiers, so no coverage either.
        answer = client.post("/predict", json={"x": ROWS, "coverage": 0.9})
        assert answer.status_code == 400
        assert "unknown field(s) 'coverage'" in answer.json()["error"]


def test_multiclass(start_server, multiclass_dir):
    with serve(start_server, multiclass_dir) as client:
        body = client.post("/predict", json={"records": [dict(zip("ab", row)) for row in ROWS]}).json()
        expected = models.direct_predictions(multiclass_dir, ROWS)
        assert body["probabilities"] == expected
        assert all(sum(p) == pytest.approx(1.0, abs=1e-6) for p in body["probabilities"])
        assert body["labels"] == ["red", "green", "red", "green"]
        assert body["class_labels"] == ["red", "green", "blue"]
        assert client.get("/metadata").json()["task"] == "multiclass"
