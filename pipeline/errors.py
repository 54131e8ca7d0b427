"""The one exception type `python -m pipeline` reports as a single line.

Raise it (or a subclass) for problems the user fixes by changing params, data or set-up: the
message names what is wrong and what is allowed. Anything else is a bug and keeps its traceback.
"""


class PipelineError(Exception):
    """Bad params, bad data, an unreachable tracking server, an unwritable output."""
