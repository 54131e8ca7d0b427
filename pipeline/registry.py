"""Model Registry: register each evaluated model; move the `champion` alias only on improvement.

The comparison re-scores the current champion on *this* test set instead of trusting a number
recorded when it was trained on other data. A champion trained for another task or other
features cannot be scored here, so the new model replaces it.
"""

from __future__ import annotations

from collections.abc import Callable

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

CHAMPION = "champion"


def current_champion(name: str):
    try:
        return MlflowClient().get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def register_and_promote(name: str, model_uri: str, run_id: str, metric: str, value: float,
                         rescore: Callable[[object], float], compatibility: dict[str, str]) -> dict:
    """Register the model; give it the champion alias if its `metric` (lower is better) is at least
    as good as the current champion's on the same test set."""
    client = MlflowClient()
    champion = current_champion(name)
    rescored = None
    if champion is not None and all(champion.tags.get(k) == v for k, v in compatibility.items()):
        champion_model = mlflow.tensorflow.load_model(f"models:/{name}@{CHAMPION}", keras_model_kwargs={"safe_mode": True})
        rescored = rescore(champion_model)
    version = str(mlflow.register_model(model_uri, name, tags={"run_id": run_id, **compatibility}).version)
    client.set_model_version_tag(name, version, f"test_{metric}", f"{value:.6g}")
    promoted = rescored is None or value <= rescored
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, version)
    return {
        "registered_model": name,
        "version": version,
        "metric": metric,
        "test_value": value,
        "promoted": promoted,
        "champion_version": version if promoted else str(champion.version),
        "previous_champion": None if champion is None else {"version": str(champion.version),
                                                            "test_value_rescored": rescored},
    }


def outcome_line(result: dict) -> str:
    """What `register_and_promote` decided and why, with the figures it compared."""
    head = f"registered {result['registered_model']} v{result['version']}"
    metric, ours, previous = result["metric"], result["test_value"], result["previous_champion"]
    if previous is None:
        return f"{head}: the first champion"
    theirs = previous["test_value_rescored"]
    if theirs is None:
        return (f"{head}: the new champion (champion v{previous['version']} was trained for another task or "
                f"other features, so it cannot be scored here)")
    figures = f"test {metric} {ours:.4g} against champion v{previous['version']}'s {theirs:.4g} on the same test set"
    if result["promoted"]:
        return f"{head}: the new champion, {figures}"
    return (f"{head}: kept champion v{result['champion_version']}, which package ships; {figures} "
            f"(lower is better)")
