"""`python -m pipeline <stage>`: one command per DVC stage, each reading params.yaml once.

Heavy imports (TensorFlow, MLflow) happen inside the commands that need them, so `generate` and
`split` start in well under a second. Each stage function imports only what its stage runs:
tests/pipeline/test_stage_deps.py derives dvc.yaml's code deps from these imports.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

from pipeline.config import DEFAULT_PARAMS, Params, load_params
from pipeline.errors import PipelineError
from pipeline.paths import Workspace


def _generate(params: Params, ws: Workspace) -> None:
    """Load the data params.yaml's `data` section names (synthetic, your file, or a scikit-learn set).

    reads:  params.yaml data; data.file.path when data.source is file
    writes: data/raw.parquet (the table), data/schema.json (features, target, task)
    """
    from pipeline.artifacts import ensure_writable
    from pipeline.data import load, task_line, write_frame

    ensure_writable(ws.raw, ws.schema)
    frame, schema = load(params.data)
    write_frame(frame, ws.raw)
    schema.write(ws.schema)
    print(task_line(schema))
    print(f"{params.data.source} data: {len(frame)} rows, {len(schema.features)} feature(s), task {schema.task}"
          f" -> {ws.raw}")


def _split(params: Params, ws: Workspace) -> None:
    """Cut the table into train / validation / test (and k folds of train + val when split.folds >= 2).

    reads:  params.yaml split; data/raw.parquet, data/schema.json
    writes: data/split/ (train, val and test parquet files; schema.json with the fill values, the categorical
            features' vocabularies and the features dropped as near-constant, all learnt on the training rows)
    """
    import pandas as pd

    from pipeline.data import Schema, categories_line, dropped_line, split, write_splits

    splits = split(pd.read_parquet(ws.raw), Schema.read(ws.schema), params.split)
    write_splits(splits, ws.split_dir)
    for line in (dropped_line(splits.schema, params.split.near_constant), categories_line(splits)):
        if line:
            print(line)
    folds = f", train + val in {params.split.folds} folds" if params.split.folds > 1 else ""
    print(f"split train/val/test = {len(splits.train)}/{len(splits.val)}/{len(splits.test)}{folds} -> {ws.split_dir}")


def _tune(params: Params, ws: Workspace, worker: bool = False) -> None:
    """Search hyperparameters with Optuna; the best trial's values feed train.

    reads:  params.yaml tune, train.hyperparams, train.seed, split, tracking; data/split/
    writes: models/best_params.yaml; optuna.db (the study, resumed on re-runs; env TUNE_STORAGE for another
            store); MLflow: one parent run and one child run per trial (mlflow.db unless MLFLOW_TRACKING_URI)
    """
    from pipeline.console import quiet_libraries

    quiet_libraries()
    from pipeline import tune

    tune.main(params, ws, worker=worker)


def _train(params: Params, ws: Workspace) -> None:
    """Fit the MLP with the tuned hyperparameters, early-stopped on validation loss.

    reads:  params.yaml train, split, tracking; models/best_params.yaml; data/split/
    writes: models/model.keras, plots/learning_curve.csv; MLflow: one train run with the model and its data
    """
    from pipeline.console import quiet_libraries

    quiet_libraries()
    from pipeline import train
    from pipeline.tune import read_best_params

    train.main(params, ws, read_best_params(ws.best_params))


def _evaluate(params: Params, ws: Workspace) -> None:
    """Score the model on the test set against baselines; register it and move the champion alias on a fair win.

    reads:  params.yaml data, split, evaluate, train.seed, tracking; models/model.keras, data/split/
    writes: metrics/evaluate.json, models/registry.json, plots/evaluate/; MLflow: test metrics on the train run,
            a registered model version (the `champion` alias and the runs' `champion` tag)
    """
    from pipeline.console import quiet_libraries

    quiet_libraries()
    from pipeline import evaluate

    evaluate.main(params, ws)


def _package(params: Params, ws: Workspace) -> None:
    """Export the champion to ONNX and build the BentoML service around it.

    reads:  params.yaml split, tracking; models/registry.json, metrics/evaluate.json; MLflow: the champion
    writes: models/package/ (model.onnx, card.json), a bento in bentoml/ (models/bento.json names it)
    """
    from pipeline.console import quiet_libraries

    quiet_libraries()
    from pipeline import package

    package.main(params, ws)


STAGES = {"generate": _generate, "split": _split, "tune": _tune, "train": _train, "evaluate": _evaluate,
          "package": _package}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__.splitlines()[0],
                                     epilog="`python -m pipeline <stage> --help` says what a stage reads and writes.")
    stages = parser.add_subparsers(dest="stage", required=True, metavar="stage", title="stages")
    for name, function in STAGES.items():
        summary, _, details = (function.__doc__ or "").partition("\n")
        sub = stages.add_parser(name, help=summary, description=f"{summary}\n{textwrap.dedent(details)}",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
        sub.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="params file (default: %(default)s)")
        if name == "tune":
            sub.add_argument("--worker", action="store_true",
                             help="join the search that `dvc repro` runs (same params, data and code; shared "
                                  "TUNE_STORAGE) from another process or machine and run trials until it is complete")
    args = parser.parse_args(argv)
    worker = getattr(args, "worker", False)
    try:
        params = load_params(args.params)
        if worker:
            _tune(params, Workspace(), worker=True)
        else:
            STAGES[args.stage](params, Workspace())
    except PipelineError as exc:  # the user's to fix: one line; anything else keeps its traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
