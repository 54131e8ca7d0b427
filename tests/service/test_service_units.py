"""Pure-function checks of the service modules, without a server."""

import math

import pytest

from devtools import tiny_onnx_models as models
from api_models import ModelCard, build_request_model, describe_validation_errors
from model_bundle import ModelBundle, StartupError


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return ModelBundle.load(models.regression_1d(tmp_path_factory.mktemp("unit") / "model"))


@pytest.mark.parametrize("coverage", [0.05, 0.07, 0.1, 0.5, 0.8, 0.9, 0.909, 0.91, 0.95, 0.99])
def test_half_width_is_the_split_conformal_quantile(bundle, coverage):
    residuals = sorted(models.ABS_RESIDUALS)
    n = len(residuals)
    rank = math.ceil(round((n + 1) * coverage, 9))
    expected = residuals[rank - 1] if rank <= n else None
    assert bundle.interval_half_width(coverage) == expected


def test_quantile_rank_is_exact_for_decimal_coverages(tmp_path):
    # (99 + 1) * 0.07 is 7.000000000000001 in floating point; the rank must still be 7.
    card = models.card("regression", [("x", -1.0, 1.0)])
    card["interval"]["abs_residuals"] = [i / 100 for i in range(1, 100)]
    bundle = ModelBundle.load(models.write_model_dir(tmp_path, models.linear_onnx([[1.0]], [0.0]), card))
    assert bundle.interval_half_width(0.07) == 0.07
    assert bundle.interval_half_width(0.99) == 0.99
    assert bundle.interval_half_width(0.991) is None
    assert bundle.max_bounded_coverage() == pytest.approx(0.99)


def test_unsorted_residuals_are_sorted(tmp_path):
    card = models.card("regression", [("x", -1.0, 1.0)])
    card["interval"]["abs_residuals"] = [0.3, 0.1, 0.2]
    bundle = ModelBundle.load(models.write_model_dir(tmp_path, models.linear_onnx([[1.0]], [0.0]), card))
    assert bundle.interval_half_width(0.5) == 0.2  # ceil(4 * 0.5) = 2nd smallest


def test_classifier_must_output_probabilities(tmp_path):
    card = models.card("binary", [("x", -1.0, 1.0)])
    model = models.linear_onnx([[1.0]], [5.0])  # no sigmoid: 5 at the range midpoint
    with pytest.raises(StartupError, match="must output probabilities"):
        ModelBundle.load(models.write_model_dir(tmp_path, model, card))


def test_multiclass_labels_must_match_outputs(tmp_path):
    card = models.card("multiclass", [("x", -1.0, 1.0)], class_labels=["a", "b"])
    model = models.linear_onnx([[1.0, 2.0, 3.0]], [0.0, 0.0, 0.0], activation="softmax")
    with pytest.raises(StartupError, match="2 class label"):
        ModelBundle.load(models.write_model_dir(tmp_path, model, card))


def test_feature_names_need_not_be_identifiers():
    card = ModelCard.model_validate(models.card("regression", [("petal length (cm)", 0, 1), ("model_config", 0, 1)]))
    request = build_request_model(card, max_rows=3, default_coverage=0.9)
    parsed = request.model_validate_json('{"records": [{"model_config": 2, "petal length (cm)": 1}]}')
    assert parsed.feature_rows() == [[1.0, 2.0]]


def test_error_description_names_fields_and_caps_the_count():
    errors = [{"loc": ["x", i, 0], "msg": "Input should be a finite number"} for i in range(8)]
    text = describe_validation_errors(errors, {"x": "HINT", "records": "OTHER"})
    assert text.startswith("x[0][0]: Input should be a finite number; x[1][0]:")
    assert "and 3 more problem(s)" in text
    assert text.endswith(". HINT")
    assert describe_validation_errors([{"loc": [], "msg": "Invalid JSON: x"}], {}) == "Invalid JSON: x"
