"""Tuning progress where no terminal redraws a bar: CI logs and `dvc repro > log` get plain lines."""

from __future__ import annotations

import io
import re
import time

import optuna

from pipeline.console import EpochProgress
from pipeline.trial_logging import ProgressBar


def run_study(study: optuna.Study, trials: int, progress: ProgressBar | None = None) -> optuna.Study:
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=trials, callbacks=[progress] if progress else [])
    if progress:
        progress.close()
    return study


def new_study() -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))


def test_redirected_output_gets_a_line_per_tenth_of_the_search():
    stream = io.StringIO()  # not a terminal
    study = run_study(new_study(), 30, ProgressBar(30, 0, stream))
    lines = stream.getvalue().splitlines()
    assert [line.split(" trials")[0] for line in lines] == [f"tune: {n}/30" for n in range(3, 31, 3)]
    assert lines[-1].split("lowest validation loss ")[1].startswith(f"{study.best_value:.5g},")
    assert "\r" not in stream.getvalue()


def test_each_line_but_the_last_has_an_eta_capped_by_the_time_budget():
    stream = io.StringIO()
    run_study(new_study(), 10, ProgressBar(10, 0, stream))
    lines = stream.getvalue().splitlines()
    assert all(re.search(r", ETA \d+ s$", line) for line in lines[:-1]) and "ETA" not in lines[-1]
    budget = io.StringIO()
    run_study(new_study(), 2, ProgressBar(10, 0, budget, deadline=time.time() - 1))
    assert budget.getvalue().splitlines()[0].endswith(", ETA 0 s (time budget) + running trials")


def test_a_resumed_search_counts_on_from_where_it_was():
    study = run_study(new_study(), 7)
    stream = io.StringIO()
    run_study(study, 5, ProgressBar(12, 7, stream))
    assert [line.split(" trials")[0] for line in stream.getvalue().splitlines()] == ["tune: 8/12", "tune: 10/12",
                                                                                      "tune: 12/12"]


def test_a_long_fit_gets_a_line_with_both_bounds_of_its_eta():
    """train's epoch progress: early stopping makes the end uncertain, so the ETA says when training stops if the
    validation loss improves no more (best epoch + patience, not before min_epochs) and when at the latest."""
    stream = io.StringIO()
    progress = EpochProgress("train", epochs=1000, patience=50, min_epochs=100, every_s=0.0, stream=stream)
    for epoch, loss in enumerate([1.0, 0.5, 0.6], start=1):
        assert progress(epoch, loss, loss) is False  # never stops training itself
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3 and lines[0].startswith("train: epoch 1/1000, best validation loss 1 at epoch 1, ")
    assert lines[2].startswith("train: epoch 3/1000, best validation loss 0.5 at epoch 2, ")
    assert "if it improves no more (epoch 100)" in lines[2] and "(epoch 1000)" in lines[2]
    assert "ETA 0 s if it improves no more (epoch 100)" in progress.line(120, 0.5)
    assert "at most 440 s left" in progress.line(120, 0.5)
    quiet = io.StringIO()
    slow = EpochProgress("train", epochs=1000, patience=50, min_epochs=100, every_s=3600.0, stream=quiet)
    slow(1, 1.0, 1.0)
    assert quiet.getvalue() == ""  # a quick fit prints nothing
