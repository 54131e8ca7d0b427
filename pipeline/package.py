"""The package stage: champion model -> ONNX (parity-checked) + model card -> BentoML model and bento.

The service reads only what this stage writes (model.onnx, card.json, provenance.json); it never
imports TensorFlow, MLflow or this package. model.onnx and card.json depend only on the stage's
inputs, so a fresh clone's `dvc repro` reproduces dvc.lock; which MLflow run, registry version and
commit they came from goes to provenance.json, which .dvcignore keeps out of DVC's hash.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import mlflow
import numpy as np
from mlflow.tracking import MlflowClient

from pipeline import tracking
from pipeline.artifacts import atomic_dir, ensure_writable, file_sha256, write_json
from pipeline.config import Params
from pipeline.data import Schema, features_and_target, numeric_ranges, read_sample
from pipeline.errors import PipelineError
from pipeline.card import stored_card, validated
from pipeline.paths import Workspace
from pipeline.model import predict
from pipeline.registry import CHAMPION

PROVENANCE_FILE = "provenance.json"  # the service's model_bundle.PROVENANCE_FILE
PARITY_TOLERANCE = 1e-5
PARITY_TEST_ROWS = 20_000  # the test rows checked (all of them up to this many); the far points add the extremes


def parity_inputs(split_dir: Path) -> np.ndarray:
    """Test rows (a seeded sample of PARITY_TEST_ROWS at most) plus points far outside the training range (10x its
    span on each side, from the training split's minimum and maximum); in those, each categorical column cycles
    through every index of its vocabulary, 0 (out-of-vocabulary) too."""
    schema = Schema.read(split_dir / "schema.json")
    x_test, _ = features_and_target(read_sample(split_dir / "test.parquet", PARITY_TEST_ROWS, seed=0), schema)
    ranges = numeric_ranges(split_dir / "train.parquet", [n for n in schema.features if n not in schema.categories])
    low, high = (np.array([ranges.get(name, (0.0, 0.0))[end] for name in schema.features], dtype=np.float32)
                 for end in (0, 1))
    span = np.maximum(high - low, 1e-6)
    rows = max([201] + [len(vocab) + 1 for vocab in schema.categories.values()])
    far = np.linspace(low - 10 * span, high + 10 * span, rows, dtype=np.float32)
    for name, vocab in schema.categories.items():
        far[:, schema.features.index(name)] = np.arange(len(far)) % (len(vocab) + 1)
    return np.concatenate([x_test, far]).astype(np.float32)


def export_onnx(model, path: Path, check_inputs: np.ndarray) -> float:
    """Export with Keras and return max |ONNX - Keras| on `check_inputs`; raise when an output differs by
    more than the tolerance (absolute up to 1, relative to outputs larger than 1)."""
    import onnxruntime as ort

    keras_out = predict(model, check_inputs)  # also builds a freshly loaded model, which export needs
    with warnings.catch_warnings():  # Keras' bundled tf2onnx probes np.object, which NumPy 2 warns about
        warnings.filterwarnings("ignore", message="In the future `np.object`", category=FutureWarning)
        model.export(str(path), format="onnx", verbose=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {session.get_inputs()[0].name: check_inputs})[0]
    difference = np.abs(onnx_out - keras_out)
    # Relative beyond 1: float32 spacing grows with the value (an output of 5000 is exact only to ~5e-4).
    relative = float(np.max(difference / np.maximum(1.0, np.abs(keras_out))))
    if not relative <= PARITY_TOLERANCE:
        raise PipelineError(f"package: ONNX export differs from Keras by {float(np.max(difference)):.3g} "
                            f"({relative:.3g} relative; allowed {PARITY_TOLERANCE:g} of max(1, |output|))")
    return float(np.max(difference))


def provenance(version, run, model_path: Path) -> dict:
    """Where the packaged model came from; `model_sha256` ties it to this exact model.onnx."""
    return {
        "model_sha256": file_sha256(model_path),
        "mlflow": {"run_id": version.run_id, "registered_model": version.name, "model_version": str(version.version),
                   "alias": CHAMPION},
        "git_commit": run.data.tags.get("git_commit") if run else None,
    }


def store_and_build(ws: Workspace, name: str) -> str:
    """Put the package in the BentoML model store under `name` and build the bento from service/,
    told by the bento argument model_name which model to serve; return the bento's tag.

    `bentoml build` runs in a process of its own: it imports the service's modules as top-level
    modules (`service`, `api_models`), which must not meet this process's `service` package.
    """
    os.environ.setdefault("BENTOML_HOME", str(ws.bentoml_home.resolve()))
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    import bentoml

    with bentoml.models.create(name, labels={"source": "pipeline"}) as stored:
        for item in ws.package.iterdir():
            shutil.copy2(item, Path(stored.path) / item.name)
    build = subprocess.run([str(Path(sys.executable).with_name("bentoml")), "build", "--bentofile", "bentofile.yaml",
                            "--arg", f"model_name={name}", "--output", "tag", "."],
                           cwd=ws.service, capture_output=True, text=True)
    tags = [line.removeprefix("__tag__:") for line in build.stdout.splitlines() if line.startswith("__tag__:")]
    if build.returncode != 0 or not tags:
        raise RuntimeError(f"bentoml build failed ({build.returncode}):\n{build.stdout}{build.stderr}")
    return tags[-1]


def main(params: Params, ws: Workspace) -> None:
    ensure_writable(ws.package, ws.bento_info)
    tracking.configure(params.tracking)
    name = json.loads(ws.registry.read_text())["registered_model"]
    version = MlflowClient().get_model_version_by_alias(name, CHAMPION)
    run = MlflowClient().get_run(version.run_id) if version.run_id else None
    model = mlflow.tensorflow.load_model(f"models:/{name}@{CHAMPION}", keras_model_kwargs={"safe_mode": True})
    with atomic_dir(ws.package) as staging:
        gap = export_onnx(model, staging / "model.onnx", parity_inputs(ws.split_dir))
        write_json(staging / "card.json", validated({**stored_card(version), "onnx_parity_max_abs_diff": gap}))
        write_json(staging / PROVENANCE_FILE, provenance(version, run, staging / "model.onnx"))
    tag = store_and_build(ws, name)
    write_json(ws.bento_info, {"bento": tag, "model_version": str(version.version)})
    print(f"packaged {name} v{version.version}: ONNX parity {gap:.2g}, bento {tag}")
