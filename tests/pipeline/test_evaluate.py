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
