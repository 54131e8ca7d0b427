"""Live drift counting (service/drift.py) in-process: the issue's PSI goals, bounded windows, categories."""

import numpy as np
import pandas as pd
import pytest

from drift import DriftWindow, psi
from pipeline.profile import categorical_column, numeric_column, reference_profile

RNG = np.random.default_rng(1)
TRAIN = np.random.default_rng(0).normal(size=(2000, 3))


def window_for(train: np.ndarray, **kwargs) -> DriftWindow:
    profile = reference_profile(pd.DataFrame(train, columns=["a", "b", "c"]), ["a", "b", "c"], train.sum(axis=1),
                                "regression", None)
    columns = [*profile["features"], profile["output"]]
    return DriftWindow([c["edges"] for c in columns], [c["expected"] for c in columns], **kwargs)


def served(rows: np.ndarray) -> np.ndarray:
    return np.column_stack([rows, rows.sum(axis=1)])


@pytest.mark.parametrize("seed", range(5))
def test_one_sigma_shift_on_one_feature_passes_02_within_1000_rows_and_the_others_stay_below_01(seed):
    rng = np.random.default_rng(seed)
    shifted, steady = rng.normal(size=(1000, 3)), window_for(TRAIN, window_rows=1000)
    shifted[:, 0] += 1.0
    window = window_for(TRAIN, window_rows=1000)
    for row in shifted:  # one row per request, as the service counts them
        window.observe(served(row[None, :]), np.array([False]))
    steady.observe(served(rng.normal(size=(1000, 3))), np.zeros(1000, bool))
    psi_a, psi_b, psi_c, _ = window.psi()
    assert psi_a > 0.2 and psi_b < 0.1 and psi_c < 0.1
    assert max(steady.psi()) < 0.1


def test_count_window_keeps_about_window_rows_in_fixed_arrays():
    window = window_for(TRAIN, window_rows=1000, buckets=10)
    before = window._counts.nbytes
    window.observe(served(RNG.normal(size=(5000, 3)) + [3, 0, 0]), np.ones(5000, bool))  # old traffic: shifted
    window.observe(served(RNG.normal(size=(1000, 3))), np.zeros(1000, bool))  # a big batch is spread over buckets
    assert 900 <= window.rows <= 1000
    assert window.extrapolated_rate() < 0.1  # the shifted rows have left the window
    assert max(window.psi()) < 0.1
    assert window._counts.nbytes == before


def test_time_window_forgets_rows_older_than_window_s():
    now = [0.0]
    window = window_for(TRAIN, window_s=60, min_rows=10, clock=lambda: now[0])
    window.observe(served(RNG.normal(size=(500, 3))), np.zeros(500, bool))
    now[0] = 30.0
    window.observe(served(RNG.normal(size=(200, 3))), np.zeros(200, bool))
    assert window.rows == 700
    now[0] = 65.0
    assert window.rows == 200
    now[0] = 1000.0
    assert window.rows == 0 and np.isnan(window.psi()).all() and np.isnan(window.extrapolated_rate())


def test_psi_is_nan_below_min_rows_and_window_needs_one_kind():
    window = window_for(TRAIN, window_rows=1000, min_rows=100)
    window.observe(served(RNG.normal(size=(99, 3))), np.zeros(99, bool))
    assert np.isnan(window.psi()).all()
    with pytest.raises(ValueError, match="exactly one"):
        window_for(TRAIN, window_rows=10, window_s=10)


def test_categorical_bins_are_category_indices_with_out_of_vocabulary_first():
    column = categorical_column("colour", np.array([1, 1, 2, 3, 3, 3]), ["<oov>", "red", "green", "blue"])
    assert column["edges"] == [0.5, 1.5, 2.5] and column["expected"] == pytest.approx([0, 2 / 6, 1 / 6, 3 / 6])
    window = DriftWindow([column["edges"]], [column["expected"]], window_rows=100, min_rows=1)
    window.observe(np.array([[0.0], [0.0], [3.0], [3.0]]), np.zeros(4, bool))  # half unseen categories
    assert window.shares()[0].tolist() == [0.5, 0, 0, 0.5]
    assert window.psi()[0] > 1


def test_numeric_profile_merges_ties_and_shares_sum_to_one():
    column = numeric_column("k", np.array([0.0] * 50 + [1.0] * 30 + [2.0] * 20))
    assert column["edges"] == [0.0, 1.0]
    assert column["expected"] == pytest.approx([0.5, 0.3, 0.2])
    assert psi(column["expected"], column["expected"]) == 0
