"""Categorical features and dropped columns, in-process: which columns are categories, the vocabulary
learnt on the training rows, the model index of each value, near-constant features, the task's reason."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.config import SplitConfig
from pipeline.errors import PipelineError
from pipeline.data import (
    DataError,
    categories_line,
    dropped_line,
    features_and_target,
    prepare,
    split,
    task_line,
)

SPLIT = SplitConfig(train=0.6, val=0.2, test=0.2, seed=0, folds=1)
N = 100


def table(**columns) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({"area": rng.uniform(0, 1, N), **columns, "y": rng.normal(size=N)})


def test_text_and_listed_whole_number_columns_become_categories():
    zips = np.array([1011, 1012, 1013, None] * 25, dtype=object)
    frame, schema = prepare(table(color=["red", "blue"] * 50, zip=zips), "y", None, "auto", "mean", ["zip"])
    assert frame["color"].tolist()[:2] == ["red", "blue"] and frame["area"].dtype == "float64"
    assert frame["zip"].tolist()[:3] == ["1011", "1012", "1013"] and frame["zip"].isna()[3]  # whole numbers: no '.0'
    splits = split(frame, schema, SPLIT)
    assert splits.schema.categories == {"color": ["blue", "red"], "zip": ["1011", "1012", "1013"]}
    assert splits.schema.fill_values["zip"] == 0.0  # a missing category is out-of-vocabulary
    x, _ = features_and_target(splits.test, splits.schema)
    expected = splits.test["zip"].map({"1011": 1, "1012": 2, "1013": 3}).fillna(0).to_numpy()
    np.testing.assert_array_equal(x[:, 2], expected)


@pytest.mark.parametrize(("columns", "categorical", "message"), [
    ({"n": [1.0, "two"] + [3.0] * (N - 2)}, [], "feature column 'n' holds numbers but row 1 holds 'two'; fix the "
                                                "value, or list the column in data.file.categorical"),
    ({"n": [1.5] + [3.0] * (N - 1)}, ["n"], "data.file.categorical: column 'n' holds 1.5 in row 0; only whole numbers "
                                            "or text can be categories"),
    ({"n": [1.0] * N}, ["zip"], "data.file.categorical: ['zip'] are not feature columns"),
    ({"c": ["a", None] * (N // 2)}, [], "feature column 'c' has a missing value in row 1 (set data.file.impute to mean"
                                        " or median to have missing values read as out-of-vocabulary)"),
])
def test_a_column_that_cannot_be_categories_is_named(columns, categorical, message):
    with pytest.raises(PipelineError) as info:
        prepare(table(**columns), "y", None, "auto", "none", categorical)
    assert message in str(info.value)


def test_the_vocabulary_is_learnt_on_the_training_rows_and_capped():
    # 'a' x 40, 'b' x 30, 'c' x 20, then 10 categories seen once each
    colors = ["a"] * 40 + ["b"] * 30 + ["c"] * 20 + [f"rare{i}" for i in range(10)]
    frame, schema = prepare(table(color=colors), "y", None, "auto", "none")
    splits = split(frame, schema, SPLIT.model_copy(update={"max_categories": 3, "embed_above": 2}))
    assert splits.schema.categories == {"color": ["a", "b", "c"]}
    assert splits.schema.embedding_dims == {"color": 3}  # 3 categories > embed_above 2
    x, _ = features_and_target(splits.train, splits.schema)
    assert (x[:, 1] == 0).sum() == splits.train["color"].str.startswith("rare").sum()  # rare: out-of-vocabulary
    line = categories_line(splits)
    assert line.startswith("categorical feature(s): color (3 categories, ") and "rarer ones out-of-vocabulary" in line
    in_test = frame.index.isin(np.flatnonzero(frame["y"].isin(splits.test["y"])))
    changed = frame.assign(color=frame["color"].where(~in_test, "only-in-test"))
    assert split(changed, schema, SPLIT.model_copy(update={"max_categories": 3})).schema.categories == {
        "color": ["a", "b", "c"]}  # test rows never shape the vocabulary


def test_constant_and_near_constant_features_are_dropped_with_one_line():
    mostly = np.zeros(N)
    mostly[:3] = 1.0
    frame, schema = prepare(table(country=["NL"] * N, flag=mostly, color=["r", "g"] * 50), "y", None, "auto", "none")
    splits = split(frame, schema, SPLIT.model_copy(update={"near_constant": 0.95}))
    assert splits.schema.features == ["area", "color"] and "country" not in splits.test.columns
    assert dropped_line(splits.schema, 0.95) == ("dropped near-constant feature(s) (split.near_constant: 0.95): "
                                                 "country: constant 'NL'; flag: 0.0 in 96.6 % of the training rows")
    assert split(frame, schema, SPLIT).schema.dropped == {"country": "constant 'NL'"}
    with pytest.raises(DataError, match="every feature is constant or near-constant on the training rows"):
        split(*prepare(pd.DataFrame({"a": [1.0] * N, "y": np.arange(N)}), "y", None, "auto", "none"), SPLIT)


@pytest.mark.parametrize(("y", "task", "line"), [
    (np.arange(500) % 500 * 3, "auto", "task: regression (target 'y': 100 distinct whole numbers, more than the 20 "
                                       "that auto reads as classes; set data.task to override)"),
    (np.linspace(0, 1, N), "auto", "task: regression (target 'y': 100 distinct values, not all whole numbers; set"),
    (np.arange(N) % 3, "auto", "task: multiclass (target 'y': 3 distinct whole numbers; set data.task to override)"),
    (np.arange(N) % 3, "regression", "task: regression (set by data.task)"),
])
def test_the_task_is_explained_in_one_line(y, task, line):
    _, schema = prepare(pd.DataFrame({"x": np.arange(N, dtype=float), "y": y[:N]}), "y", None, task, "none")
    assert task_line(schema).startswith(line)
