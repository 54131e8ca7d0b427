"""`python -m pipeline <stage>`: one command per DVC stage, each reading params.yaml once.

Heavy imports (TensorFlow, MLflow) happen inside the commands that need them, so `generate` and
`split` start in well under a second. Each stage function imports only what its stage runs:
tests/pipeline/test_stage_deps.py derives dvc.yaml's code deps from these imports.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.config import DEFAULT_PARAMS, Params, load_params
from pipeline.errors import PipelineError
from pipeline.paths import Workspace


def _generate(params: Params, ws: Workspace) -> None:
    from pipeline.artifacts import ensure_writable
    from pipeline.data import load, write_frame

    ensure_writable(ws.raw, ws.schema)
    frame, schema = load(params.data)
    write_frame(frame, ws.raw)
    schema.write(ws.schema)
    print(f"{params.data.source} data: {len(frame)} rows, {len(schema.features)} feature(s), task {schema.task}"
          f" -> {ws.raw}")


def _split(params: Params, ws: Workspace) -> None:
    import pandas as pd

    from pipeline.data import Schema, split, write_splits

    splits = split(pd.read_parquet(ws.raw), Schema.read(ws.schema), params.split)
    write_splits(splits, ws.split_dir)
    folds = f", train + val in {params.split.folds} folds" if params.split.folds > 1 else ""
    print(f"split train/val/test = {len(splits.train)}/{len(splits.val)}/{len(splits.test)}{folds} -> {ws.split_dir}")


def _tune(params: Params, ws: Workspace, worker: bool = False) -> None:
    from pipeline.console import quiet_libraries

    quiet_libraries()
    from pipeline import tune

    tune.main(params, ws, worker=worker)


def _train(params: Params, ws: Workspace) -> None:
    from pipeline.console import quiet_libraries

    quiet_libraries()
    from pipeline import train
    from pipeline.tune import read_best_params

    train.main(params, ws, read_best_params(ws.best_params))


def _evaluate(params: Params, ws: Workspace) -> None:
    from pipeline.console import quiet_libraries

    quiet_libraries()
    from pipeline import evaluate

    evaluate.main(params, ws)


def _package(params: Params, ws: Workspace) -> None:
    from pipeline.console import quiet_libraries

    quiet_libraries()
    from pipeline import package

    package.main(params, ws)


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
        if args.worker:
            _tune(params, Workspace(), worker=True)
        else:
            STAGES[args.stage](params, Workspace())
    except PipelineError as exc:  # the user's to fix: one line; anything else keeps its traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
