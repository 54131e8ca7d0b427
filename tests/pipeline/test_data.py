"""generate and split: the tutorial's data, seeded and disjoint splits."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipeline.config import SplitConfig, load_params
from pipeline import data
from pipeline.data import (DataError, development_folds, development_rows, features_and_target, load,
                           read_development_sample, row_ids, sample_fresh, split, write_splits)
from pipeline.data import generate_line as generate
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
    cfg = SplitConfig(train=0.6, val=0.2, test=0.2, seed=3, folds=1)
    parts = split(frame, schema, cfg)
    assert (len(parts.train), len(parts.val), len(parts.test)) == (60, 20, 20)
    indices = [set(p.index) for p in (parts.train, parts.val, parts.test)]
    assert not (indices[0] & indices[1] or indices[0] & indices[2] or indices[1] & indices[2])
    assert set().union(*indices) == set(row_ids(frame, schema))  # every row once, named by its content
    again = split(frame, schema, cfg)
    pd.testing.assert_frame_equal(parts.test, again.test)
    assert set(split(frame, schema, cfg.model_copy(update={"seed": 4})).test.index) != indices[2]


@pytest.fixture
def split_files(tmp_path, monkeypatch):
    """A split of 400 rows with two categorical columns, written in row groups of 16 rows (as `split` writes a big
    table in groups of 16,384), so that reading in parts crosses many groups."""
    monkeypatch.setattr(data, "ROW_GROUP_ROWS", 16)
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=400), "color": rng.choice(["red", "blue"], 400),
                          "zip": rng.choice([f"z{i}" for i in range(30)], 400), "y": rng.normal(size=400)})
    table, schema = data.prepare(frame, "y", None, "regression", "none")
    parts = split(table, schema, SplitConfig(train=0.6, val=0.2, test=0.2, seed=3, folds=1))
    write_splits(parts, tmp_path)
    return tmp_path, parts


def test_split_files_read_in_parts_equal_the_whole_table(split_files):
    directory, parts = split_files
    path = directory / "train.parquet"
    whole = pd.read_parquet(path)
    pd.testing.assert_frame_equal(whole, parts.train, check_dtype=False)
    assert pq.ParquetFile(path).num_row_groups == 15 and data.parquet_rows(path) == 240
    positions = np.array([0, 5, 16, 17, 100, 239])
    pd.testing.assert_frame_equal(data.read_rows(path, positions), whole.iloc[positions])
    np.testing.assert_array_equal(data.read_row_ids(path), parts.train.index.to_numpy())
    assert data.numeric_ranges(path, ["a", "y"]) == {"a": (whole["a"].min(), whole["a"].max()),
                                                     "y": (whole["y"].min(), whole["y"].max())}
    pd.testing.assert_frame_equal(data.read_sample(path, 240, seed=0), whole)
    sample = data.read_sample(path, 50, seed=0)
    positions = whole.index.get_indexer(sample.index)
    assert len(sample) == 50 and list(positions) == sorted(positions) and len(set(positions)) == 50
    pd.testing.assert_frame_equal(sample, whole.iloc[positions])
    assert set(data.read_sample(path, 50, seed=1).index) != set(sample.index)


def test_trials_sample_is_a_no_op_on_small_tables_and_a_seeded_proportional_subset_beyond(split_files):
    """tune.sample_rows: a table within the limit is used as it is; a bigger one gives a seeded sample of its train and
    validation rows in their own proportion and order, read without the rest of the table; no test rows."""
    directory, _ = split_files
    parts = data.read_splits(directory)
    whole = read_development_sample(directory, 320, seed=0)
    pd.testing.assert_frame_equal(whole.train, parts.train)
    pd.testing.assert_frame_equal(whole.val, parts.val)
    pd.testing.assert_frame_equal(read_development_sample(directory, None, seed=0).train, parts.train)
    sample = read_development_sample(directory, 40, seed=0)
    assert (len(sample.train), len(sample.val)) == (30, 10)
    assert len(sample.test) == 0 and list(sample.test.columns) == list(parts.test.columns)
    for drawn, part in ((sample.train, parts.train), (sample.val, parts.val)):
        positions = part.index.get_indexer(drawn.index)
        assert (positions >= 0).all() and list(positions) == sorted(positions)
        pd.testing.assert_frame_equal(drawn, part.iloc[positions])
    pd.testing.assert_frame_equal(sample.train, read_development_sample(directory, 40, seed=0).train)
    assert set(read_development_sample(directory, 40, seed=1).train.index) != set(sample.train.index)


def test_split_refuses_too_few_rows():
    frame, schema = load(TUTORIAL.model_copy(update={"n_samples": 10}))
    with pytest.raises(DataError, match="each part needs at least 2 rows"):
        split(frame, schema, SplitConfig(train=0.8, val=0.1, test=0.1, seed=0, folds=1))


def _classification(n_samples=120, n_classes=3):
    data = TUTORIAL.model_copy(update={"synthetic": "classification", "n_samples": n_samples,
                                       "classification": TUTORIAL.classification.model_copy(
                                           update={"n_classes": n_classes})})
    return load(data)


def test_one_fold_is_the_split_as_it_is():
    frame, schema = load(TUTORIAL)
    parts = split(frame, schema, SplitConfig(train=0.6, val=0.2, test=0.2, seed=0, folds=1))
    (fold,) = development_folds(parts, 1, seed=0)
    np.testing.assert_array_equal(fold.train[0][:, 0], parts.train["x"].to_numpy(np.float32))
    np.testing.assert_array_equal(fold.val[1][:, 0], parts.val["y"].to_numpy(np.float32))
    assert development_rows(parts, 1) is parts.train


def test_folds_pool_train_and_val_and_hold_out_every_row_once_stratified():
    frame, schema = _classification()
    parts = split(frame, schema, SplitConfig(train=0.6, val=0.2, test=0.2, seed=0, folds=4))
    pooled = development_rows(parts, 4)
    assert len(pooled) == len(parts.train) + len(parts.val) == 96
    folds = development_folds(parts, 4, seed=0)
    held_out = np.concatenate([fold.val[0] for fold in folds])
    # every development row is held out exactly once, and never also fitted on in the same fold
    assert sorted(map(tuple, held_out)) == sorted(map(tuple, pooled[schema.features].to_numpy(np.float32)))
    for fold in folds:
        assert len(fold.train[0]) + len(fold.val[0]) == 96
        assert not set(map(tuple, fold.train[0])) & set(map(tuple, fold.val[0]))
        # stratified: each held-out fold has each class in (nearly) the pooled proportions
        counts = np.bincount(fold.val[1][:, 0].astype(int), minlength=3)
        pooled_counts = np.bincount(features_and_target(pooled, schema)[1][:, 0].astype(int), minlength=3)
        assert np.all(np.abs(counts - pooled_counts / 4) <= 1)
    again = development_folds(parts, 4, seed=0)
    np.testing.assert_array_equal(again[2].val[0], folds[2].val[0])
    assert not np.array_equal(development_folds(parts, 4, seed=1)[2].val[0], folds[2].val[0])


def test_split_refuses_more_folds_than_a_class_has_rows():
    frame, schema = _classification(n_samples=40, n_classes=2)
    counts = split(frame, schema, SplitConfig(train=0.6, val=0.2, test=0.2, seed=0, folds=1))
    smallest = int(development_rows(counts, 2)[schema.target].value_counts().min())
    with pytest.raises(DataError, match=rf"split.folds \({smallest + 1}\): class .* has {smallest} rows in train \+ val"):
        split(frame, schema, SplitConfig(train=0.6, val=0.2, test=0.2, seed=0, folds=smallest + 1))


def test_split_refuses_folds_of_fewer_than_two_rows():
    frame, schema = load(TUTORIAL.model_copy(update={"n_samples": 20}))
    with pytest.raises(DataError, match=r"split.folds \(9\): train \+ val have 16 rows; .* at most 8 folds"):
        split(frame, schema, SplitConfig(train=0.6, val=0.2, test=0.2, seed=0, folds=9))
