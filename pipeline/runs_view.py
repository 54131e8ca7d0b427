"""The MLflow UI's view of the experiment's runs: which columns a reader sees first.

MLflow 3 shows a runs list with Source, Models and Dataset only; metrics and parameters hide behind a
column picker. Its "share view" feature keeps a view as an experiment tag (`mlflow.sharedViewState.<key>`)
that the URL's `viewStateShareKey=<key>` opens, so evaluate (which knows the task, hence its metric)
publishes one, and `make ui` (scripts/mlflow_ui_url.py) links straight to it.
"""

from __future__ import annotations

import json

VIEW_KEY = "runs"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
KEY_PARAMS = ["activation", "learning_rate"]  # few: the champion and chosen tags come after the parameters
TEST_METRICS = {"regression": ["test_rmse", "test_r2"], "binary": ["test_log_loss", "test_accuracy"],
                "multiclass": ["test_log_loss", "test_accuracy"]}
TAGS = ["champion", "chosen"]  # pipeline/registry.py CHAMPION, pipeline/trial_logging.py CHOSEN_TAG


def _column(kind: str, key: str) -> str:
    return f"{kind}.`{key}`"  # the UI's own column ids


def columns(task: str) -> list[str]:
    """The task's test metrics, validation loss (trials and train runs both log it), the tuned settings, the
    champion and chosen-trial tags, and the data."""
    return ([_column("metrics", m) for m in [*TEST_METRICS[task], "val_loss"]]
            + [_column("tags", t) for t in TAGS]
            + [_column("params", p) for p in KEY_PARAMS]
            + [_column("attributes", "Dataset")])


def view(task: str) -> dict:
    # Lowest validation loss first: the chosen trial heads its search's trials, the best model its versions.
    return {"selectedColumns": columns(task), "orderByKey": "metrics.`val_loss`", "orderByAsc": True,
            "runListHidden": False, "viewMaximized": False}


def publish(experiment_id: str, task: str) -> None:
    from mlflow.tracking import MlflowClient

    MlflowClient().set_experiment_tag(experiment_id, VIEW_TAG, json.dumps(view(task)))


def path(experiment_id: str) -> str:
    """The UI path (after the host) of the experiment's runs in the classic (not GenAI) view, with the columns."""
    return f"/#/experiments/{experiment_id}/runs?workflowType=machine_learning&viewStateShareKey={VIEW_KEY}"
