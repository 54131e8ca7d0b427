"""What the stages (and the benches) print: their own lines, not TensorFlow's start-up chatter."""

from __future__ import annotations

import logging
import math
import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

PROGRESS_EVERY_S = 10.0  # a fit quicker than this prints no progress line
TENSORFLOW_START_UP_NOTICES = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called|\] oneDNN custom operations are on")


@contextmanager
def tensorflow_notices_dropped() -> Iterator[None]:
    """Drop TensorFlow's start-up notices from stderr; every other line is passed on as it comes.

    TensorFlow's C++ code writes "oneDNN custom operations are on" (with absl's note that logging
    is not set up yet) straight to file descriptor 2, twice per process, before TF_CPP_MIN_LOG_LEVEL
    applies: four lines of noise in every stage's output that no setting turns off.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    read_end, write_end = os.pipe()

    def forward() -> None:
        with os.fdopen(read_end, "rb") as pipe:
            for line in pipe:
                if not TENSORFLOW_START_UP_NOTICES.search(line.decode(errors="replace")):
                    os.write(saved, line)

    forwarder = threading.Thread(target=forward, daemon=True)
    forwarder.start()
    os.dup2(write_end, 2)
    os.close(write_end)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last write end: the forwarder reads to the end and stops
        forwarder.join()
        os.close(saved)


def import_tensorflow_quietly() -> None:
    """Import TensorFlow once, before anything else does, without its C++ info lines and notices."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tensorflow_notices_dropped():
        import tensorflow  # noqa: F401


def quiet_mlflow_logs() -> None:
    """MLflow's alembic and model-logging chatter buries the pipeline's own output."""
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # Against a tracking server MLflow prints two "View run/experiment at" lines per run: 60 for a 30-trial search.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    if not sys.stderr.isatty():
        os.environ.setdefault("TQDM_DISABLE", "1")
    # uv's environments have no pip, so logging a model warns that conda.yaml lists pip unpinned;
    # the model's own requirements are pinned (MODEL_PIP_REQUIREMENTS), so the warning says nothing.
    logging.getLogger("mlflow.utils.environment").setLevel(logging.ERROR)


def quiet_libraries() -> None:
    """Before a stage imports TensorFlow or MLflow: their start-up and logging chatter off."""
    quiet_mlflow_logs()
    import_tensorflow_quietly()


class EpochProgress:
    """An epoch callback printing one line every PROGRESS_EVERY_S seconds (none on a fit that is quicker): the epoch,
    the best so far and an ETA. Early stopping makes the end uncertain, so the line gives both bounds: when training
    stops if the validation loss improves no more, and when it stops at the latest (train.epochs)."""

    def __init__(self, label: str, epochs: int, patience: int, min_epochs: int, every_s: float = PROGRESS_EVERY_S,
                 stream=None):
        self.label, self.epochs, self.patience, self.min_epochs, self.every_s = label, epochs, patience, min_epochs, every_s
        self.stream = stream or sys.stdout
        self.started = self.last_line = time.monotonic()
        self.best_loss, self.best_epoch = math.inf, 0

    def __call__(self, epoch: int, _train_loss: float, val_loss: float | None) -> bool:
        if val_loss is not None and val_loss < self.best_loss:
            self.best_loss, self.best_epoch = val_loss, epoch
        now = time.monotonic()
        if now - self.last_line >= self.every_s:
            self.last_line = now
            print(self.line(epoch, (now - self.started) / epoch), file=self.stream, flush=True)
        return False

    def line(self, epoch: int, seconds_per_epoch: float) -> str:
        latest = f"at most {(self.epochs - epoch) * seconds_per_epoch:.0f} s left (epoch {self.epochs})"
        if not self.patience or self.best_epoch == 0:
            return f"{self.label}: epoch {epoch}/{self.epochs}, {seconds_per_epoch:.2f} s/epoch, {latest}"
        stop = min(self.epochs, max(self.min_epochs, self.best_epoch + self.patience))
        return (f"{self.label}: epoch {epoch}/{self.epochs}, best validation loss {self.best_loss:.5g} at epoch"
                f" {self.best_epoch}, {seconds_per_epoch:.2f} s/epoch; ETA {max(0, stop - epoch) * seconds_per_epoch:.0f} s"
                f" if it improves no more (epoch {stop}), {latest}")
