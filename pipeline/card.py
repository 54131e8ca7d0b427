"""The model card: what the service needs and a reader wants to know about one registered model.

`evaluate` writes the card of the model it evaluates and stores it with that model's MLflow run;
`package` ships the stored card of the champion it packages. So every figure in a served card
(metrics, interval calibration, training ranges, vocabularies, fill values) belongs to the served model, also
when an older champion is packaged after a newer model lost the comparison. Both validate against
the service's own schema (service.api_models.ModelCard), so a card the pipeline writes is one the
service accepts.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline.data import Schema
from pipeline.errors import PipelineError
from service.api_models import ModelCard

CARD_ARTIFACT = "card/card.json"


def validated(card: dict) -> dict:
    """`card` checked against the service's schema: a field it does not declare is a bug here."""
    undeclared = sorted(set(card) - set(ModelCard.model_fields))
    if undeclared:
        raise ValueError(f"model card fields {undeclared} are not declared in service/api_models.py's ModelCard")
    ModelCard.model_validate(card)
    return card


def model_card(name: str, schema: Schema, ranges: dict[str, tuple[float, float]], metrics: dict, interval: dict | None,
               run, fingerprint: str, profile: dict | None = None) -> dict:
    """The card of a model trained on a split with `schema` (its train run `run`), as evaluated with `metrics`;
    `ranges`: each numeric feature's minimum and maximum over the training rows; `profile`: its training rows' and
    outputs' reference distribution (pipeline/profile.py)."""
    dropped = {"dropped_features": schema.dropped} if schema.dropped else {}
    return validated({**dropped,
        "name": name,
        "task": schema.task,
        "target": schema.target,
        "features": [feature_spec(schema, ranges, name) for name in schema.features],
        "class_labels": schema.class_labels,
        "interval": interval,
        "imputation": None if schema.fill_values is None else {"method": schema.impute, "values": schema.fill_values},
        "metrics": metrics,
        "data_hash": run.data.tags.get("data_sha256"),
        "split_fingerprint": fingerprint,
        "params": run.data.params,
        "profile": profile,
    })


def feature_spec(schema: Schema, ranges: dict[str, tuple[float, float]], name: str) -> dict:
    """A feature as the service checks it: a numeric one's training range, a categorical one's vocabulary
    (in index order: the category at position i is index i + 1, 0 is out-of-vocabulary)."""
    vocab = schema.categories.get(name)
    if vocab is not None:
        return {"name": name, "kind": "categorical", "categories": vocab, "min": None, "max": None}
    low, high = ranges[name]
    return {"name": name, "kind": "numeric", "min": low, "max": high}


def log_card(run_id: str, card: dict) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(CARD_ARTIFACT).name
        path.write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
        MlflowClient().log_artifact(run_id, str(path), artifact_path=str(Path(CARD_ARTIFACT).parent))


def stored_card(version) -> dict:
    """The card `evaluate` stored for a registered version."""
    try:
        path = mlflow.artifacts.download_artifacts(run_id=version.run_id, artifact_path=CARD_ARTIFACT)
    except (MlflowException, OSError):
        raise PipelineError(f"{version.name} v{version.version} has no stored model card (it was registered by an "
                            "older version of this pipeline); run `dvc repro --force evaluate` to register a "
                            "model that has one") from None
    return json.loads(Path(path).read_text())
