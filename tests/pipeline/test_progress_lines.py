"""Tuning progress where no terminal redraws a bar: CI logs and `dvc repro > log` get plain lines."""

from __future__ import annotations

import io

import optuna

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


def test_a_resumed_search_counts_on_from_where_it_was():
    study = run_study(new_study(), 7)
    stream = io.StringIO()
    run_study(study, 5, ProgressBar(12, 7, stream))
    assert [line.split(" trials")[0] for line in stream.getvalue().splitlines()] == ["tune: 8/12", "tune: 10/12",
                                                                                      "tune: 12/12"]
