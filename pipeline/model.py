"""The one place that builds and fits the two-hidden-layer MLP (train, tune and the baselines use it).

`fit` runs each epoch as one compiled TensorFlow graph. On the tutorial's 100 points Keras'
`model.fit` spends nearly all its time in per-step and per-epoch Python overhead (~12 ms/step);
the maths here is the same (the Keras optimiser and loss, mini-batch steps in Keras' own row
order), only the overhead is gone: both give bit-identical weights. bench/train_speed.py measures
both side by side.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from pipeline.config import HyperParams  # noqa: E402


def seed_everything(seed: int) -> None:
    """Same seed, same weights, same shuffles, same floating-point results."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


# The tutorial's output layers and losses: linear + MSE, sigmoid + binary cross-entropy,
# softmax + categorical cross-entropy (on class indices).
OUTPUT_ACTIVATION = {"regression": None, "binary": "sigmoid", "multiclass": "softmax"}
LOSS = {"regression": keras.losses.MeanSquaredError, "binary": keras.losses.BinaryCrossentropy,
        "multiclass": keras.losses.SparseCategoricalCrossentropy}
PREDICT_ROWS = 65_536  # rows per inference call (predict): what TensorFlow's allocator keeps is bounded by this


@dataclass(frozen=True)
class CategoricalInput:
    """An input column that holds a category index: 1..n_categories, 0 = out-of-vocabulary (pipeline/categories.py)."""

    column: int
    n_categories: int
    embedding_dim: int = 0  # 0: one-hot encoded; else a learnt embedding this wide


def build_model(hp: HyperParams, n_features: int, task: str = "regression", n_outputs: int = 1,
                x_train: np.ndarray | ColumnStats | None = None, y_train: np.ndarray | ColumnStats | None = None,
                name: str = "mlp", categorical: tuple[CategoricalInput, ...] = ()) -> keras.Model:
    """[standardise] -> Dense(units_1, act) -> [Dropout] -> Dense(units_2, act) -> [Dropout] -> output.

    With `x_train` given, the first layer standardises the features with the training split's mean
    and standard deviation, so the exported model (and the service) take raw feature values. With
    `y_train` given (regression), the output is scaled back from a standardised target, so the
    network starts at the target's mean and scale whatever its units; and the loss is weighted by
    1 / variance of the target, i.e. it is the MSE of the standardised target. Without that weight
    the loss of a target in the thousands (diabetes) is ~10^4 times its standardised value, which
    makes the L1/L2 penalties ~10^4 times weaker than on a unit-scale target (in effect off) and
    SGD's steps ~10^4 times larger.

    With `categorical` columns, those columns are not standardised but one-hot encoded or embedded
    inside the network (`encode_category`), so the exported model takes category indices.

    `x_train` and `y_train` may be given as their `ColumnStats` instead: a streamed table's, read in one pass.
    """
    regularizer = keras.regularizers.L1L2(l1=hp.l1, l2=hp.l2) if hp.l1 or hp.l2 else None
    layers: list[keras.layers.Layer] = [keras.Input(shape=(n_features,), name="features")]
    if x_train is not None and not categorical:
        layers.append(standardiser(column_stats(x_train)))
    for units in (hp.units_1, hp.units_2):
        layers.append(keras.layers.Dense(units, activation=hp.activation, kernel_regularizer=regularizer))
        if hp.dropout:
            layers.append(keras.layers.Dropout(hp.dropout))
    layers.append(keras.layers.Dense(n_outputs, activation=OUTPUT_ACTIVATION[task], name="prediction"))
    loss_weight = None
    if y_train is not None and task == "regression":
        target_scale = unstandardiser(column_stats(y_train))
        layers.append(target_scale)
        loss_weight = 1 / target_scale.scale[0] ** 2
    if categorical:
        model = _with_categories(layers, categorical, x_train, regularizer, name)
    else:
        model = keras.Sequential(layers, name=name)
    model.compile(optimizer=make_optimizer(hp), loss=LOSS[task](), loss_weights=loss_weight)
    return model


def _with_categories(layers: list, categorical: tuple[CategoricalInput, ...], x_train: np.ndarray | ColumnStats | None,
                     regularizer, name: str) -> keras.Model:
    """The network `layers` (input first) fed with the standardised numeric columns and the encoded categories."""
    features = layers[0]
    columns = {c.column for c in categorical}
    numeric = [i for i in range(features.shape[1]) if i not in columns]
    parts = []
    if numeric:
        values = keras.ops.take(features, numeric, axis=1)
        parts.append(standardiser(column_stats(x_train, numeric))(values) if x_train is not None else values)
    parts.extend(encode_category(features, c, regularizer) for c in categorical)
    hidden = keras.layers.Concatenate(name="inputs")(parts) if len(parts) > 1 else parts[0]
    for layer in layers[1:]:
        hidden = layer(hidden)
    return keras.Model(features, hidden, name=name)


