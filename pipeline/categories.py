"""Categorical features: which columns are categories, their vocabulary, the model's index for each value,
and the features too close to constant to learn from.

A categorical feature reaches the model as one float column holding a category index: the category at
position i of the vocabulary has index i + 1, and index 0 is out-of-vocabulary (a category never seen in
training, one too rare to make the vocabulary, or a missing value). The network one-hot encodes or embeds
that index itself (pipeline/model.py), so the exported ONNX model and the service need only the vocabulary,
which travels in the schema and the model card.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from pipeline.errors import PipelineError


class CategoryError(PipelineError):
    """A column that cannot be read as categories; the message names it."""


def is_text(column: pd.Series) -> bool:
    """Text (or mixed) values: the column is categorical whatever the params say."""
    return not pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)


def as_category_text(column: pd.Series, name: str) -> pd.Series:
    """The column's values as category strings (missing stays missing); whole numbers lose their '.0'."""
    if is_text(column):
        return column.astype(object).where(column.notna(), None).map(lambda v: v if v is None else str(v))
    values = column.astype("float64")
    fractional = values.notna() & (np.mod(values.fillna(0), 1) != 0)
    if fractional.any():
        row = int(np.flatnonzero(fractional.to_numpy())[0])
        raise CategoryError(f"data.file.categorical: column {name!r} holds {column.iloc[row]!r} in row {row}; only "
                            "whole numbers or text can be categories (drop it from data.file.categorical)")
    return values.map(lambda v: None if pd.isna(v) else str(int(v))).astype(object)


def vocabulary(train: pd.Series, max_categories: int) -> list[str]:
    """The `max_categories` most frequent categories of the training rows (ties by name), sorted by name."""
    counts = train.dropna().value_counts()
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return sorted(str(value) for value, _ in ranked[:max_categories])


def encode(column: pd.Series, vocab: list[str]) -> np.ndarray:
    """Each value's model index: position in `vocab` + 1, or 0 (out-of-vocabulary, missing)."""
    return (pd.Categorical(column, categories=vocab).codes + 1).astype(np.float32)


def embedding_dim(n_categories: int) -> int:
    """Width of a learnt embedding: fast.ai's rule of thumb 1.6 n^0.56, at most 16 for these small MLPs."""
    return max(2, min(16, round(1.6 * n_categories**0.56)))


def dominant_share(column: pd.Series) -> tuple[object, float]:
    """The most common value (missing counts as a value) and the share of rows holding it."""
    counts = column.value_counts(dropna=False)
    return counts.index[0], float(counts.iloc[0] / len(column))


def near_constant(train: pd.DataFrame, features: list[str], threshold: float) -> dict[str, str]:
    """The features whose most common training value fills at least `threshold` of the rows, each with
    why (its value and share): a column that (nearly) never changes gives the model nothing to learn."""
    dropped = {}
    for name in features:
        value, share = dominant_share(train[name])
        if share >= threshold:
            shown = "missing" if pd.isna(value) else repr(value.item() if hasattr(value, "item") else value)
            dropped[name] = (f"constant {shown}" if share == 1 else
                             f"{shown} in {math.floor(share * 1000) / 10:g} % of the training rows")
    return dropped
