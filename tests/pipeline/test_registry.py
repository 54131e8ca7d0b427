"""The registry's fair-comparison rule and its one-line account, on a real (SQLite) MLflow store."""

from __future__ import annotations

from types import SimpleNamespace

import mlflow
import numpy as np
import pytest

from pipeline.registry import SPLIT_FINGERPRINT_TAG, FairRows, fair_rows, log_development_rows, outcome_line

BASE = {"registered_model": "keras-mlp", "version": "5", "metric": "rmse", "test_value": 0.0843}
COMPATIBLE = {"task": "regression", "features": "x"}
TEST_IDS = np.arange(100, 140, dtype=np.uint64)  # 40 test rows


@pytest.fixture(scope="module")
def champion_with_rows(tmp_path_factory):
    """A champion version whose run recorded `development_ids` (as evaluate logs them); one store
    for the module (creating an MLflow database costs seconds)."""
    store = tmp_path_factory.mktemp("mlflow")
    mlflow.set_tracking_uri(f"sqlite:///{store / 'mlflow.db'}")
    experiment = mlflow.create_experiment("t", artifact_location=(store / "artifacts").as_uri())

    def make(development_ids: np.ndarray | None, fingerprint: str = "old", **tags: str):
        run = mlflow.MlflowClient().create_run(experiment)
        if development_ids is not None:
            log_development_rows(run.info.run_id, development_ids)
        return SimpleNamespace(version="3", run_id=run.info.run_id,
                               tags={**COMPATIBLE, SPLIT_FINGERPRINT_TAG: fingerprint, **tags})

    yield make
    mlflow.set_tracking_uri(None)


def test_the_first_model_and_another_task_have_no_comparison(champion_with_rows):
    assert fair_rows(None, COMPATIBLE, "new", TEST_IDS, 20).rows is None
    other = fair_rows(champion_with_rows(np.arange(10), task="binary"), COMPATIBLE, "new", TEST_IDS, 20)
    assert other.rows is None and "another task or other features" in other.reason


def test_the_same_split_compares_on_the_whole_test_set(champion_with_rows):
    fair = fair_rows(champion_with_rows(np.arange(100), fingerprint="same"), COMPATIBLE, "same", TEST_IDS, 20)
    assert fair.rows.all() and len(fair.rows) == 40 and fair.reason == "same data and split"


def test_another_split_compares_only_on_rows_the_champion_never_saw(champion_with_rows):
    seen = np.concatenate([np.arange(100), TEST_IDS[:15]])  # 15 of the new test rows were its training rows
    fair = fair_rows(champion_with_rows(seen), COMPATIBLE, "new", TEST_IDS, 20)
    assert fair.rows.tolist() == [False] * 15 + [True] * 25
    assert fair.reason == "another split: compared on the 25 of 40 test rows champion v3 never saw"


def test_too_few_unseen_rows_means_no_fair_comparison(champion_with_rows):
    seen = np.concatenate([np.arange(100), TEST_IDS[:30]])
    fair = fair_rows(champion_with_rows(seen), COMPATIBLE, "new", TEST_IDS, 20)
    assert fair.rows is None
    assert fair.reason == ("champion v3 learnt from or was selected on 30 of these 40 test rows; the 10 it never "
                           "saw are too few to compare on (evaluate.min_fair_rows: 20)")


def test_a_champion_without_recorded_rows_cannot_be_compared(champion_with_rows):
    fair = fair_rows(champion_with_rows(None), COMPATIBLE, "new", TEST_IDS, 20)
    assert fair.rows is None and "records no training rows" in fair.reason


def test_a_kept_champion_is_named_with_both_figures():
    line = outcome_line({**BASE, "promoted": False, "champion_version": "3", "reason": "same data and split",
                         "previous_champion": {"version": "3", "compared": {"rows": 20, "candidate": 0.0843,
                                                                            "champion": 0.0808}}})
    assert line == ("registered keras-mlp v5: kept champion v3, which package ships; rmse 0.0843 against "
                    "champion v3's 0.0808 (same data and split; lower is better)")


def test_first_and_unfair_comparisons_are_explained():
    first = outcome_line({**BASE, "promoted": True, "champion_version": "5", "previous_champion": None,
                          "reason": "the first champion"})
    assert first == "registered keras-mlp v5: the first champion"
    unfair = outcome_line({**BASE, "promoted": True, "champion_version": "5", "reason": "too few rows",
                           "previous_champion": {"version": "4", "compared": None}})
    assert unfair == "registered keras-mlp v5: the new champion, as no fair comparison is possible (too few rows)"


def test_a_fair_win_or_tie_takes_the_alias_and_a_fair_loss_keeps_it(tmp_path):
    """register_and_promote on a real store with real (tiny) logged Keras models: the alias and the
    champion run tag move on a win or a tie on the fair rows, and stay on a loss."""
    import keras

    from pipeline.registry import CHAMPION, register_and_promote

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        experiment = mlflow.create_experiment("t", artifact_location=(tmp_path / "artifacts").as_uri())
        model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])

        def candidate(candidate_score: float | None) -> dict:
            with mlflow.start_run(experiment_id=experiment) as run:
                info = mlflow.tensorflow.log_model(model, name="model", pip_requirements=["tensorflow"])
            fair = FairRows(None, "first") if candidate_score is None else FairRows(np.ones(30, bool), "same data and split")
            return register_and_promote("m", info.model_uri, run.info.run_id, "rmse", 0.1, fair,
                                        lambda champion, rows: (candidate_score, 0.2), {})

        def champion() -> tuple[str, list[str]]:
            client = mlflow.MlflowClient()
            tagged = client.search_runs([experiment], f"tags.{CHAMPION} = 'true'")
            return str(client.get_model_version_by_alias("m", CHAMPION).version), [r.info.run_id for r in tagged]

        assert candidate(None)["promoted"] and champion()[0] == "1"
        win = candidate(0.1)
        assert win["promoted"] and win["previous_champion"] == {"version": "1", "compared": {
            "rows": 30, "candidate": 0.1, "champion": 0.2}}
        version, tagged = champion()
        assert version == "2" and tagged == [mlflow.MlflowClient().get_model_version("m", "2").run_id]
        assert candidate(0.2)["promoted"] and champion()[0] == "3"  # a tie: the newer model
        loss = candidate(0.3)
        assert not loss["promoted"] and loss["champion_version"] == "3" and champion()[0] == "3"
        assert len(champion()[1]) == 1
    finally:
        mlflow.set_tracking_uri(None)
