"""MLflow set-up shared by the stages: embedded SQLite store by default, any tracking server by env."""

from __future__ import annotations

import os
import subprocess
import urllib.parse
import warnings
from pathlib import Path

from pipeline.config import DataConfig, TrackingConfig
from pipeline.errors import PipelineError

DEFAULT_DB = "mlflow.db"
ARTIFACT_DIR = "mlartifacts"
# The served model needs only these at inference time; listing them saves MLflow ~10 s of guessing.
MODEL_PIP_REQUIREMENTS = ["tensorflow-cpu", "keras", "numpy"]


def tracking_uri(root: Path | None = None) -> str:
    """`MLFLOW_TRACKING_URI` when set (a team's server), else the project's own SQLite file."""
    root = root or Path.cwd()
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(root / DEFAULT_DB).resolve()}"


def _check_reachable(uri: str) -> None:
    """Fail in seconds with one line when a tracking server is down (MLflow itself retries for minutes)."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme not in ("http", "https"):
        return
    import socket

    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname, port), timeout=5).close()
    except OSError as exc:
        raise PipelineError(f"MLflow tracking server {uri} is unreachable ({exc.strerror or exc})") from None


def configure(cfg: TrackingConfig) -> str:
    """Point MLflow at the store and select (or create) the project's experiment; return its id."""
    import mlflow

    uri = tracking_uri()
    _check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.get_experiment_by_name(cfg.experiment)
    if experiment is not None:
        mlflow.set_experiment(experiment_id=experiment.experiment_id)
        return experiment.experiment_id
    artifact_location = None
    if uri.startswith("sqlite:"):
        # Without this MLflow writes artifacts to ./mlruns, whose mere existence changes its default store.
        artifact_location = (Path.cwd() / ARTIFACT_DIR).resolve().as_uri()
    try:
        experiment_id = mlflow.create_experiment(cfg.experiment, artifact_location=artifact_location)
    except mlflow.exceptions.MlflowException:
        # Another process (a tune worker) created it in the meantime; anything else fails on the next line.
        experiment = mlflow.get_experiment_by_name(cfg.experiment)
        if experiment is None:
            raise
        experiment_id = experiment.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def git_commit() -> str:
    """The commit the code ran at, with '-dirty' when the work tree has uncommitted changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.strip() + ("-dirty" if dirty.stdout.strip() else "")


def data_name(cfg: DataConfig) -> str:
    """What the data is, in a few words: the synthetic generator, the file's name or the scikit-learn set."""
    if cfg.source == "file":
        return Path(cfg.file.path).name
    if cfg.source == "sklearn":
        return cfg.sklearn.name
    return f"synthetic {cfg.synthetic}"


def log_data_inputs(cfg: DataConfig, target: str, frames: dict[str, object]) -> None:
    """Each split as an MLflow dataset input of the active run (name, digest, source, rows: the runs list's Dataset
    column), `frames` mapping MLflow's context (training, validation, testing) to the split's DataFrame, or to the
    path of its Parquet file when it is not held in memory (then named and digested from the file, without rows)."""
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    from pipeline.artifacts import file_sha256

    source = str(Path(cfg.file.path if cfg.source == "file" else "data/raw.parquet").resolve())

    def dataset(context: str, frame):
        name = f"{data_name(cfg)} {context}"
        if isinstance(frame, Path):
            return MetaDataset(resolve_dataset_source(str(frame.resolve())), name=name, digest=file_sha256(frame)[:8])
        return mlflow.data.from_pandas(frame, source=source, targets=target, name=name)

    with warnings.catch_warnings():
        # MLflow registers its local-file source twice and warns that a path "can be interpreted" as either.
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")
        datasets = [dataset(context, frame) for context, frame in frames.items()]
    mlflow.log_inputs(datasets=datasets, contexts=list(frames), tags_list=[None] * len(frames))
