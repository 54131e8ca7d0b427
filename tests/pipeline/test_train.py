"""split.folds > 1: a bag of k networks on folds of train + val, its learning curve, its out-of-fold
calibration, and tune scoring a trial on the same k networks (real Keras, real Optuna trial)."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
import yaml

from pipeline.config import parse_params
from pipeline.data import development_folds, development_rows, load, split
from pipeline.evaluate import calibration_residuals, interval_calibration, sklearn_baselines
from pipeline.model import members_of, predict
from pipeline.train import learning_curve, train
from pipeline.tune import make_objective, smoothed_best
from tests.conftest import ROOT, TINY, merge

pytestmark = pytest.mark.slow

FOLDS = {"split": {"folds": 3}, "train": {"epochs": 40, "patience": 5, "min_epochs": 0},
         "tune": {"epochs": 40, "patience": 5}}


def setup(override: dict):
    raw = merge(merge(merge(yaml.safe_load((ROOT / "params.yaml").read_text()), TINY), FOLDS), override)
    params = parse_params(raw)
    frame, schema = load(params.data)
    return params, split(frame, schema, params.split)


def test_a_bag_of_k_networks_with_out_of_fold_calibration():
    params, splits = setup({})
    hp = params.train.hyperparams
    model, histories = train(splits, hp, params)
    members = members_of(model)
    assert [m.name for m in members] == ["member_1", "member_2", "member_3"] and len(histories) == 3
    x_test = splits.test[["x"]].to_numpy(np.float32)
    np.testing.assert_allclose(predict(model, x_test), np.mean([predict(m, x_test) for m in members], axis=0),
                               atol=1e-6)

    curve = learning_curve(histories)
    assert len(curve) == max(h.epochs_run for h in histories)
    first = histories[0]
    assert curve["val_loss_1"].iloc[: first.epochs_run].tolist() == pytest.approx(first.val_loss)
    expected_mean = np.nanmean(curve[["val_loss_1", "val_loss_2", "val_loss_3"]].to_numpy(), axis=1)
    np.testing.assert_allclose(curve["val_loss"], expected_mean)

    # each member is judged on the fold it was early-stopped on, never on rows it learnt from
    residuals = calibration_residuals(model, splits, params.split.seed)
    folds = development_folds(splits, 3, params.split.seed)
    by_hand = np.concatenate([np.abs(f.val[1][:, 0] - predict(m, f.val[0])[:, 0]) for m, f in zip(members, folds)])
    assert len(residuals) == len(splits.train) + len(splits.val)
    np.testing.assert_allclose(residuals, np.sort(by_hand), atol=1e-6)
    assert interval_calibration(model) == ("cross-conformal", "out-of-fold (3 folds of train + val)")


def test_a_trial_scores_the_networks_the_train_stage_then_builds():
    """The tuned trial's value is the mean smoothed validation loss of exactly the networks that
    train fits from the winning values: same folds, same seeds."""
    params, splits = setup({"data": {"synthetic": "classification", "n_samples": 150}})
    hp = params.train.hyperparams.model_copy(update={"activation": "tanh", "learning_rate": 0.01})
    fixed = optuna.trial.FixedTrial({"learning_rate": hp.learning_rate, "batch_size": hp.batch_size,
                                     "units_1": hp.units_1, "units_2": hp.units_2, "optimizer": hp.optimizer,
                                     "activation": hp.activation, "l2": hp.l2})
    space = params.tune.space.model_copy(update={"l2": params.tune.space.l2.model_copy(update={"low": 0.0, "high": 0.0, "log": False})})
    params = params.model_copy(update={"tune": params.tune.model_copy(update={"space": space})})
    trial_value = make_objective(splits, params)(fixed)
    _, histories = train(splits, hp, params)
    assert trial_value == pytest.approx(np.mean([smoothed_best(h.val_loss) for h in histories]), rel=1e-6)
    assert fixed.user_attrs["epochs_run"] == sum(h.epochs_run for h in histories)


def test_baselines_learn_from_the_rows_the_bag_learnt_from():
    params, splits = setup({"data": {"synthetic": "classification", "n_samples": 150}})
    x_val = splits.val[splits.schema.features].to_numpy(np.float32)
    on_train = sklearn_baselines(development_rows(splits, 1), splits.schema)["baseline_logistic"](x_val)
    on_development = sklearn_baselines(development_rows(splits, 3), splits.schema)["baseline_logistic"](x_val)
    assert not np.allclose(on_train, on_development)  # the validation rows changed the fit