def encode_category(features: keras.KerasTensor, c: CategoricalInput, regularizer) -> keras.KerasTensor:
    """Column `c.column`'s category index as a one-hot vector or a learnt embedding; index 0
    (out-of-vocabulary) encodes as zeros, so an unseen category adds nothing to the first layer.

    Both are an Embedding lookup (an ONNX Gather): the one-hot table is a fixed identity matrix with a
    zero row for index 0. Not CategoryEncoding or ops.one_hot: their constants become extra graph
    inputs in the ONNX export. An index outside 0..n (never sent by the service) is clipped into it.
    """
    column = features[:, c.column : c.column + 1]
    index = keras.ops.cast(keras.ops.clip(keras.ops.round(keras.ops.squeeze(column, 1)), 0, c.n_categories), "int32")
    if c.embedding_dim:
        table = keras.layers.Embedding(c.n_categories + 1, c.embedding_dim, embeddings_regularizer=regularizer,
                                       name=f"embed_{c.column}")
        return table(index) * keras.ops.cast(column >= 0.5, "float32")
    table = keras.layers.Embedding(c.n_categories + 1, c.n_categories, trainable=False, name=f"onehot_{c.column}")
    encoded = table(index)
    table.set_weights([np.vstack([np.zeros((1, c.n_categories)), np.eye(c.n_categories)])])
    return encoded


MEMBER_PREFIX = "member_"


def member_name(index: int) -> str:
    return f"{MEMBER_PREFIX}{index + 1}"


def average(members: list[keras.Model]) -> keras.Model:
    """A bag: one model whose output is the mean of its members' outputs (values or class
    probabilities). It saves, loads, registers and exports to ONNX like a single network."""
    features = keras.Input(shape=members[0].input_shape[1:], name="features")
    mean = keras.layers.Average(name="mean")([member(features) for member in members])
    return keras.Model(features, mean, name="bag")


def members_of(model: keras.Model) -> list[keras.Model]:
    """The networks of a bag, in fold order; a single network is its own one member."""
    members = [layer for layer in model.layers if layer.name.startswith(MEMBER_PREFIX)]
    return sorted(members, key=lambda m: int(m.name.removeprefix(MEMBER_PREFIX))) or [model]


def weighted_loss(model: keras.Model) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
    """The compiled loss times its `loss_weights`, as `model.fit` minimises and reports it."""
    weight = model.get_compile_config().get("loss_weights")
    if weight is None:
        return model.loss
    return lambda y_true, y_pred: model.loss(y_true, y_pred) * weight


