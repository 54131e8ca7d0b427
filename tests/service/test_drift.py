"""Live drift counting (service/drift.py) in-process: the issue's PSI goals, bounded windows, categories."""

import numpy as np
import pandas as pd
import pytest

from drift import DriftWindow, psi
from pipeline.categories import encode
from pipeline.profile import OUT_OF_VOCABULARY, categorical_column, numeric_column, reference_profile

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
    column = categorical_column("colour", encode(pd.Series(["red", "red", "green"] + ["blue"] * 3),
                                                 ["red", "green", "blue"]), ["red", "green", "blue"])
    assert column["categories"] == [OUT_OF_VOCABULARY, "red", "green", "blue"]
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


def test_the_service_counts_categories_sent_as_strings_by_their_model_index(tmp_path):
    from api_models import build_request_model
    from devtools.tiny_onnx_models import COLORS, regression_categorical
    from model_bundle import ModelBundle
    from monitoring import Monitoring, MonitoringSettings

    frame = pd.DataFrame({"area": [10.0, 20.0, 30.0, 40.0], "color": ["red", "red", "blue", "green"]})
    profile = reference_profile(frame, ["area", "color"], np.arange(4.0), "regression", None, {"color": COLORS})
    bundle = ModelBundle.load(regression_categorical(tmp_path / "model", profile=profile))
    settings = MonitoringSettings(drift=True, window_rows=100, window_s=None, request_log=None,
                                  log_max_bytes=1, log_files=1, log_batch=1)
    monitoring = Monitoring(settings, bundle.card)
    body = '{"records": [{"area": 10, "color": "red"}, {"area": 20, "color": "blue"}, {"area": 30, "color": "purple"}]}'
    rows = build_request_model(bundle.card, max_rows=10, default_coverage=0.9).model_validate_json(body).feature_rows()
    outputs = bundle.infer(rows)
    assert monitoring.observe(rows, outputs.values, outputs.extrapolated, lambda: []) is None  # no log: no id
    # Bins by model index: 0 out of vocabulary (purple), blue 1, green 2, red 3.
    assert monitoring.drift.window.shares()[1][:4].tolist() == pytest.approx([1 / 3, 1 / 3, 0, 1 / 3])
    assert profile["features"][1]["expected"] == [0, 0.25, 0.25, 0.5]


def test_one_row_at_a_time_counts_as_a_batch_does():
    rows = RNG.normal(size=(300, 3))
    rows[::7, 1] = np.nan  # an imputing model's null: the lowest bin on both paths
    batch, single = window_for(TRAIN, window_rows=100), window_for(TRAIN, window_rows=100)
    batch.observe(served(rows), rows[:, 0] > 1)
    for row, flag in zip(served(rows), rows[:, 0] > 1):
        single.observe_row(row.tolist(), bool(flag))
    assert (single._counts == batch._counts).all() and single.extrapolated_rate() == batch.extrapolated_rate()
    assert single.psi() == pytest.approx(batch.psi())
