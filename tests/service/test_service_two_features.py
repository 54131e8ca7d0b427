"""A two-feature model (y = a + 10 b, a in [0, 1], b in [-5, 5]): feature order, names and ranges."""

import pytest

from devtools import tiny_onnx_models as models

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model_dir(model_root):
    return models.regression_2d(model_root / "regression_2d")


@pytest.fixture(scope="module")
def client(start_server, model_dir):
    import httpx

    with httpx.Client(base_url=start_server(model_dir).url, timeout=30) as client:
        yield client


def test_rows_follow_the_card_feature_order(client, model_dir):
    rows = [[0.5, 1.0], [1.0, -0.5], [0.0, 0.0]]
    answer = client.post("/predict", json={"x": rows}).json()
    assert answer["predictions"] == [row[0] for row in models.direct_predictions(model_dir, rows)]
    assert answer["predictions"] == [10.5, -4.0, 0.0]


def test_records_are_matched_by_name_not_position(client):
    by_rows = client.post("/predict", json={"x": [[0.5, 1.0]]}).json()
    by_records = client.post("/predict", json={"records": [{"b": 1.0, "a": 0.5}]}).json()
    assert by_records == by_rows


def test_extrapolated_is_per_row_any_feature(client):
    rows = [[0.5, 0.0], [1.5, 0.0], [0.5, -6.0], [-0.1, 9.0], [1.0, 5.0]]
    answer = client.post("/predict", json={"x": rows}).json()
    assert answer["extrapolated"] == [False, True, True, True, False]


@pytest.mark.parametrize(
    ("row", "words"),
    [([0.5], ["x[1]", "at least 2 items"]), ([0.5, 1.0, 2.0], ["x[1]", "at most 2 items"])],
)
def test_wrong_number_of_features(client, row, words):
    answer = client.post("/predict", json={"x": [[0.5, 1.0], row]})
    assert answer.status_code == 400
    message = answer.json()["error"]
    assert message.startswith(f"invalid request: x[1]: List should have {words[1]}")
    assert "2 finite number(s)" in message and "in this order: a, b" in message


def test_record_with_wrong_names(client):
    answer = client.post("/predict", json={"records": [{"a": 0.5, "b": 1.0}, {"a": 0.5, "c": 1.0}]})
    assert answer.status_code == 400
    message = answer.json()["error"]
    assert "records[1]" in message
    assert "unknown feature(s) 'c'" in message and "missing feature(s) 'b'" in message
    assert "exactly these features: 'a', 'b'" in message


def test_openapi_request_schema_names_the_features(client):
    spec = client.get("/docs.json").json()
    request = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert request["properties"]["x"]["items"]["minItems"] == 2
    record = spec["components"]["schemas"]["FeatureRecord"]
    assert record["required"] == ["a", "b"] and record["additionalProperties"] is False


@pytest.fixture(scope="module")
def imputing_client(start_server, model_root):
    """The same model trained with data.file.impute: median (fill values a = 0.25, b = -2)."""
    card = models.card("regression", [("a", 0.0, 1.0), ("b", -5.0, 5.0)],
                       imputation={"method": "median", "values": {"a": 0.25, "b": -2.0}})
    model_dir = models.write_model_dir(model_root / "imputing_2d", models.linear_onnx([[1.0], [10.0]], [0.0]), card)
    import httpx

    with httpx.Client(base_url=start_server(model_dir).url, timeout=30) as client:
        yield client


def test_a_model_trained_with_imputation_fills_nulls_and_says_which(imputing_client):
    rows = [[0.5, None], [None, 1.0], [None, None], [0.5, 1.0]]
    answer = imputing_client.post("/predict", json={"x": rows}).json()
    assert answer["predictions"] == [0.5 - 20.0, 0.25 + 10.0, 0.25 - 20.0, 10.5]
    assert answer["imputed"] == [["b"], ["a"], ["a", "b"], []]
    assert answer["extrapolated"] == [False] * 4  # fill values lie in the training range
    by_records = imputing_client.post("/predict", json={"records": [{"a": None, "b": 1.0}]}).json()
    assert by_records["predictions"] == [10.25] and by_records["imputed"] == [["a"]]
    assert imputing_client.get("/metadata").json()["imputation"] == {"method": "median", "values": {"a": 0.25, "b": -2.0}}


def test_a_model_trained_without_imputation_refuses_null(client):
    response = client.post("/predict", json={"x": [[0.5, None]]})
    assert response.status_code == 400 and "x" in response.json()["error"]
    assert client.post("/predict", json={"x": [[0.5, 1.0]]}).json()["imputed"] is None
