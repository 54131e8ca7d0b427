"""What the stages (and the benches) print: their own lines, not TensorFlow's start-up chatter."""

from __future__ import annotations

import os
import re
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

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
