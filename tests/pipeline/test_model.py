"""The model builder and the fast fit loop (real Keras)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from pipeline.config import HyperParams
from pipeline.evaluate import interval_calibration
from pipeline.model import build_model, fit, predict, save_model, seed_everything

HP = HyperParams(units_1=10, units_2=5, activation="relu", dropout=0.0, l1=0.0, l2=0.0, optimizer="adam",
                 learning_rate=0.01, batch_size=16)


def line_data(n=80, seed=0):
    rng = np.random.default_rng(seed)
    x = np.linspace(-1, 1, n, dtype=np.float32).reshape(-1, 1)
    return x, (2 * x + 1 + rng.normal(0, 0.1, x.shape)).astype(np.float32)


def test_architecture_follows_hyperparams():
    hp = HP.model_copy(update={"units_1": 7, "units_2": 3, "activation": "tanh", "dropout": 0.2, "l2": 0.01})
    model = build_model(hp, n_features=2)
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    assert [layer.units for layer in dense] == [7, 3, 1]
    assert [layer.activation.__name__ for layer in dense] == ["tanh", "tanh", "linear"]
    assert sum(isinstance(layer, keras.layers.Dropout) for layer in model.layers) == 2
    assert dense[0].kernel_regularizer is not None and dense[2].kernel_regularizer is None
    assert model.input_shape == (None, 2)
    assert isinstance(model.optimizer, keras.optimizers.Adam)
    assert isinstance(build_model(HP.model_copy(update={"optimizer": "sgd"}), 1).optimizer, keras.optimizers.SGD)


def test_fit_learns_the_line():
    seed_everything(0)
    x, y = line_data()
    model = build_model(HP, 1)
    history = fit(model, HP, (x, y), None, epochs=150, patience=0)
    assert history.epochs_run == 150 and history.train_loss[-1] < history.train_loss[0] / 20
    assert float(np.sqrt(np.mean((predict(model, x) - y) ** 2))) < 0.2


def test_early_stopping_restores_the_best_weights():
    seed_everything(1)
    x, y = line_data()
    xv, yv = line_data(20, seed=9)
    model = build_model(HP.model_copy(update={"learning_rate": 0.05}), 1)
    history = fit(model, HP, (x, y), (xv, yv), epochs=400, patience=10)
    assert history.epochs_run < 400
    assert history.best_epoch == int(np.argmin(history.val_loss)) + 1
    restored = float(np.mean((predict(model, xv) - yv) ** 2))
    assert restored == pytest.approx(min(history.val_loss), rel=1e-5)


def test_early_stopping_waits_for_min_epochs_and_keeps_the_best_of_all():
    """Validation on the mirrored line gets worse as the model learns the line, so the best epoch
    is an early one: without min_epochs the run stops `patience` epochs after it; with min_epochs
    it runs on to min_epochs and still hands back that early epoch."""
    x, y = line_data()
    mirrored = (x, -y)

    def run(min_epochs):
        seed_everything(2)
        model = build_model(HP.model_copy(update={"learning_rate": 0.05}), 1)
        history = fit(model, HP, (x, y), mirrored, epochs=200, patience=5, min_epochs=min_epochs)
        return model, history

    _, early = run(0)
    assert early.best_epoch < 5 and early.epochs_run == early.best_epoch + 5
    model, late = run(40)
    assert late.epochs_run == 40 and late.best_epoch == early.best_epoch
    assert late.val_loss[:early.epochs_run] == early.val_loss
    restored = float(np.mean((predict(model, mirrored[0]) - mirrored[1]) ** 2))
    assert restored == pytest.approx(min(late.val_loss), rel=1e-5)


def test_same_seed_gives_identical_weights():
    x, y = line_data()

    def weights(seed):
        seed_everything(seed)
        model = build_model(HP.model_copy(update={"dropout": 0.1}), 1)
        fit(model, HP, (x, y), None, epochs=20, patience=0)
        return model.get_weights()

    first, second, other = weights(5), weights(5), weights(6)
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))


def test_on_epoch_callback_can_stop_training():
    x, y = line_data()
    seen = []
    fit(build_model(HP, 1), HP, (x, y), (x, y), epochs=50, patience=0,
        on_epoch=lambda epoch, train_loss, val_loss: seen.append((epoch, val_loss)) or epoch == 4)
    assert [epoch for epoch, _ in seen] == [1, 2, 3, 4] and all(v is not None for _, v in seen)


def test_fit_is_keras_fit_without_the_overhead():
    """Same seed, default shuffling: the fast loop and Keras' model.fit give bit-identical weights.

    100 rows at batch 16 leave a partial last batch, so the row order and batch slicing must match too.
    """
    x, y = line_data(100)
    seed_everything(3)
    ours = build_model(HP, 1)
    fit(ours, HP, (x, y), None, epochs=15, patience=0)
    seed_everything(3)
    reference = build_model(HP, 1)
    reference.fit(x, y, epochs=15, batch_size=HP.batch_size, verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(ours.get_weights(), reference.get_weights()))


def test_fit_matches_keras_fit_with_a_standardised_target_and_l2():
    """The loss weight (1 / target variance) and the L2 penalty enter both loops the same way."""
    x, y = line_data(100)
    y = y * 1000
    hp = HP.model_copy(update={"l2": 0.01})
    seed_everything(3)
    ours = build_model(hp, 1, x_train=x, y_train=y)
    fit(ours, hp, (x, y), None, epochs=15, patience=0)
    seed_everything(3)
    reference = build_model(hp, 1, x_train=x, y_train=y)
    reference.fit(x, y, epochs=15, batch_size=hp.batch_size, verbose=0)
    for a, b in zip(ours.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_training_does_not_depend_on_the_targets_units(optimizer):
    """Same data in other units (x 1000): the same fit, scaled. Before the loss was weighted by the
    target's variance, a target in the thousands made L2 ~10^6 times weaker and SGD diverge."""
    x, y = line_data()
    hp = HP.model_copy(update={"l2": 0.01, "optimizer": optimizer})

    def fitted(target):
        seed_everything(0)
        model = build_model(hp, 1, x_train=x, y_train=target)
        history = fit(model, hp, (x, target), None, epochs=60, patience=0)
        return predict(model, x), history.train_loss

    unit_pred, unit_loss = fitted(y)
    kilo_pred, kilo_loss = fitted(y * 1000)
    assert np.all(np.isfinite(kilo_pred))
    np.testing.assert_allclose(kilo_pred / 1000, unit_pred, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(kilo_loss, unit_loss, rtol=1e-3)


def test_a_bag_averages_its_members_and_saves_loads_and_exports_as_one_model(tmp_path):
    import onnxruntime as ort

    from pipeline.model import average, member_name, members_of

    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 3)).astype(np.float32)
    y = rng.integers(0, 3, size=(30, 1)).astype(np.float32)
    members = []
    for index in range(3):
        seed_everything(index)
        members.append(build_model(HP, 3, "multiclass", 3, x, y, name=member_name(index)))
    bag = average(members)
    expected = np.mean([predict(member, x) for member in members], axis=0)
    np.testing.assert_allclose(predict(bag, x), expected, atol=1e-6)
    assert np.ptp([predict(member, x) for member in members], axis=0).max() > 1e-3  # the members differ

    save_model(bag, tmp_path / "bag.keras")
    loaded = keras.saving.load_model(tmp_path / "bag.keras", safe_mode=True)
    np.testing.assert_allclose(predict(loaded, x), expected, atol=1e-6)
    assert [m.name for m in members_of(loaded)] == ["member_1", "member_2", "member_3"]
    np.testing.assert_allclose(predict(members_of(loaded)[1], x), predict(members[1], x), atol=1e-6)
    single = build_model(HP, 3)
    assert members_of(single) == [single]
    assert interval_calibration(single) == ("split-conformal", "validation")
    assert interval_calibration(loaded) == ("cross-conformal", "out-of-fold (3 folds of train + val)")

    loaded.export(str(tmp_path / "bag.onnx"), format="onnx", verbose=False)
    session = ort.InferenceSession(str(tmp_path / "bag.onnx"), providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {session.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(onnx_out, expected, atol=1e-5)


def test_a_saved_model_s_bytes_depend_only_on_the_model(tmp_path):
    """Two equal models, built as separate objects and saved at different times: equal files
    (DVC sees no change on an identical re-run), which load back to the same predictions."""
    hp = HP.model_copy(update={"l2": 0.01})  # a regularizer: config.json then numbers shared objects
    paths = []
    for index in range(2):
        keras.backend.clear_session()  # layer names count up within a process; each stage is a fresh one
        seed_everything(3)
        model = build_model(hp, 2)
        paths.append(tmp_path / f"model_{index}.keras")
        save_model(model, paths[-1])
    assert paths[0].read_bytes() == paths[1].read_bytes()
    x = np.linspace(-1, 1, 10, dtype=np.float32).reshape(-1, 2)
    loaded = keras.saving.load_model(paths[0], safe_mode=True)
    np.testing.assert_array_equal(predict(loaded, x), predict(model, x))


def test_a_step_budget_is_a_no_op_within_a_pass_and_slices_the_passes_beyond_it():
    """train.max_epoch_steps: 100 rows at batch 16 are 7 steps a pass. A budget of 7 or more changes nothing; a budget
    of 3 makes 7 epochs of 3 steps, which are the same 21 steps, in the same order, as 3 full passes."""
    x, y = line_data(100)

    def fitted(**kwargs):
        seed_everything(3)
        model = build_model(HP, 1)
        history = fit(model, HP, (x, y), None, patience=0, **kwargs)
        return model.get_weights(), history

    reference, passes = fitted(epochs=3)
    unchanged, same = fitted(epochs=3, max_epoch_steps=7)
    sliced, slices = fitted(epochs=7, max_epoch_steps=3)
    assert all(np.array_equal(a, b) for a, b in zip(reference, unchanged)) and same.train_loss == passes.train_loss
    assert all(np.array_equal(a, b) for a, b in zip(reference, sliced))
    assert slices.epochs_run == 7 and slices.train_loss[0] != passes.train_loss[0]  # the mean over 48 rows, not 100


def test_predictions_in_chunks_are_the_whole_array_s(monkeypatch):
    """predict and the baselines (through in_chunks) call the model PREDICT_ROWS rows at a time; the rows come back
    whole, in order, with the values of one call on all of them."""
    from pipeline import model as model_module

    seed_everything(0)
    net = build_model(HP, 3, task="multiclass", n_outputs=4)
    x = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    whole = np.asarray(net(x, training=False))
    monkeypatch.setattr(model_module, "PREDICT_ROWS", 7)
    np.testing.assert_allclose(predict(net, x), whole, rtol=1e-6, atol=1e-7)
    calls = []
    chunked = model_module.in_chunks(lambda rows: calls.append(len(rows)) or rows.sum(axis=1))
    np.testing.assert_array_equal(chunked(x), x.sum(axis=1))
    assert calls == [7] * 7 + [1]
    assert predict(net, x[:0]).shape == (0, 4)
