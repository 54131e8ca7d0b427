"""params.yaml validation: one line naming the key and what is allowed; nothing written on failure."""

from __future__ import annotations

import difflib
import subprocess
import sys

import pytest
import yaml

from pipeline.config import ConfigError, Params, load_params, parse_params
from tests.conftest import ROOT


def default_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_committed_params_are_valid_and_match_the_tutorial():
    params = load_params(ROOT / "params.yaml")
    assert isinstance(params, Params)
    assert (params.data.n_samples, params.data.noise, params.data.slope, params.data.intercept) == (100, 0.1, 2.0, 1.0)
    assert (params.data.x_min, params.data.x_max) == (-1.0, 1.0)


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("data", "noize", 0.1, ["data.noize", "unknown key", "noise"]),
        ("data", "noise", -0.1, ["data.noise", "greater than or equal to 0"]),
        ("data", "n_samples", "many", ["data.n_samples", "valid integer", "'many'"]),
        ("split", "train", 0.7, ["split.train + split.val + split.test must sum to 1", "1.1"]),
        ("hyperparams", "units_1", 0, ["train.hyperparams.units_1", "greater than or equal to 1"]),
        ("hyperparams", "optimizer", "rmsprop", ["train.hyperparams.optimizer", "'rmsprop'", "'sgd' or 'adam'"]),
        ("hyperparams", "dropout", 1.0, ["train.hyperparams.dropout", "less than 1"]),
        ("data", "x_max", -2.0, ["data.x_min", "must be below data.x_max"]),
        ("tune", "select", "1se", ["tune.select", "'1se'", "'best' or 'one_se'"]),
        ("tune", "select", "one_se", ["tune.select: one_se", "needs split.folds >= 2 (got 1)"]),
        ("train", "epochs", 50, ["train.epochs (50) must be at least train.min_epochs (100)"]),
        ("tune", "sample_rows", 10, ["tune.sample_rows", "greater than or equal to 100", "(got 10)"]),
        ("tune", "sample_rows", "all", ["tune.sample_rows", "valid integer", "'all'"]),
        ("tune", "sample_rows", 2.5e4, ["tune.sample_rows", "valid integer"]),
        ("tune", "timeout_minutes", 0, ["tune.timeout_minutes", "greater than 0", "(got 0)"]),
        ("tune", "timeout_minutes", float("nan"), ["tune.timeout_minutes", "finite number"]),
        ("tune", "timeout_minutes", "5m", ["tune.timeout_minutes", "valid number", "'5m'"]),
        ("train", "max_epoch_steps", 0, ["train.max_epoch_steps", "greater than or equal to 1", "(got 0)"]),
        ("train", "max_epoch_steps", True, ["train.max_epoch_steps", "valid integer"]),
    ],
)
def test_bad_value_names_the_key_and_what_is_allowed(section, key, value, expected):
    raw = default_params()
    target = raw["train"]["hyperparams"] if section == "hyperparams" else raw[section]
    target[key] = value
    with pytest.raises(ConfigError) as info:
        parse_params(raw)
    message = str(info.value)
    assert "\n" not in message
    for fragment in expected:
        assert fragment in message


def test_budget_params_take_numbers_or_null():
    raw = default_params()
    raw["tune"].update(sample_rows=None, timeout_minutes=2.5)
    raw["train"]["max_epoch_steps"] = None
    params = parse_params(raw)
    assert (params.tune.sample_rows, params.tune.timeout_minutes, params.train.max_epoch_steps) == (None, 2.5, None)
    defaults = load_params(ROOT / "params.yaml")
    assert (defaults.tune.sample_rows, defaults.tune.timeout_minutes, defaults.train.max_epoch_steps) == (10000, None, 200)


def test_missing_section_is_named():
    raw = default_params()
    del raw["evaluate"]
    with pytest.raises(ConfigError, match=r"^evaluate: required key is missing$"):
        parse_params(raw)


def test_params_are_immutable():
    params = load_params(ROOT / "params.yaml")
    with pytest.raises(Exception):
        params.data.noise = 1.0  # type: ignore[misc]


@pytest.mark.parametrize("stage", ["generate", "train"])
def test_cli_stops_with_one_line_and_writes_nothing(tmp_path, stage):
    raw = default_params()
    raw["train"]["hyperparams"]["optimizer"] = "rmsprop"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    result = subprocess.run([sys.executable, "-m", "pipeline", stage], cwd=tmp_path, capture_output=True,
                            text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "train.hyperparams.optimizer" in result.stderr and "'sgd' or 'adam'" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


@pytest.mark.parametrize("override, changed", [
    ("train.epochs=50", "  epochs: 50\n"),
    ("split.folds=5", "  folds: 5            # 1: fit on train, early-stop on val. k >= 2: train + val are pooled and cut into k folds\n"),
    ("tune.space.l2.high=0.1", "    l2: {low: 1.0e-6, high: 0.1, log: true}\n"),
])
def test_dvc_exp_run_set_rewrites_only_the_line_it_sets(tmp_path, override, changed):
    """`dvc exp run -S` round-trips params.yaml through ruamel; anything it would restyle shows up
    in the user's `git diff` as a change they did not make."""
    from dvc.utils.hydra import apply_overrides

    copy = tmp_path / "params.yaml"
    original = (ROOT / "params.yaml").read_text()
    copy.write_text(original)
    apply_overrides(copy, [override])
    removed = [line for line in difflib.ndiff(original.splitlines(True), copy.read_text().splitlines(True))
               if line.startswith(("- ", "+ "))]
    assert [line for line in removed if line.startswith("+ ")] == [f"+ {changed}"], "".join(removed)
    assert len(removed) == 2, "".join(removed)
