"""The benches' `--set KEY=VALUE` overrides of params.yaml."""

import argparse

import pytest

from bench.common import add_params_options, bench_params, default_params
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


def bench_command_line(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_params_options(parser)
    return parser.parse_args(argv)


@pytest.mark.parametrize("argv, folds", [
    ((), default_params()["split"]["folds"]),
    (("--set", "split.folds=5"), 5),
    (("--folds", "3"), 3),
])
def test_folds_come_from_params_yaml_set_or_the_folds_shorthand(argv, folds):
    assert bench_params(bench_command_line(*argv), {})["split"]["folds"] == folds


@pytest.mark.parametrize("override", ["split.seed=3", "data.sklearn.name=wine"])
def test_a_key_the_bench_sets_on_every_run_is_refused(override):
    owned = {"split.seed": "--split-seeds", "data.sklearn": "the data set's own"}
    with pytest.raises(SystemExit, match="the bench sets .* on every run") as stopped:
        bench_params(bench_command_line("--set", override), owned)
    assert override in str(stopped.value)


def test_the_tables_profile_is_the_one_the_readme_tells_users_to_run():
    from bench.common import ROOT, TABLES_PROFILE

    commands = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("dvc exp run -S")]
    profile_runs = [line.split() for line in commands if "tune.select=one_se" in line]
    assert len(profile_runs) == 1, commands
    assert [word for word in profile_runs[0] if "=" in word] == TABLES_PROFILE
    params = parse_params(bench_params(bench_command_line(), {}, TABLES_PROFILE))
    assert (params.split.folds, params.tune.select, params.tune.space.l2.low) == (5, "one_se", 1e-4)


def test_a_profile_the_command_line_makes_invalid_stops_before_any_run():
    from bench.common import TABLES_PROFILE

    with pytest.raises(SystemExit, match=r"split\.folds=1: tune\.select: one_se .* needs split\.folds >= 2"):
        bench_params(bench_command_line("--folds", "1"), {}, TABLES_PROFILE)
