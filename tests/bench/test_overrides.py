"""The benches' `--set KEY=VALUE` overrides of params.yaml."""

import pytest

from bench.common import default_params
from pipeline.config import parse_params


def test_an_override_replaces_one_nested_value_parsed_as_yaml():
    raw = default_params(["tune.space.l2.high=0.5", "split.folds=5", "tune.space.activation=[relu, tanh]",
                          "tune.space.learning_rate.low=1e-4", "data.sklearn.name=diabetes"])
    params = parse_params(raw)
    assert params.tune.space.l2.high == 0.5
    assert params.tune.space.learning_rate.low == 1e-4
    assert params.data.sklearn.name == "diabetes"
    assert params.split.folds == 5
    assert params.tune.space.activation == ["relu", "tanh"]
    assert params.tune.space.l2.low == default_params()["tune"]["space"]["l2"]["low"]


@pytest.mark.parametrize("override, message", [
    ("tune.space.l2.hgh=0.1", "KEY one of params.yaml's keys"),
    ("tune.spac.l2.high=0.1", "no section 'spac'"),
    ("tune.patience", "expected KEY=VALUE"),
])
def test_a_mistyped_override_stops_with_the_override_named(override, message):
    with pytest.raises(SystemExit, match=message) as stopped:
        default_params([override])
    assert override in str(stopped.value)
