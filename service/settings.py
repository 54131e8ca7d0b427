"""The service's settings, read once from the environment at start-up (the list is in service.py's docstring).

A bad value is a StartupError naming the variable and what is allowed; `refuse_to_start` turns it into one line
and exit status 1. Kept apart from service.py, which loads the model when imported, so the checks run alone.
"""

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from model_bundle import StartupError


@dataclass(frozen=True)
class Settings:
    model_dir: Path | None
    coverage: float | None
    max_rows: int
    max_body_bytes: int
    max_concurrency: int
    max_uploads: int
    body_timeout_s: int
    max_queue_delay_ms: int
    request_timeout_s: int
    api_token: SecretStr | None  # SecretStr: never shown by repr or logs

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "Settings":
        model_dir = env.get("SERVICE_MODEL_DIR") or None
        token = env.get("SERVICE_API_TOKEN") or None
        if token is not None and (not token.isprintable() or " " in token):
            raise StartupError("SERVICE_API_TOKEN must be printable and contain no spaces")
        return cls(
            model_dir=Path(model_dir) if model_dir else None,
            coverage=coverage_from_env(env),
            max_rows=positive_int_from_env(env, "SERVICE_MAX_ROWS", 10_000),
            max_body_bytes=positive_int_from_env(env, "SERVICE_MAX_BODY_BYTES", 2 * 1024 * 1024),
            max_concurrency=positive_int_from_env(env, "SERVICE_MAX_CONCURRENCY", 256),
            max_uploads=positive_int_from_env(env, "SERVICE_MAX_UPLOADS", 128),
            body_timeout_s=positive_int_from_env(env, "SERVICE_BODY_TIMEOUT_S", 10),
            max_queue_delay_ms=positive_int_from_env(env, "SERVICE_MAX_QUEUE_DELAY_MS", 250),
            request_timeout_s=positive_int_from_env(env, "SERVICE_REQUEST_TIMEOUT_S", 30),
            api_token=SecretStr(token) if token else None,
        )


def positive_int_from_env(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name) or str(default)
    if not raw.isdigit() or int(raw) < 1:
        raise StartupError(f"{name} must be a positive whole number, got {raw!r}")
    return int(raw)


def coverage_from_env(env: Mapping[str, str]) -> float | None:
    raw = env.get("SERVICE_INTERVAL_COVERAGE")
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0 < value < 1:
        raise StartupError(f"SERVICE_INTERVAL_COVERAGE must be a number in (0, 1), got {raw!r}")
    return value


def refuse_to_start(exc: StartupError, env: Mapping[str, str]) -> None:
    """One line naming what to fix, exit status 1; the traceback (BentoML's import machinery,
    ~70 lines) only with SERVICE_DEBUG=1."""
    if env.get("SERVICE_DEBUG") == "1":
        raise exc
    print(f"service refused to start: StartupError: {exc} (SERVICE_DEBUG=1 shows the traceback)",
          file=sys.stderr, flush=True)
    sys.exit(1)
