"""A training split streamed from Parquet (train.stream_above_rows): its statistics, its batches, the fit, and the
real train stage on a real MLflow store, against the same rows held in memory."""

from __future__ import annotations

import io
from contextlib import redirect_stdout

import mlflow
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline import data as data_module
from pipeline import streaming, train
from pipeline.artifacts import file_sha256
from pipeline.config import load_params, parse_params
from pipeline.data import Schema, features_and_target, load, split, write_splits
from pipeline.model import ColumnStats, build_model, fit, predict, seed_everything
from pipeline.paths import Workspace
from tests.conftest import ROOT, merge

SCHEMA = Schema(task="regression", target="y", features=["x", "colour"], class_labels=None,
                categories={"colour": ["red", "green", "blue"]})


@pytest.fixture
def small_groups(monkeypatch):
    monkeypatch.setattr(data_module, "ROW_GROUP_ROWS", 50)


def table(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, n)
    colour = rng.choice(["red", "green", "blue", "grey"], n)  # grey: out of vocabulary
    frame = pd.DataFrame({"x": x, "colour": colour, "y": 2 * x + 1 + rng.normal(0, 0.1, n)})
    return frame.set_axis(pd.Index(np.arange(n) * 7 + 3, name="row_id"))


def test_split_files_are_written_in_row_groups_that_read_back_as_the_frame(tmp_path, small_groups):
    frame = table(420)
    data_module.write_frame(frame, tmp_path / "t.parquet")
    assert pq.ParquetFile(tmp_path / "t.parquet").num_row_groups == 9
    x, y = streaming.read_encoded(tmp_path / "t.parquet", SCHEMA)
    expected_x, expected_y = features_and_target(frame, SCHEMA)
    np.testing.assert_array_equal(x, expected_x)
    np.testing.assert_array_equal(y, expected_y)
    assert streaming.parquet_rows(tmp_path / "t.parquet") == 420
    pd.testing.assert_frame_equal(streaming.head(tmp_path / "t.parquet", 5), frame.head(5))


def test_streamed_statistics_equal_those_of_the_whole_table(tmp_path, small_groups):
    frame = table(1000)
    frame["x"] = frame["x"] * 1e4 + 1e6  # far from zero: a naive sum of squares loses the variance
    data_module.write_frame(frame, tmp_path / "t.parquet")
    x_stats, y_stats = streaming.streamed_stats(tmp_path / "t.parquet", SCHEMA)
    x, y = features_and_target(frame, SCHEMA)
    for streamed, whole in ((x_stats, ColumnStats.of(x)), (y_stats, ColumnStats.of(y))):
        np.testing.assert_allclose(streamed.mean, whole.mean, rtol=1e-12)
        np.testing.assert_allclose(streamed.std, whole.std, rtol=1e-9)


def test_every_pass_visits_every_row_once_in_a_new_seeded_order(tmp_path, small_groups):
    frame = table(430)
    data_module.write_frame(frame, tmp_path / "t.parquet")
    stream = streaming.stream(tmp_path / "t.parquet", SCHEMA, seed=3)

    def passes(n_passes: int) -> list[np.ndarray]:
        iterator, out = iter(stream.batches(32)), []
        for _ in range(n_passes):
            rows: list[np.ndarray] = []
            while sum(len(r) for r in rows) < stream.n_rows:
                xb, yb = next(iterator)
                assert xb.shape[0] <= 32
                rows.append(np.hstack([xb.numpy(), yb.numpy()]))
            out.append(np.vstack(rows))
        return out

    first, second = passes(2)
    whole = np.hstack(features_and_target(frame, SCHEMA))
    for seen in (first, second):
        assert len(seen) == 430
        np.testing.assert_array_equal(np.unique(seen, axis=0), np.unique(whole, axis=0))
    assert not np.array_equal(first, second)
    assert not np.array_equal(first, whole)  # shuffled, not the file's order
    np.testing.assert_array_equal(passes(1)[0], first)  # same seed, same order


def test_a_streamed_fit_learns_as_well_as_one_in_memory(tmp_path, small_groups):
    schema = Schema(task="regression", target="y", features=["x"], class_labels=None)
    frame, val = table(600).drop(columns="colour"), table(200, seed=1).drop(columns="colour")
    data_module.write_frame(frame, tmp_path / "t.parquet")
    params = load_params(ROOT / "params.yaml")
    hp = params.train.hyperparams.model_copy(update={"learning_rate": 0.01})
    losses = {}
    for name, rows in (("memory", features_and_target(frame, schema)),
                       ("streamed", streaming.stream(tmp_path / "t.parquet", schema, seed=0))):
        seed_everything(0)
        stats = (rows.x_stats, rows.y_stats) if name == "streamed" else rows
        model = build_model(hp, 1, "regression", 1, *stats)
        history = fit(model, hp, rows, features_and_target(val, schema), epochs=40, patience=0, max_epoch_steps=10)
        x_val, y_val = features_and_target(val, schema)
        losses[name] = float(np.mean((predict(model, x_val) - y_val) ** 2))
        assert history.epochs_run == 40
    assert losses["streamed"] < 0.02  # noise variance 0.01
    assert losses["streamed"] < 1.5 * losses["memory"]


def test_the_train_stage_streams_above_the_threshold_and_logs_the_file(tmp_path, monkeypatch, small_groups):
    """The real stage, on the tutorial's line (1,000 points), on a real MLflow store: streamed, it says so, logs the
    training file as the run's dataset, and fits as well as with the rows in memory."""
    monkeypatch.chdir(tmp_path)
    raw = merge(yaml.safe_load((ROOT / "params.yaml").read_text()),
                {"data": {"n_samples": 1000}, "train": {"epochs": 60, "patience": 10, "min_epochs": 20}})
    ws = Workspace(tmp_path)
    results = {}
    for threshold in (None, 100):
        raw["train"]["stream_above_rows"] = threshold
        params = parse_params(raw)
        frame, schema = load(params.data)
        write_splits(split(frame, schema, params.split), ws.split_dir)
        pd.DataFrame({"x": [0.0]}).to_parquet(ws.raw)
        out = io.StringIO()
        with redirect_stdout(out):
            train.main(params, ws)
        model_run = train.find_run(params.tracking.experiment, ws.model)
        inputs = {i.tags[0].value: i.dataset for i in model_run.inputs.dataset_inputs}
        results[threshold] = (out.getvalue(), inputs, model_run.data.metrics)
    streamed_out, streamed_inputs, streamed_metrics = results[100]
    assert "train: streaming 600 training rows from" in streamed_out
    assert "streaming" not in results[None][0]
    assert streamed_inputs["training"].digest == file_sha256(ws.split_dir / "train.parquet")[:8]
    assert results[None][1]["validation"].name == streamed_inputs["validation"].name
    assert mlflow.get_run(model_run.info.run_id).data.tags["data_rows"] == "1000"
    assert streamed_metrics["epochs_run"] >= 20
    curve = pd.read_csv(ws.learning_curve)
    assert curve["val_loss"].iloc[-1] < 0.05  # standardised target: the line is learnt

