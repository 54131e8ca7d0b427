"""Training rows left on disk: a split's Parquet file read a few row groups at a time, as a tf.data pipeline.

Above `train.stream_above_rows` training rows, `train` never holds the training split: it reads the
standardisation statistics in one pass, then feeds mini-batches from a buffer of `MIX_GROUPS` row groups,
drawn in a new seeded order every pass and shuffled row by row. Memory holds that buffer, not the table.
`split` writes its files in row groups of `ROW_GROUP_ROWS` (pipeline/data.py) so that any group can be
read alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import tensorflow as tf

from pipeline.data import Schema, features_and_target, parquet_rows
from pipeline.model import BatchStream, ColumnStats

MIX_GROUPS = 4  # row groups shuffled together: a mini-batch draws from 4 random parts of the file


def encoded_groups(path: Path, schema: Schema, groups: Iterator[int] | None = None
                   ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The file's row groups (all, or those listed) as float32 model inputs and targets, one group at a time."""
    file = pq.ParquetFile(path)
    columns = schema.features + [schema.target]
    for group in range(file.num_row_groups) if groups is None else groups:
        yield features_and_target(file.read_row_group(int(group), columns=columns).to_pandas(), schema)


def head(path: Path, n: int) -> pd.DataFrame:
    """The file's first `n` rows."""
    return next(pq.ParquetFile(path).iter_batches(batch_size=n)).to_pandas()


def read_encoded(path: Path, schema: Schema) -> tuple[np.ndarray, np.ndarray]:
    """The whole file as float32 inputs and targets, built group by group (no DataFrame of the table)."""
    parts = list(encoded_groups(path, schema))
    return np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts])


def streamed_stats(path: Path, schema: Schema) -> tuple[ColumnStats, ColumnStats]:
    """Per-column mean and standard deviation of the inputs and targets, in one pass (Chan et al.'s pairwise
    update of count, mean and sum of squared deviations, in float64)."""
    count, moments = 0, None
    for x, y in encoded_groups(path, schema):
        values = np.hstack([x, y]).astype(np.float64)
        n, mean = len(values), values.mean(axis=0)
        m2 = ((values - mean) ** 2).sum(axis=0)
        if moments is None:
            moments = (mean, m2)
        else:
            delta, total = mean - moments[0], count + n
            moments = (moments[0] + delta * n / total, moments[1] + m2 + delta**2 * count * n / total)
        count += n
    mean, std = moments[0], np.sqrt(moments[1] / count)
    width = len(schema.features)
    return ColumnStats.of_moments(mean[:width], std[:width]), ColumnStats.of_moments(mean[width:], std[width:])


def stream(path: Path, schema: Schema, seed: int) -> BatchStream:
    """The training rows of `path` as an endless, seeded stream of shuffled mini-batches."""
    n_features = len(schema.features)
    x_stats, y_stats = streamed_stats(path, schema)

    def batches(batch_size: int) -> tf.data.Dataset:
        def generate() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            rng = np.random.default_rng(seed)
            n_groups = pq.ParquetFile(path).num_row_groups
            while True:
                order = rng.permutation(n_groups)
                for start in range(0, n_groups, MIX_GROUPS):
                    parts = list(encoded_groups(path, schema, order[start : start + MIX_GROUPS]))
                    x, y = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
                    rows = rng.permutation(len(x))
                    for first in range(0, len(rows), batch_size):
                        take = rows[first : first + batch_size]
                        yield x[take], y[take]

        signature = (tf.TensorSpec((None, n_features), tf.float32), tf.TensorSpec((None, 1), tf.float32))
        return tf.data.Dataset.from_generator(generate, output_signature=signature).prefetch(2)

    return BatchStream(parquet_rows(path), batches, x_stats, y_stats)


@dataclass(frozen=True)
class StreamDecision:
    streamed: bool
    reason: str


def decide(path: Path, threshold: int | None, folds: int) -> StreamDecision:
    """Whether `train` streams the training split at `path`, and the one line that says why."""
    rows = parquet_rows(path)
    if threshold is None or rows <= threshold:
        return StreamDecision(False, "")
    if folds > 1:
        return StreamDecision(False, f"train: {rows:,} training rows are held in memory: split.folds > 1 pools train"
                                     " and val into folds, which only an in-memory table can do")
    return StreamDecision(True, f"train: streaming {rows:,} training rows from {path} (more than"
                                f" train.stream_above_rows = {threshold:,})")
