"""Model Registry: register each evaluated model; move the `champion` alias only on a fair win.

A model may be compared with the champion only on rows that neither of them learnt from or was
selected on (train + validation). Every version records its split's fingerprint and, as an
artifact of its run, the ids of those development rows:
- same fingerprint (same data, same split): both are scored on the shared test set;
- otherwise the test rows the champion never saw (its development rows are known): both are
  scored on those, if there are at least `evaluate.min_fair_rows` of them;
- otherwise, or for a champion of another task or other features, no fair comparison exists,
  and the new model is promoted: a champion that has seen the test rows would win unfairly.
The reason goes to the console, registry.json and the version's `promotion` tag.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

CHAMPION = "champion"
SPLIT_FINGERPRINT_TAG = "split_fingerprint"
DEV_ROWS_ARTIFACT = "split/development_row_ids.npy"


def split_fingerprint(development_ids: np.ndarray, test_ids: np.ndarray) -> str:
    """Which rows a model learnt from or was selected on, and which it was tested on."""
    digest = hashlib.sha256(np.sort(development_ids).astype("<u8").tobytes())
    digest.update(b"|" + np.sort(test_ids).astype("<u8").tobytes())
    return digest.hexdigest()[:16]


def log_development_rows(run_id: str, development_ids: np.ndarray) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(DEV_ROWS_ARTIFACT).name
        np.save(path, np.sort(development_ids).astype("<u8"))
        MlflowClient().log_artifact(run_id, str(path), artifact_path=str(Path(DEV_ROWS_ARTIFACT).parent))


def development_rows_of(version) -> np.ndarray | None:
    """The row ids a registered version learnt from or was selected on; None if it recorded none."""
    try:
        path = mlflow.artifacts.download_artifacts(run_id=version.run_id, artifact_path=DEV_ROWS_ARTIFACT)
    except (MlflowException, OSError):
        return None
    return np.load(path)


def current_champion(name: str):
    try:
        return MlflowClient().get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


@dataclass(frozen=True)
class FairRows:
    """The test rows a candidate and the champion can be compared on, or None, and why."""

    rows: np.ndarray | None  # boolean mask over the test rows
    reason: str


def fair_rows(champion, compatibility: dict[str, str], fingerprint: str, test_ids: np.ndarray,
              min_rows: int) -> FairRows:
    if champion is None:
        return FairRows(None, "the first champion")
    where = f"champion v{champion.version}"
    if any(champion.tags.get(k) != v for k, v in compatibility.items()):
        return FairRows(None, f"{where} was trained for another task or other features, so it cannot be scored here")
    if champion.tags.get(SPLIT_FINGERPRINT_TAG) == fingerprint:
        return FairRows(np.ones(len(test_ids), bool), "same data and split")
    seen = development_rows_of(champion)
    if seen is None:
        return FairRows(None, f"{where} records no training rows, so no comparison can be shown to be fair")
    unseen = ~np.isin(test_ids, seen)
    count = int(unseen.sum())
    if count < min_rows:
        return FairRows(None, f"{where} learnt from or was selected on {len(test_ids) - count} of these "
                              f"{len(test_ids)} test rows; the {count} it never saw are too few to compare on "
                              f"(evaluate.min_fair_rows: {min_rows})")
    return FairRows(unseen, f"another split: compared on the {count} of {len(test_ids)} test rows {where} never saw")


def register_and_promote(name: str, model_uri: str, run_id: str, metric: str, value: float, fair: FairRows,
                         rescore: Callable[[object, np.ndarray], tuple[float, float]],
                         tags: dict[str, str]) -> dict:
    """Register the model; give it the champion alias unless the champion's `metric` (lower is
    better) is strictly better on the fair rows. `rescore(champion_model, rows)` scores (candidate,
    champion) on those rows."""
    client = MlflowClient()
    champion = current_champion(name)
    compared = None
    if fair.rows is not None:
        champion_model = mlflow.tensorflow.load_model(f"models:/{name}@{CHAMPION}", keras_model_kwargs={"safe_mode": True})
        ours, theirs = rescore(champion_model, fair.rows)
        compared = {"rows": int(fair.rows.sum()), "candidate": ours, "champion": theirs}
    promoted = compared is None or compared["candidate"] <= compared["champion"]
    version = str(mlflow.register_model(model_uri, name, tags={"run_id": run_id, **tags}).version)
    client.set_model_version_tag(name, version, f"test_{metric}", f"{value:.6g}")
    result = {
        "registered_model": name,
        "version": version,
        "metric": metric,
        "test_value": value,
        "promoted": promoted,
        "champion_version": version if promoted else str(champion.version),
        "previous_champion": None if champion is None else {"version": str(champion.version), "compared": compared},
        "reason": fair.reason,
    }
    client.set_model_version_tag(name, version, "promotion", outcome_line(result))
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, version)
        move_champion_tag(run_id)
    return result


def move_champion_tag(run_id: str) -> None:
    """The `champion=true` run tag follows the alias, so the runs list shows the champion without the registry page."""
    client = MlflowClient()
    experiment_id = client.get_run(run_id).info.experiment_id
    for run in client.search_runs([experiment_id], filter_string=f"tags.{CHAMPION} = 'true'"):
        if run.info.run_id != run_id:
            client.delete_tag(run.info.run_id, CHAMPION)
    client.set_tag(run_id, CHAMPION, "true")


def outcome_line(result: dict) -> str:
    """What `register_and_promote` decided and why, with the figures it compared."""
    head = f"registered {result['registered_model']} v{result['version']}"
    previous = result["previous_champion"]
    if previous is None:
        return f"{head}: the first champion"
    compared = previous["compared"]
    if compared is None:
        return f"{head}: the new champion, as no fair comparison is possible ({result['reason']})"
    figures = (f"{result['metric']} {compared['candidate']:.4g} against champion v{previous['version']}'s "
               f"{compared['champion']:.4g} ({result['reason']}; lower is better)")
    if result["promoted"]:
        return f"{head}: the new champion, {figures}"
    return f"{head}: kept champion v{result['champion_version']}, which package ships; {figures}"
