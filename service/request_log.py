"""The optional request log (SERVICE_REQUEST_LOG=DIR): a JSON line per row served and per row of feedback.

Written by BentoML's own monitoring facility (`bentoml.monitor`, its default JSON-lines monitor),
with a logging configuration of ours in place of its default one, which rotates daily and keeps
every file for ever. Here:
- batched: records wait in a logging.handlers.MemoryHandler and are written SERVICE_REQUEST_LOG_BATCH
  at a time, or every second by a background thread, so a request seldom touches the disk;
- bounded and rotated: a RotatingFileHandler keeps at most SERVICE_REQUEST_LOG_FILES files of
  SERVICE_REQUEST_LOG_MAX_BYTES each per worker (DIR/requests/data/data.<worker>.log, .log.1, ...).

One monitor serves both kinds of line (field `kind`: prediction or feedback): BentoML's default
monitor configures a single logger name, so a second monitor would take over the first one's file.
Lines: {"kind": "prediction", "id": <request id>, "row": i, "inputs": {feature: value},
"output": prediction or label, "extrapolated": bool, "timestamp": ..., "request_id": ..., "trace_id": ...}
and {"kind": "feedback", "id": ..., "row": i, "target": value, ...}.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

MONITOR_NAME = "requests"
CONFIG_FILE = ".bentoml-monitor-logging.yaml"
DATA_LOGGER = "bentoml_monitor_data"  # the logger name BentoML's DefaultMonitor writes to

# BentoML fills the {placeholders} in itself; ours are @@NAME@@.
LOGGING_CONFIG = """\
version: 1
disable_existing_loggers: false
loggers:
  bentoml_monitor_data:
    level: INFO
    handlers: [bentoml_monitor_data]
    propagate: false
  bentoml_monitor_schema:
    level: INFO
    handlers: [bentoml_monitor_schema]
    propagate: false
handlers:
  bentoml_monitor_data:
    class: logging.handlers.MemoryHandler
    capacity: @@BATCH@@
    flushLevel: 50  # CRITICAL: only a full batch (or the flush thread) writes
    target: bentoml_monitor_file
  bentoml_monitor_file:
    class: logging.handlers.RotatingFileHandler
    level: INFO
    formatter: bentoml_json
    filename: '{data_filename}'
    maxBytes: @@MAX_BYTES@@
    backupCount: @@BACKUPS@@
    encoding: utf-8
  bentoml_monitor_schema:
    class: logging.handlers.RotatingFileHandler
    level: INFO
    formatter: bentoml_json
    filename: '{schema_filename}'
    maxBytes: 1048576
    backupCount: 1
    encoding: utf-8
formatters:
  bentoml_json:
    class: pythonjsonlogger.json.JsonFormatter
    format: "()"
    validate: false
"""


class RequestLog:
    def __init__(self, directory: Path, *, max_bytes: int, files: int, batch: int, feature_names: list[str],
                 flush_every_s: float = 1.0) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        config = directory / CONFIG_FILE
        config.write_text(LOGGING_CONFIG.replace("@@BATCH@@", str(batch)).replace("@@MAX_BYTES@@", str(max_bytes))
                          .replace("@@BACKUPS@@", str(max(files - 1, 0))), encoding="utf-8")
        self.options = {"log_path": str(directory), "log_config_file": str(config)}
        self.feature_names = feature_names
        self.flush_every_s = flush_every_s
        self._flusher: threading.Thread | None = None

    def _monitor(self):
        import bentoml

        if self._flusher is None:  # started in the worker on first use, not when the arbiter imports us
            self._flusher = threading.Thread(target=self._flush_forever, name="request-log-flush", daemon=True)
            self._flusher.start()
        return bentoml.monitor(MONITOR_NAME, monitor_class="default", monitor_options=self.options)

    def predictions(self, request_id: str, rows: list, outputs: list, extrapolated: list[bool]) -> None:
        """One line per row served."""
        n, names = len(rows), self.feature_names
        with self._monitor() as mon:
            mon.log_batch(["prediction"] * n, "kind", "feature", "categorical")
            mon.log_batch([request_id] * n, "id", "feature", "categorical")
            mon.log_batch(range(n), "row", "feature", "numerical")
            mon.log_batch([dict(zip(names, row)) for row in rows], "inputs", "feature", "numerical_sequence")
            mon.log_batch(outputs, "output", "prediction", "numerical")
            mon.log_batch(extrapolated, "extrapolated", "feature", "categorical")

    def feedback(self, request_id: str, targets: list) -> None:
        """One line per row of ground truth."""
        n = len(targets)
        with self._monitor() as mon:
            mon.log_batch(["feedback"] * n, "kind", "feature", "categorical")
            mon.log_batch([request_id] * n, "id", "feature", "categorical")
            mon.log_batch(range(n), "row", "feature", "numerical")
            mon.log_batch(targets, "target", "target", "numerical")

    def _flush_forever(self) -> None:
        event = threading.Event()
        while not event.wait(self.flush_every_s):
            flush()


def flush() -> None:
    """Write what the batch holds (also done when it fills, and at exit by logging.shutdown)."""
    for handler in logging.getLogger(DATA_LOGGER).handlers:
        handler.flush()