@dataclass(frozen=True)
class ColumnStats:
    """Per-column mean and standard deviation (float64) of training values: what the scaling layers are built from."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def of(cls, values: np.ndarray) -> ColumnStats:
        return cls.of_moments(values.mean(axis=0, dtype=np.float64), values.std(axis=0, dtype=np.float64))

    @classmethod
    def of_moments(cls, mean: np.ndarray, std: np.ndarray) -> ColumnStats:
        std = np.array(std, dtype=np.float64)
        std[std == 0] = 1.0  # a constant column passes through shifted, not divided by zero
        return cls(np.asarray(mean, dtype=np.float64), std)

    def take(self, columns: list[int]) -> ColumnStats:
        return ColumnStats(self.mean[columns], self.std[columns])


def column_stats(values: np.ndarray | ColumnStats, columns: list[int] | None = None) -> ColumnStats:
    """The statistics of `values` (of its `columns` only, if given)."""
    if isinstance(values, ColumnStats):
        return values if columns is None else values.take(columns)
    return ColumnStats.of(values if columns is None else values[:, columns])


def standardiser(x_train: ColumnStats) -> keras.layers.Layer:
    """(x - mean) / std as a fixed affine layer.

    Not keras.layers.Normalization: its ONNX export (tf2onnx) turns the adapted mean and variance
    into extra graph inputs, and the exported model then cannot be run on features alone.
    """
    mean, std = x_train.mean, x_train.std
    return keras.layers.Rescaling(scale=(1 / std).tolist(), offset=(-mean / std).tolist(), name="standardise")


def unstandardiser(y_train: ColumnStats) -> keras.layers.Layer:
    """z * std + mean: the network predicts a standardised target, the model answers in its units."""
    return keras.layers.Rescaling(scale=y_train.std.tolist(), offset=y_train.mean.tolist(), name="target_scale")


def make_optimizer(hp: HyperParams) -> keras.optimizers.Optimizer:
    if hp.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate=hp.learning_rate)
    return keras.optimizers.SGD(learning_rate=hp.learning_rate)


@dataclass
class History:
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    best_epoch: int | None = None  # 1-based epoch whose weights the model holds

    @property
    def epochs_run(self) -> int:
        return len(self.train_loss)


@dataclass(frozen=True)
class BatchStream:
    """Training rows not held in memory (pipeline/streaming.py): `batches(batch_size)` is an endless tf.data
    pipeline of shuffled (inputs, targets) mini-batches over `n_rows` rows, whose column statistics are given."""

    n_rows: int
    batches: Callable[[int], tf.data.Dataset]
    x_stats: ColumnStats
    y_stats: ColumnStats


EpochCallback = Callable[[int, float, float | None], bool]
"""Called after each epoch with (epoch, train_loss, val_loss); returning True stops training."""


def fit(
    model: keras.Model,
    hp: HyperParams,
    train: tuple[np.ndarray, np.ndarray] | BatchStream,
    val: tuple[np.ndarray, np.ndarray] | None,
    *,
    epochs: int,
    patience: int,
    min_epochs: int = 0,
    max_epoch_steps: int | None = None,
    on_epoch: EpochCallback | None = None,
) -> History:
    """Mini-batch training in `model.fit`'s row order; early stopping restores the best weights.

    With `val` given and `patience` > 0, training stops after `patience` epochs without a lower
    validation loss and the model gets the weights of its best epoch back, but not before
    `min_epochs`: a network that sits on a plateau at first (SGD with sigmoid units can stay at the
    mean's loss for ~80 epochs) is then not stopped, and handed back, before it has started to
    learn. Unlike Keras' `start_from_epoch`, the early epochs still compete for "best": a fast
    optimiser whose best epoch is the 8th keeps it. The reported training
    loss of an epoch is the batch-size-weighted mean data loss over its batches, as Keras reports it
    (times the compiled loss weight; the regularisation penalty is optimised but not included).

    An epoch is one pass over the rows, or `max_epoch_steps` mini-batches if a pass has more: then
    each epoch takes the next slice of batches of the same row order (wrapping round), so a big
    table is still visited row by row, but patience, min_epochs and the validation checks count
    the same amount of work at any size. When a pass fits in the limit nothing changes.

    A `BatchStream` (a table left on disk) gives its mini-batches in its own shuffled order; an epoch
    is the same number of steps as for the same rows in memory.
    """
    streamed = isinstance(train, BatchStream)
    n_rows = train.n_rows if streamed else len(train[0])
    batch_size = min(hp.batch_size, n_rows)
    n_batches = math.ceil(n_rows / batch_size)
    epoch_steps = min(n_batches, max_epoch_steps or n_batches)
    loss_fn = weighted_loss(model)
    optimizer = model.optimizer
    variables = model.trainable_variables

    def train_step(xb: tf.Tensor, yb: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, model(xb, training=True))
            objective = loss + tf.add_n(model.losses) if model.losses else loss
        optimizer.apply_gradients(zip(tape.gradient(objective, variables), variables))
        return loss * tf.cast(tf.shape(xb)[0], tf.float32)

    def steps(next_batch: Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor]]) -> tf.Tensor:
        def body(step, total, rows):
            xb, yb = next_batch(step)
            return step + 1, total + train_step(xb, yb), rows + tf.shape(xb)[0]

        _, total, rows = tf.while_loop(lambda step, *_: step < epoch_steps, body,
                                       (tf.constant(0), tf.constant(0.0), tf.constant(0)))
        return total / tf.cast(rows, tf.float32)

    if streamed:
        batches = iter(train.batches(batch_size))

        @tf.function(autograph=False)
        def run_stream_epoch(iterator) -> tf.Tensor:
            return steps(lambda _: iterator.get_next())

        def run_epoch(epoch: int) -> tf.Tensor:
            return run_stream_epoch(batches)
    else:
        x_train, y_train = (tf.constant(a, dtype=tf.float32) for a in train)
        order = keras_row_order(n_rows)

        @tf.function(autograph=False)
        def run_memory_epoch(first: tf.Tensor) -> tf.Tensor:
            def next_batch(step):
                batch = (first + step) % n_batches
                indices = order[batch * batch_size : (batch + 1) * batch_size]
                return tf.gather(x_train, indices), tf.gather(y_train, indices)

            return steps(next_batch)

        def run_epoch(epoch: int) -> tf.Tensor:
            return run_memory_epoch(tf.constant((epoch - 1) * epoch_steps % n_batches))

    if val is not None:
        x_val, y_val = (tf.constant(a, dtype=tf.float32) for a in val)

        @tf.function
        def val_loss_of() -> tf.Tensor:
            return loss_fn(y_val, model(x_val, training=False))

    history = History()
    best_loss, best_weights, waited = math.inf, None, 0
    for epoch in range(1, epochs + 1):
        train_loss = float(run_epoch(epoch))
        val_loss = float(val_loss_of()) if val is not None else None
        history.train_loss.append(train_loss)
        if val_loss is not None:
            history.val_loss.append(val_loss)
        if on_epoch is not None and on_epoch(epoch, train_loss, val_loss):
            break
        if val_loss is None or not patience:
            continue
        if val_loss < best_loss:
            best_loss, best_weights, waited = val_loss, model.get_weights(), 0
            history.best_epoch = epoch
        else:
            waited += 1
            if waited >= patience and epoch >= min_epochs:
                break
    if best_weights is not None:
        model.set_weights(best_weights)
    else:
        history.best_epoch = history.epochs_run
    return history


def keras_row_order(n_rows: int) -> tf.Tensor:
    """The order in which `model.fit` visits the rows in every epoch.

    Keras (TensorFlow backend) shuffles with this tf.data graph and opens a new iterator per epoch.
    Under a global seed the shuffle's op seed is fixed, so every epoch repeats the first epoch's
    order. Drawing it once the same way (not reshuffling with another generator, and not paying for
    an iterator per epoch) keeps the fast loop a bit-for-bit stand-in for `model.fit`;
    tests/pipeline/test_model.py checks that.
    """

    def permutation(_):
        return tf.random.shuffle(tf.range(n_rows, dtype=tf.int64))

    return tf.cast(next(iter(tf.data.Dataset.range(1).map(permutation))), tf.int32)


def in_chunks(predictor: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    """`predictor` applied PREDICT_ROWS rows at a time: a call on a million rows would hold its intermediate arrays
    (a network's activations, a baseline's one-hot encoding) for all of them at once. No rows: one call on none."""
    return lambda x: np.concatenate([predictor(x[start : start + PREDICT_ROWS])
                                     for start in range(0, max(len(x), 1), PREDICT_ROWS)])


def predict(model: keras.Model, x: np.ndarray) -> np.ndarray:
    """Direct inference (Keras' predict() adds ~70 ms of per-call overhead on tiny data), in chunks (in_chunks)."""
    return in_chunks(lambda rows: np.asarray(model(tf.constant(rows, dtype=tf.float32), training=False)))(x)


def _renumber_shared_objects(node, numbers: dict[int, int]):
    if isinstance(node, dict):
        return {key: numbers.setdefault(value, len(numbers) + 1) if key == "shared_object_id"
                else _renumber_shared_objects(value, numbers) for key, value in node.items()}
    if isinstance(node, list):
        return [_renumber_shared_objects(item, numbers) for item in node]
    return node


def save_model(model: keras.Model, path: Path) -> None:
    """Save a .keras archive whose bytes depend only on the model.

    Keras stamps the save time into metadata.json and the weights' zip entry, and numbers shared
    objects in config.json by their memory address, so the same weights saved twice differ: DVC
    would record a changed output for every identical re-run, and a fresh clone's `dvc repro`
    could never reproduce the committed dvc.lock. Shared objects are renumbered in order of first
    appearance, which keeps which config entries share an object.
    """
    model.save(path)
    with zipfile.ZipFile(path) as archive:
        entries = [(info, archive.read(info)) for info in archive.infolist()]
    with zipfile.ZipFile(path, "w") as archive:
        for info, data in entries:
            if info.filename == "metadata.json":
                metadata = json.loads(data)
                metadata.pop("date_saved", None)
                data = json.dumps(metadata).encode()
            elif info.filename == "config.json":
                data = json.dumps(_renumber_shared_objects(json.loads(data), {})).encode()
            fixed = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
            fixed.compress_type, fixed.external_attr = info.compress_type, 0o644 << 16
            archive.writestr(fixed, data)
