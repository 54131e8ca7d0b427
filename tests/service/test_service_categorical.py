"""Categorical features in the service, in-process: the card, the request model's checks and messages,
category -> model index, and unseen categories flagged per row (the real server: tests/e2e/test_categorical_e2e.py)."""

import json

import pytest
from pydantic import ValidationError

from devtools import tiny_onnx_models as models
from api_models import ModelCard, RegressionAnswer, build_request_model, describe_validation_errors
from model_bundle import ModelBundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return ModelBundle.load(models.regression_categorical(tmp_path_factory.mktemp("cat") / "model"))


@pytest.fixture(scope="module")
def request_model(bundle):
    return build_request_model(bundle.card, max_rows=10, default_coverage=0.9)


def errors_of(request_model, body) -> str:
    with pytest.raises(ValidationError) as caught:
        request_model.model_validate_json(json.dumps(body))
    return describe_validation_errors(caught.value.errors(include_url=False, include_input=False), {})


def test_records_take_strings_for_categories_and_unseen_ones_are_flagged(bundle, request_model):
    body = {"records": [{"area": 50.0, "color": "red"}, {"area": 20, "color": "purple"}, {"area": 1, "color": "blue"}]}
    rows = request_model.model_validate_json(json.dumps(body)).feature_rows()
    outputs = bundle.infer(rows)
    assert outputs.values.tolist() == [80.0, 20.0, 11.0]  # red = index 3, purple = 0 (out-of-vocabulary), blue = 1
    assert outputs.unseen == [[], ["color"], []]
    assert outputs.extrapolated.tolist() == [False, True, False]


def test_x_rows_take_a_string_where_the_card_has_a_category(bundle, request_model):
    rows = request_model.model_validate_json('{"x": [[10, "green"], [200, "green"]]}').feature_rows()
    outputs = bundle.infer(rows)
    assert outputs.values.tolist() == [30.0, 220.0]
    assert outputs.unseen == [[], []] and outputs.extrapolated.tolist() == [False, True]  # 200 is out of range


@pytest.mark.parametrize("body, expected", [
    ({"records": [{"area": 1.0, "color": 3}]}, "records[0].color: Input should be a valid string"),
    ({"records": [{"area": "big", "color": "red"}]}, "records[0].area: Input should be a valid number"),
    ({"records": [{"area": 1.0, "color": "r" * 201}]}, "records[0].color: String should have at most 200 characters"),
    ({"x": [[1.0, 2.0]]}, "position 1 is categorical feature 'color': give its category as a string "
                          "(one of 'blue', 'green', 'red'), not a number"),
    ({"x": [["red", "red"]]}, "position 0 is numeric feature 'area': give a number, not a string"),
    ({"records": [{"area": 1.0, "color": None}]}, "records[0].color: Input should be a valid string"),
])
def test_a_value_of_the_wrong_kind_is_refused_naming_the_field(request_model, body, expected):
    assert expected in errors_of(request_model, body)


def test_an_imputing_model_reads_a_missing_category_as_out_of_vocabulary(tmp_path):
    imputation = {"method": "mean", "values": {"area": 50.0, "color": 0.0}}
    bundle = ModelBundle.load(models.regression_categorical(tmp_path / "model", imputation=imputation))
    request = build_request_model(bundle.card, max_rows=10, default_coverage=0.9)
    rows = request.model_validate_json('{"records": [{"area": null, "color": null}]}').feature_rows()
    outputs = bundle.infer(rows)
    assert outputs.values.tolist() == [50.0] and outputs.imputed == [["area", "color"]] and outputs.unseen == [[]]


def test_the_spec_and_the_card_show_the_categories(bundle, request_model):
    schema = json.dumps(request_model.model_json_schema())
    assert "A category (string): 'blue', 'green', 'red'" in schema
    assert bundle.card.model_dump(mode="json")["features"][1]["categories"] == models.COLORS
    assert "unseen_categories" in RegressionAnswer.model_json_schema()["properties"]


@pytest.mark.parametrize("feature, message", [
    ({"name": "c", "kind": "categorical", "categories": ["a"], "min": 0.0, "max": 1.0}, "needs categories, and no min"),
    ({"name": "c", "kind": "categorical", "categories": []}, "needs categories"),
    ({"name": "c", "kind": "categorical", "categories": ["a", "a"]}, "categories must be unique"),
    ({"name": "n", "categories": ["a"], "min": 0.0, "max": 1.0}, "needs min and max, and no categories"),
    ({"name": "n"}, "needs min and max"),
])
def test_a_card_feature_of_the_wrong_shape_is_refused(feature, message):
    card = models.card("regression", [])
    card["features"] = [feature]
    with pytest.raises(ValidationError, match=message):
        ModelCard.model_validate(card)
