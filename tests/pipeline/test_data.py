"""generate and split: the tutorial's data, seeded and disjoint splits."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.config import SplitConfig, load_params
from pipeline.data import generate_line as generate, load, sample_fresh, split
from tests.conftest import ROOT

TUTORIAL = load_params(ROOT / "params.yaml").data


def test_generate_is_the_tutorial_line():
    frame = generate(TUTORIAL)
    assert list(frame.columns) == ["x", "y"] and len(frame) == 100
    np.testing.assert_allclose(frame["x"], np.linspace(-1, 1, 100))
    residual = frame["y"] - (2 * frame["x"] + 1)
    assert abs(residual.mean()) < 0.03 and 0.07 < residual.std() < 0.13


def test_generate_is_seeded_and_uniform_spacing_stays_in_range():
    cfg = TUTORIAL.model_copy(update={"x_spacing": "uniform", "seed": 7})
    a, b = generate(cfg), generate(cfg)
    pd.testing.assert_frame_equal(a, b)
    assert a["x"].between(-1, 1).all() and not np.allclose(np.diff(np.sort(a["x"])), 2 / 99)
    assert not generate(cfg.model_copy(update={"seed": 8}))["y"].equals(a["y"])


def test_fresh_sample_follows_the_generating_distribution():
    fresh = sample_fresh(TUTORIAL, 10_000, seed=1)
    residual = fresh["y"] - (2 * fresh["x"] + 1)
    assert abs(residual.std() - 0.1) < 0.005
    assert fresh["x"].min() >= -1 and fresh["x"].max() <= 1


def test_split_fractions_seed_and_disjointness():
    frame, schema = load(TUTORIAL)
    cfg = SplitConfig(train=0.6, val=0.2, test=0.2, seed=3)
    parts = split(frame, schema, cfg)
    assert (len(parts.train), len(parts.val), len(parts.test)) == (60, 20, 20)
    indices = [set(p.index) for p in (parts.train, parts.val, parts.test)]
    assert not (indices[0] & indices[1] or indices[0] & indices[2] or indices[1] & indices[2])
    assert set().union(*indices) == set(frame.index)
    again = split(frame, schema, cfg)
    pd.testing.assert_frame_equal(parts.test, again.test)
    assert set(split(frame, schema, cfg.model_copy(update={"seed": 4})).test.index) != indices[2]


def test_split_refuses_too_few_rows():
    frame, schema = load(TUTORIAL.model_copy(update={"n_samples": 10}))
    with pytest.raises(ValueError, match="each part needs at least 2 rows"):
        split(frame, schema, SplitConfig(train=0.8, val=0.1, test=0.1, seed=0))
