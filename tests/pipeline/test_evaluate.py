"""The evaluate stage's report (the metrics themselves are checked end to end in tests/e2e)."""

from __future__ import annotations

from pipeline.evaluate import baseline_lines


def test_baselines_that_beat_the_model_are_flagged():
    metrics = {
        "task": "regression",
        "model": {"rmse": 2.0, "r2": 0.4},
        "baseline_linear": {"rmse": 2.5, "r2": 0.3},
        "baseline_ridge": {"rmse": 1.5, "r2": 0.5},
    }
    linear, ridge = baseline_lines(metrics, "rmse")
    assert linear == "  baseline_linear: rmse 2.5"
    assert ridge.startswith("  baseline_ridge: rmse 1.5") and "better than the model's 2 " in ridge


def test_a_tie_is_not_flagged():
    metrics = {"model": {"log_loss": 0.1}, "baseline_logistic": {"log_loss": 0.1}}
    assert baseline_lines(metrics, "log_loss") == ["  baseline_logistic: log_loss 0.1"]


# --- in-process, on real data, a real Keras model and the service's own schema -----------------

import json  # noqa: E402
import math  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from pipeline import evaluate  # noqa: E402
from pipeline.card import model_card, validated  # noqa: E402
from pipeline.config import SplitConfig, load_params  # noqa: E402
from pipeline.data import load, prepare, split  # noqa: E402
from pipeline.evaluate import (conformal_interval, interval_spec, primary_score, served_model_lines,  # noqa: E402
                               training_profile)
from pipeline.profile import numeric_column  # noqa: E402
from pipeline.model import build_model, fit, seed_everything  # noqa: E402
from service.api_models import ModelCard, conformal_half_width  # noqa: E402
from tests.conftest import ROOT  # noqa: E402

PARAMS = load_params(ROOT / "params.yaml")


@pytest.fixture(scope="module")
def fitted():
    splits = split(*load(PARAMS.data), PARAMS.split)
    seed_everything(0)
    x, y = splits.train[["x"]].to_numpy(np.float32), splits.train[["y"]].to_numpy(np.float32)
    model = build_model(PARAMS.train.hyperparams, 1, x_train=x, y_train=y)
    fit(model, PARAMS.train.hyperparams, (x, y), (splits.val[["x"]].to_numpy(np.float32),
                                                  splits.val[["y"]].to_numpy(np.float32)), epochs=60, patience=0)
    return model, splits


def test_the_interval_evaluate_reports_is_the_one_the_service_serves(fitted):
    model, splits = fitted
    spec = interval_spec(model, splits, PARAMS)
    residuals = np.array(spec["abs_residuals"])
    assert spec["default_coverage"] == PARAMS.evaluate.interval_coverage and len(residuals) == len(splits.val)
    for coverage in (0.07, 0.5, 0.8, 0.9, 0.95, 0.99):
        reported = conformal_interval(residuals, lambda x: model(x).numpy()[:, 0], splits, coverage)
        assert reported["interval_half_width"] == conformal_half_width(sorted(spec["abs_residuals"]), coverage)


def test_primary_score_on_a_subset_of_test_rows(fitted):
    model, splits = fitted
    predict = lambda x: model(x).numpy()[:, 0]  # noqa: E731
    every = np.ones(len(splits.test), bool)
    errors = np.abs(splits.test["y"].to_numpy() - predict(splits.test[["x"]].to_numpy(np.float32)))
    assert primary_score(predict, splits, every) == pytest.approx(np.sqrt(np.mean(errors ** 2)), rel=1e-5)
    first = np.arange(len(splits.test)) < 5
    assert primary_score(predict, splits, first) == pytest.approx(np.sqrt(np.mean(errors[:5] ** 2)), rel=1e-5)


