"""Data sources, task inference and the bad-data errors (each names the column or row)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.config import SplitConfig, load_params
from pipeline.data import DataError, features_and_target, load, prepare, split
from tests.conftest import ROOT

BASE = load_params(ROOT / "params.yaml").data
SPLIT = SplitConfig(train=0.6, val=0.2, test=0.2, seed=0, folds=1)


def cfg(**update):
    return BASE.model_copy(update=update)


@pytest.mark.parametrize(("name", "task", "n_classes"), [
    ("diabetes", "regression", None), ("breast_cancer", "binary", 2), ("iris", "multiclass", 3),
    ("wine", "multiclass", 3), ("digits", "multiclass", 10),
])
def test_sklearn_sources_infer_the_task(name, task, n_classes):
    frame, schema = load(cfg(source="sklearn", sklearn=BASE.sklearn.model_copy(update={"name": name})))
    assert schema.task == task and len(frame) > 100
    assert (schema.class_labels is None) == (n_classes is None)
    if n_classes:
        assert len(schema.class_labels) == n_classes
    assert schema.features == [c for c in frame.columns if c != schema.target]


@pytest.mark.parametrize("n_classes", [2, 4])
def test_synthetic_classification_is_seeded_and_stratified(n_classes):
    classification = BASE.classification.model_copy(update={"n_classes": n_classes})
    config = cfg(synthetic="classification", n_samples=200, classification=classification)
    frame, schema = load(config)
    assert schema.task == ("binary" if n_classes == 2 else "multiclass")
    assert schema.class_labels == list(range(n_classes))
    pd.testing.assert_frame_equal(frame, load(config)[0])
    parts = split(frame, schema, SPLIT)
    overall = frame[schema.target].value_counts(normalize=True).sort_index()
    for part in (parts.train, parts.test):
        share = part[schema.target].value_counts(normalize=True).sort_index()
        assert np.allclose(share, overall, atol=0.06)
    x, y = features_and_target(parts.train, schema)
    assert x.shape == (len(parts.train), 4) and set(np.unique(y)) == set(range(n_classes))


def test_file_source_csv_and_parquet_with_feature_subset(tmp_path):
    table = pd.DataFrame({"a": [1.0, 2, 3, 4, 5, 6, 7, 8, 9, 10], "b": range(10), "label": ["no", "yes"] * 5})
    table.to_csv(tmp_path / "t.csv", index=False)
    table.to_parquet(tmp_path / "t.parquet")
    for name in ("t.csv", "t.parquet"):
        file_cfg = BASE.file.model_copy(update={"path": str(tmp_path / name), "target": "label", "features": ["b"]})
        frame, schema = load(cfg(source="file", file=file_cfg))
        assert schema.task == "binary" and schema.features == ["b"] and schema.class_labels == ["no", "yes"]
        assert list(frame.columns) == ["b", "label"]


def test_auto_task_inference():
    x = np.arange(40.0)
    assert prepare(pd.DataFrame({"x": x, "y": x * 0.5}), "y", None, "auto", "none")[1].task == "regression"
    assert prepare(pd.DataFrame({"x": x, "y": x % 3}), "y", None, "auto", "none")[1].task == "multiclass"
    assert prepare(pd.DataFrame({"x": x, "y": x % 2 == 0}), "y", None, "auto", "none")[1].task == "binary"
    assert prepare(pd.DataFrame({"x": x, "y": x % 3}), "y", None, "regression", "none")[1].task == "regression"


SIX = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]


@pytest.mark.parametrize(("table", "target", "impute", "message"), [
    ({"x": SIX, "y": SIX}, "price", "none", "target column 'price' not found; columns are: x, y"),
    ({"x": [1.0, "two", *SIX[2:]], "y": SIX}, "y", "none", "feature column 'x' holds numbers but row 1 holds 'two'; fix the value, or list"),
    ({"x": [1.0, None, *SIX[2:]], "y": SIX}, "y", "none", "feature column 'x' has a missing value in row 1"),
    ({"x": SIX, "y": [1.0, None, *SIX[2:]]}, "y", "none", "target column 'y' has a missing value in row 1"),
    ({"x": SIX, "y": [1.0, None, *SIX[2:]]}, "y", "median", "target column 'y' has a missing value in row 1"),
    ({"x": SIX, "y": ["a"] * 6}, "y", "none", "target column 'y' has a single class ('a')"),
    ({"x": SIX, "y": [1.0, float("inf"), *SIX[2:]]}, "y", "none", "target column 'y' holds inf in row 1; targets must be finite"),
    ({"x": SIX, "y": [1.0, 2.0, -np.inf, *SIX[3:]]}, "y", "median", "target column 'y' holds -inf in row 2"),
    ({"x": [1.0], "y": [2.0]}, "y", "none", "the table has 1 row(s); training needs at least 6"),
    ({"x": [None] * 6, "y": SIX}, "y", "median", "feature column 'x' has no values at all"),
])
def test_bad_data_names_the_column_and_row(table, target, impute, message):
    with pytest.raises(DataError) as info:
        prepare(pd.DataFrame(table), target, None, "auto", impute)
    assert message in str(info.value)


@pytest.mark.parametrize(("content", "message"), [
    ("x,y\n", "has a header but no data rows"),
    ("", "is empty; it needs a header row and data rows"),
])
def test_a_csv_without_rows_is_named(tmp_path, content, message):
    (tmp_path / "t.csv").write_text(content)
    file_cfg = BASE.file.model_copy(update={"path": str(tmp_path / "t.csv"), "target": "y"})
    with pytest.raises(DataError, match=message):
        load(cfg(source="file", file=file_cfg))


def test_imputation_is_fitted_on_the_training_rows_only():
    """Test rows' values never shape the fill value: changing them leaves every fill unchanged."""
    x = np.arange(40.0)
    x[[3, 17, 29]] = np.nan
    frame, schema = prepare(pd.DataFrame({"x": x, "y": np.arange(40.0) * 2}), "y", None, "auto", "median")
    assert schema.impute == "median" and schema.fill_values is None and frame["x"].isna().sum() == 3
    splits = split(frame, schema, SPLIT)
    expected = float(splits.train["x"].median())
    assert splits.schema.fill_values == {"x": expected}
    assert not any(part["x"].isna().any() for part in (splits.train, splits.val, splits.test))
    in_test = frame["y"].isin(splits.test["y"])  # y = 2 * position names each row
    shifted = frame.assign(x=frame["x"].where(~in_test, frame["x"] + 1000.0))  # only test rows change
    assert split(shifted, schema, SPLIT).schema.fill_values == {"x": expected}
    holes = splits.test["y"].isin([6.0, 34.0, 58.0])  # rows 3, 17, 29
    assert (splits.test.loc[holes, "x"] == expected).all()


def test_too_few_rows_for_the_split_is_named():
    frame, schema = prepare(pd.DataFrame({"x": np.arange(6.0), "y": [0, 1] * 3}), "y", None, "auto", "none")
    with pytest.raises(DataError, match="cannot be split|at least 2 rows"):
        split(frame, schema, SPLIT)


def test_missing_file_is_named(tmp_path):
    file_cfg = BASE.file.model_copy(update={"path": str(tmp_path / "nope.csv")})
    with pytest.raises(DataError, match="data.file.path: .*nope.csv does not exist"):
        load(cfg(source="file", file=file_cfg))
