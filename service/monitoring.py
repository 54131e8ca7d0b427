"""What the service watches: live drift gauges (drift.py) and the optional request log (request_log.py),
set up from the environment and the model card; and the POST /feedback request.

Environment (read once at start-up; a bad value stops start-up with a message):
  SERVICE_DRIFT                 1 (default): count inputs for the drift gauges; 0: off
  SERVICE_DRIFT_WINDOW_ROWS     the gauges describe about the last this many rows (1000)
  SERVICE_DRIFT_WINDOW_S        instead: the rows of the last this many seconds
  SERVICE_REQUEST_LOG           a directory: log every row served and every row of feedback there
                                (JSON lines); unset: no log, and POST /feedback answers 404
  SERVICE_REQUEST_LOG_MAX_BYTES size of one log file before it is rotated (64 MiB = 67108864)
  SERVICE_REQUEST_LOG_FILES     log files kept per worker, the current one included (10)
  SERVICE_REQUEST_LOG_BATCH     records held in memory before a write (256; also written every second)

Gauges on /metrics (labels: the card's feature names only, so the series are fixed at start-up):
  service_drift_psi{feature}        population stability index of the window against the training rows
  service_drift_output_psi          the same for the model's output (prediction or predicted class)
  service_drift_extrapolated_ratio  share of the window's rows outside the training range
  service_drift_window_rows         rows in the window; PSI is NaN below 100 (noise, not drift)
"""

from __future__ import annotations

import functools
import logging
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import AllowInfNan, Field, Strict

from api_models import ModelCard, OpenAPIModel, StrictBody
from drift import DriftMonitor, DriftWindow
from model_bundle import StartupError
from request_log import RequestLog, flush
from settings import positive_int_from_env

REQUEST_ID_PATTERN = r"^[0-9a-f]{32}$"

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MonitoringSettings:
    drift: bool
    window_rows: int
    window_s: int | None
    request_log: Path | None
    log_max_bytes: int
    log_files: int
    log_batch: int

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "MonitoringSettings":
        drift = env.get("SERVICE_DRIFT") or "1"
        if drift not in ("0", "1"):
            raise StartupError(f"SERVICE_DRIFT must be 0 or 1, got {drift!r}")
        log_dir = env.get("SERVICE_REQUEST_LOG") or None
        return cls(
            drift=drift == "1",
            window_rows=positive_int_from_env(env, "SERVICE_DRIFT_WINDOW_ROWS", 1000),
            window_s=positive_int_from_env(env, "SERVICE_DRIFT_WINDOW_S", 1) if env.get("SERVICE_DRIFT_WINDOW_S") else None,
            request_log=Path(log_dir) if log_dir else None,
            log_max_bytes=positive_int_from_env(env, "SERVICE_REQUEST_LOG_MAX_BYTES", 64 * 1024 * 1024),
            log_files=positive_int_from_env(env, "SERVICE_REQUEST_LOG_FILES", 10),
            log_batch=positive_int_from_env(env, "SERVICE_REQUEST_LOG_BATCH", 256),
        )


@functools.cache
def _gauges() -> tuple:
    # Imported on first use (see service.py's _gate_answers). "livemostrecent": one series per
    # feature whatever the number of workers, holding the value a live worker set last.
    import prometheus_client

    mode = "livemostrecent"
    return (
        prometheus_client.Gauge("service_drift_psi", "Population stability index of the served inputs "
                                "(sliding window) against the training rows, per feature", ["feature"],
                                multiprocess_mode=mode),
        prometheus_client.Gauge("service_drift_output_psi", "Population stability index of the model's outputs "
                                "(sliding window) against its outputs on the training rows", multiprocess_mode=mode),
        prometheus_client.Gauge("service_drift_extrapolated_ratio", "Share of the window's rows outside the "
                                "training range", multiprocess_mode=mode),
        prometheus_client.Gauge("service_drift_window_rows", "Rows in the drift window", multiprocess_mode=mode),
    )


class Monitoring:
    """The service's one handle on drift counting and request logging; either may be off."""

    def __init__(self, settings: MonitoringSettings, card: ModelCard) -> None:
        self.card = card
        self.drift: DriftMonitor | None = None
        if settings.drift and card.profile is None:
            logger.warning("the model card has no reference profile, so there are no drift gauges; "
                           "a model packaged by this version of the pipeline has one")
        if settings.drift and card.profile is not None:
            columns = [*card.profile.features, card.profile.output]
            window = DriftWindow([c.edges for c in columns], [c.expected for c in columns],
                                 window_rows=None if settings.window_s else settings.window_rows,
                                 window_s=settings.window_s)
            self.drift = DriftMonitor(window, card.feature_names, card.task, _gauges)
        # Categorical features arrive as strings; the profile bins them by model index (0: out of vocabulary).
        self._categories = {i: {c: j for j, c in enumerate(column.categories or []) if j}
                            for i, column in enumerate(card.profile.features if card.profile else [])
                            if column.kind == "categorical"}
        self.log: RequestLog | None = None
        if settings.request_log is not None:
            try:
                self.log = RequestLog(settings.request_log, max_bytes=settings.log_max_bytes,
                                      files=settings.log_files, batch=settings.log_batch,
                                      feature_names=card.feature_names)
            except OSError as exc:
                raise StartupError(f"SERVICE_REQUEST_LOG: cannot write to {settings.request_log}: {exc}") from None

    def observe(self, rows: list, values: np.ndarray, extrapolated: np.ndarray, logged_outputs: Callable[[], list]
                ) -> str | None:
        """Count a request for drift and log it; its request id when logging is on."""
        if self.drift is not None:
            self.drift.observe(self._indexed(rows) if self._categories else rows, values, extrapolated)
        if self.log is None:
            return None
        request_id = secrets.token_hex(16)
        self.log.predictions(request_id, rows, logged_outputs(), extrapolated.tolist())
        return request_id

    def _indexed(self, rows: list) -> list:
        return [[self._categories[i].get(v, 0) if i in self._categories else v for i, v in enumerate(row)]
                for row in rows]

    def close(self) -> None:
        if self.log is not None:
            flush()

    def publish(self) -> None:
        if self.drift is not None:
            self.drift.publish()


def build_feedback_model(card: ModelCard, *, max_rows: int) -> type[StrictBody]:
    """The POST /feedback request: a request id /predict returned, and the true target of each of its rows."""
    if card.task == "regression":
        target: Any = Annotated[float, Strict(), AllowInfNan(False)]
    else:
        target = Literal[tuple(card.class_labels)] if card.class_labels else Annotated[int, Strict()]

    class FeedbackRequest(StrictBody):
        id: str = Field(pattern=REQUEST_ID_PATTERN, description="The request_id /predict answered with.")
        targets: list[target] = Field(min_length=1, max_length=max_rows,
                                      description="The true target of each row of that request, in row order.")

    return FeedbackRequest


class FeedbackAnswer(OpenAPIModel):
    id: str
    rows: int = Field(description="Rows of ground truth logged.")
