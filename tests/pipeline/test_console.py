"""What a stage prints: TensorFlow's start-up notices dropped, everything else kept (real subprocesses, real fd 2)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

NOTICE = ("I0000 00:00:1.0  1 port.cc:153] oneDNN custom operations are on. You may see slightly different "
          "numerical results")


def stderr_of(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stderr


def test_tensorflow_notices_are_dropped_and_every_other_line_passes_in_order():
    stderr = stderr_of(f"""
import os, sys
from pipeline.console import tensorflow_notices_dropped
print("before", file=sys.stderr)
with tensorflow_notices_dropped():
    os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n")
    os.write(2, {NOTICE!r}.encode() + b"\\n")
    os.write(2, b"a real C++ warning\\n")
    print("a real Python warning", file=sys.stderr)
print("after", file=sys.stderr)
""")
    assert stderr.splitlines() == ["before", "a real C++ warning", "a real Python warning", "after"]


def test_importing_tensorflow_quietly_prints_nothing():
    assert stderr_of("from pipeline.console import import_tensorflow_quietly; import_tensorflow_quietly()") == ""


def test_an_error_inside_still_reaches_stderr():
    code = """
from pipeline.console import tensorflow_notices_dropped
with tensorflow_notices_dropped():
    raise RuntimeError("boom")
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 1 and "RuntimeError: boom" in result.stderr
