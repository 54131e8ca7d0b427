"""The evaluate stage's one-line account of the registry's decision."""

from __future__ import annotations

from pipeline.registry import outcome_line

BASE = {"registered_model": "keras-mlp", "version": "5", "metric": "rmse", "test_value": 0.0843}


def test_a_kept_champion_is_named_with_both_figures():
    line = outcome_line({**BASE, "promoted": False, "champion_version": "3",
                         "previous_champion": {"version": "3", "test_value_rescored": 0.0808}})
    assert line.startswith("registered keras-mlp v5: kept champion v3, which package ships;")
    assert "test rmse 0.0843 against champion v3's 0.0808 on the same test set (lower is better)" in line


def test_a_promotion_over_a_champion_shows_the_comparison():
    line = outcome_line({**BASE, "promoted": True, "champion_version": "5",
                         "previous_champion": {"version": "3", "test_value_rescored": 0.09}})
    assert line == ("registered keras-mlp v5: the new champion, test rmse 0.0843 against champion v3's 0.09"
                    " on the same test set")


def test_first_and_incompatible_champions_are_explained():
    first = outcome_line({**BASE, "promoted": True, "champion_version": "5", "previous_champion": None})
    assert first == "registered keras-mlp v5: the first champion"
    other = outcome_line({**BASE, "promoted": True, "champion_version": "5",
                          "previous_champion": {"version": "4", "test_value_rescored": None}})
    assert "the new champion" in other and "champion v4 was trained for another task or other features" in other