def test_the_card_is_valid_for_the_service_and_carries_the_fill_values(fitted):
    model, splits = fitted
    run = SimpleNamespace(data=SimpleNamespace(tags={"data_sha256": "abc"}, params={"units_1": "10"}))
    profile = training_profile(model, splits.train, splits.schema)
    ranges = {"x": (float(splits.train["x"].min()), float(splits.train["x"].max()))}
    card = model_card("line-mlp", splits.schema, ranges, {"rmse": 0.1}, interval_spec(model, splits, PARAMS), run, "f00d",
                      profile)
    parsed = ModelCard.model_validate(json.loads(json.dumps(card)))
    assert parsed.name == "line-mlp" and parsed.imputation is None and parsed.split_fingerprint == "f00d"
    # The profile is this model's: its training rows, and its own predictions on them.
    assert parsed.profile.rows == len(splits.train) and [c.name for c in parsed.profile.features] == ["x"]
    predictions = model(splits.train[["x"]].to_numpy(np.float32)).numpy()[:, 0]
    assert parsed.profile.output.edges == numeric_column("p", predictions)["edges"]
    assert card["features"] == [{"name": "x", "kind": "numeric", "min": splits.train["x"].min(),
                                 "max": splits.train["x"].max()}]
    x = np.arange(30.0)
    x[4] = np.nan
    table, schema = prepare(pd.DataFrame({"x": x, "y": np.arange(30.0) * 2}), "y", None, "regression", "mean")
    imputing = split(table, schema, SplitConfig(train=0.6, val=0.2, test=0.2, seed=0, folds=1))
    card = model_card("m", imputing.schema, {"x": (0.0, 29.0)}, {}, {"method": "split-conformal", "default_coverage": 0.9,
                                          "abs_residuals": [0.1]}, run, "f")
    assert card["imputation"] == {"method": "mean", "values": {"x": imputing.schema.fill_values["x"]}}
    with pytest.raises(ValueError, match=r"\['surprise'\] are not declared"):
        validated({**card, "surprise": 1})


def test_the_console_names_the_served_version():
    same = {"versions": {"candidate": "2", "served": "2"}}
    assert served_model_lines(same) == ["package ships v2, the model evaluated above"]
    kept = {"versions": {"candidate": "3", "served": "2", "served_metrics": {"rmse": 0.081, "r2": 0.99}}}
    assert served_model_lines(kept) == ["package ships v2, not this run's v3; v2's test figures (on its own test "
                                        "set): rmse 0.081, r2 0.99"]


def test_the_card_keeps_at_most_card_residuals_order_statistics_and_no_interval_gets_narrower():
    rng = np.random.default_rng(0)
    every = np.sort(np.abs(rng.normal(size=25_001)))
    kept = evaluate.thinned(every)
    assert len(kept) == evaluate.CARD_RESIDUALS and kept[-1] == every[-1]
    within = every[:10_000]
    assert evaluate.thinned(within) is within  # up to CARD_RESIDUALS: every residual
    for coverage in np.linspace(0.01, 0.9999, 400):
        ours, theirs = conformal_half_width(list(kept), coverage), conformal_half_width(list(every), coverage)
        if ours is None:
            continue
        rank = np.searchsorted(every, ours) + 1  # its rank among all residuals
        exact = math.ceil((len(every) + 1) * coverage)
        assert ours >= theirs and rank <= exact + math.ceil(2 * len(every) / evaluate.CARD_RESIDUALS) + 1


def test_a_thinned_card_interval_says_so_and_is_the_one_evaluate_reports(fitted, monkeypatch):
    model, splits = fitted
    monkeypatch.setattr(evaluate, "CARD_RESIDUALS", 15)
    spec = interval_spec(model, splits, PARAMS)
    assert len(spec["abs_residuals"]) == 15
    assert spec["calibration"] == f"validation; 15 order statistics of its {len(splits.val)} residuals"
    metrics = evaluate.evaluate(model, splits, PARAMS)["model"]
    assert metrics["interval_half_width"] == round(conformal_half_width(spec["abs_residuals"], 0.9), 6)
