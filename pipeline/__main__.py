"""`python -m pipeline <stage>`: one command per DVC stage, each reading params.yaml once.

Heavy imports (TensorFlow, MLflow) happen inside the commands that need them, so `generate` and
`split` start in well under a second.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before any TensorFlow import: no C++ info lines

from pipeline.config import DEFAULT_PARAMS, ConfigError, Params, load_params

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
    with tensorflow_notices_dropped():
        import tensorflow  # noqa: F401


def _generate(params: Params) -> None:
    from pipeline.artifacts import ensure_writable
    from pipeline.data import RAW_PATH, SCHEMA_PATH, load, write_frame

    ensure_writable(RAW_PATH, SCHEMA_PATH)
    frame, schema = load(params.data)
    write_frame(frame, RAW_PATH)
    schema.write(SCHEMA_PATH)
    print(f"{params.data.source} data: {len(frame)} rows, {len(schema.features)} feature(s), task {schema.task}"
          f" -> {RAW_PATH}")


def _split(params: Params) -> None:
    import pandas as pd

    from pipeline.data import RAW_PATH, SPLIT_DIR, Schema, split, write_splits

    splits = split(pd.read_parquet(RAW_PATH), Schema.read(), params.split)
    write_splits(splits)
    folds = f", train + val in {params.split.folds} folds" if params.split.folds > 1 else ""
    print(f"split train/val/test = {len(splits.train)}/{len(splits.val)}/{len(splits.test)}{folds} -> {SPLIT_DIR}")


def _tune(params: Params, worker: bool = False) -> None:
    from pipeline import tune

    tune.main(params, worker=worker)


def _train(params: Params) -> None:
    from pipeline import train
    from pipeline.tune import read_best_params

    train.main(params, read_best_params())


def _evaluate(params: Params) -> None:
    from pipeline import evaluate

    evaluate.main(params)


def _package(params: Params) -> None:
    from pipeline import package

    package.main(params)


STAGES = {"generate": _generate, "split": _split, "tune": _tune, "train": _train, "evaluate": _evaluate,
          "package": _package}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=STAGES, help="the pipeline stage to run")
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="params file (default: %(default)s)")
    parser.add_argument("--worker", action="store_true",
                        help="tune only: join the search that `dvc repro` runs (same params, data and code; shared "
                             "TUNE_STORAGE) from another process or machine and run trials until it is complete")
    args = parser.parse_args(argv)
    if args.worker and args.stage != "tune":
        parser.error("--worker goes with the tune stage only")
    try:
        params = load_params(args.params)
        if args.stage in ("tune", "train", "evaluate", "package"):
            from pipeline.tracking import quiet_mlflow_logs

            quiet_mlflow_logs()
            import_tensorflow_quietly()
        if args.worker:
            _tune(params, worker=True)
        else:
            STAGES[args.stage](params)
    except (ConfigError, ValueError, ConnectionError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
