"""The served model: an ONNX graph plus its model card, both checked before serving.

Only numpy, onnxruntime and pydantic: no BentoML, TensorFlow, Keras, MLflow, DVC or
pipeline code, so the serving image stays small and start-up stays fast.
"""

import functools
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from pydantic import ValidationError

from api_models import ModelCard, conformal_half_width, validation_summary

MODEL_FILE = "model.onnx"
CARD_FILE = "card.json"
# Which MLflow run, registry version and commit produced the files: written beside them by the
# pipeline but outside DVC's hash of the package, since it differs between identical rebuilds.
PROVENANCE_FILE = "provenance.json"
PROVENANCE_KEYS = ("mlflow", "git_commit")

logger = logging.getLogger(__name__)


class StartupError(RuntimeError):
    """The service must not start; the message says what to fix."""


@dataclass(frozen=True)
class Outputs:
    """What the model says about a batch of rows (float64, one entry per row)."""

    values: np.ndarray  # regression: predictions [n]; classification: probabilities [n, classes]
    extrapolated: np.ndarray  # bool [n]
    imputed: list[list[str]] | None = None  # per row, the features filled in (imputing models only)
    unseen: list[list[str]] | None = None  # per row, the categories outside the vocabulary (categorical models only)


class ModelBundle:
    """An ONNX Runtime session and the model card it was exported with."""

    def __init__(self, card: ModelCard, session: ort.InferenceSession, source: Path):
        self.card = card
        self.source = source
        self._session = session
        self._input_name = session.get_inputs()[0].name
        self._output_names = [session.get_outputs()[0].name]
        # A categorical column holds a category index: no range to leave (unseen categories are flagged apart).
        numeric = [f.kind == "numeric" for f in card.features]
        self._mins = np.array([f.min if n else -np.inf for f, n in zip(card.features, numeric)], dtype=np.float64)
        self._maxs = np.array([f.max if n else np.inf for f, n in zip(card.features, numeric)], dtype=np.float64)
        # Per categorical feature (by position): category -> model index (1..n; 0 is out-of-vocabulary).
        self._indices = {
            i: {category: index for index, category in enumerate(f.categories, 1)}
            for i, f in enumerate(card.features)
            if f.kind == "categorical"
        }
        self.class_labels: list = []
        if card.interval is not None:
            self._sorted_residuals = sorted(card.interval.abs_residuals)
        self._check_against_card()

    # --- loading -------------------------------------------------------------------

    @classmethod
    def load(cls, model_dir: Path) -> "ModelBundle":
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise StartupError(f"model directory {model_dir} does not exist")
        card = read_card(model_dir / CARD_FILE, read_provenance(model_dir))
        session = open_session(model_dir / MODEL_FILE)
        return cls(card, session, model_dir)

    def _check_against_card(self) -> None:
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        where = self.source / MODEL_FILE
        if len(inputs) != 1:
            raise StartupError(f"{where}: expected 1 input, found {len(inputs)}")
        (model_input,) = inputs
        if model_input.type != "tensor(float)" or len(model_input.shape) != 2:
            raise StartupError(
                f"{where}: input {model_input.name!r} must be a float32 matrix [batch, features], "
                f"found {model_input.type} with shape {model_input.shape}"
            )
        width = model_input.shape[1]
        n_features = len(self.card.features)
        if isinstance(width, int) and width != n_features:
            raise StartupError(
                f"card/model mismatch: {CARD_FILE} lists {n_features} feature(s) "
                f"({', '.join(self.card.feature_names)}) but {MODEL_FILE} takes "
                f"{width} input column(s)"
            )
        if outputs[0].type != "tensor(float)":
            raise StartupError(f"{where}: output must be float32, found {outputs[0].type}")

        # One real inference on the middle of the training range: proves the graph runs
        # (a symbolic input width too) and shows the output width the task needs.
        probe = np.array(
            [[1.0 if f.kind == "categorical" else (f.min + f.max) / 2 for f in self.card.features]],
            dtype=np.float32,
        )
        try:
            out = self._run(probe)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise StartupError(
                f"{where}: inference on one row of {n_features} feature(s) failed: {exc}"
            ) from exc
        if out.ndim != 2 or out.shape[0] != 1 or not np.isfinite(out).all():
            raise StartupError(f"{where}: probe inference gave {out!r}, expected one finite row")
        self._check_output_width(out)

    def _check_output_width(self, out: np.ndarray) -> None:
        task, width, labels = self.card.task, out.shape[1], self.card.class_labels
        if task in ("regression", "binary") and width != 1:
            raise StartupError(f"a {task} model must have 1 output column, this one has {width}")
        if task == "binary":
            self.class_labels = list(labels) if labels is not None else [0, 1]
        if task == "multiclass":
            if width < 2:
                raise StartupError(
                    f"a multiclass model needs >= 2 output columns, this one has {width}"
                )
            if labels is not None and len(labels) != width:
                raise StartupError(
                    f"card/model mismatch: {len(labels)} class label(s) but {width} output columns"
                )
            self.class_labels = list(labels) if labels is not None else list(range(width))
        if task != "regression" and ((out < 0).any() or (out > 1).any()):
            raise StartupError(f"a {task} model must output probabilities, got {out.tolist()}")

    # --- inference -----------------------------------------------------------------

    @property
    def n_features(self) -> int:
        return len(self._mins)

    def _run(self, rows: np.ndarray) -> np.ndarray:
        return self._session.run(self._output_names, {self._input_name: rows})[0]

    def fill_missing(self, rows: list[list[float | None]]) -> tuple[list[list[float]], list[list[str]] | None]:
        """Rows with each null replaced by its feature's fill value, and which were filled per row
        (None for a model trained without imputation, whose request model admits no null)."""
        imputation = self.card.imputation
        if imputation is None:
            return rows, None
        names = self.card.feature_names
        fill = [imputation.values[name] for name in names]
        filled, imputed = [], []
        for row in rows:
            missing = [i for i, value in enumerate(row) if value is None]
            filled.append([fill[i] if value is None else value for i, value in enumerate(row)] if missing else row)
            imputed.append([names[i] for i in missing])
        return filled, imputed

    def encode_categories(self, rows: list[list]) -> tuple[list[list], list[list[str]] | None]:
        """Rows with each category replaced by its model index (0 when it is not in the vocabulary),
        and per row the features whose category was not (None for a model without categorical features).
        A null stays null, for `fill_missing`."""
        if not self._indices:
            return rows, None
        names = self.card.feature_names
        encoded, unseen = [], []
        for row in rows:
            row, missed = list(row), []
            for i, index in self._indices.items():
                if row[i] is not None:
                    row[i] = index.get(row[i], 0)
                    if row[i] == 0:
                        missed.append(names[i])
            encoded.append(row)
            unseen.append(missed)
        return encoded, unseen

    def infer(self, rows: list[list[float | str | None]]) -> Outputs:
        """Run validated rows (card feature order; a string for a categorical feature; null only for an
        imputing model) through the model."""
        rows, unseen = self.encode_categories(rows)
        rows, imputed = self.fill_missing(rows)
        exact = np.asarray(rows, dtype=np.float64)
        # The range check uses the values as sent: 1.00000001 is outside [.., 1] even
        # though float32 would round it to 1.
        extrapolated = ((exact < self._mins) | (exact > self._maxs)).any(axis=1)
        if unseen is not None:
            extrapolated |= np.array([bool(missed) for missed in unseen])
        out = self._run(exact.astype(np.float32)).astype(np.float64)
        if self.card.task == "regression":
            values = out[:, 0]
        elif self.card.task == "binary":
            values = np.column_stack([1.0 - out[:, 0], out[:, 0]])
        else:
            values = out
        return Outputs(values=values, extrapolated=extrapolated, imputed=imputed, unseen=unseen)

    def labels_for(self, probabilities: np.ndarray) -> list:
        if self.card.task == "binary":  # P(class 1) >= 0.5 -> class 1
            picks = (probabilities[:, 1] >= 0.5).astype(int)
        else:
            picks = probabilities.argmax(axis=1)
        return [self.class_labels[i] for i in picks]

    @functools.lru_cache(maxsize=128)
    def interval_half_width(self, coverage: float) -> float | None:
        """The conformal half-width at `coverage`; None where no finite interval reaches it."""
        return conformal_half_width(self._sorted_residuals, coverage)

    def max_bounded_coverage(self) -> float:
        """Largest coverage that still gives a finite interval: n / (n + 1)."""
        n = len(self._sorted_residuals)
        return n / (n + 1)


def read_provenance(model_dir: Path) -> dict:
    """The provenance fields for the card, or {} when there are none for this model.onnx.

    A provenance file left from another build (e.g. after `dvc checkout` of an older package)
    would label the model with someone else's run: it is ignored with a warning instead.
    """
    path, model = model_dir / PROVENANCE_FILE, model_dir / MODEL_FILE
    if not (path.is_file() and model.is_file()):
        return {}  # a missing model.onnx is reported by open_session
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        model_sha256 = hashlib.sha256(model.read_bytes()).hexdigest()
    except (OSError, ValueError) as exc:
        raise StartupError(f"{path} cannot be read: {exc}") from None
    if not isinstance(raw, dict) or raw.get("model_sha256") != model_sha256:
        logger.warning("%s describes another %s; serving without run provenance", path, MODEL_FILE)
        return {}
    return {key: raw[key] for key in PROVENANCE_KEYS if key in raw}


def read_card(path: Path, provenance: dict | None = None) -> ModelCard:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StartupError(f"model card {path} is missing") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise StartupError(f"model card {path} cannot be read: {exc}") from exc
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise StartupError(f"model card {path} is not valid JSON: {exc}") from exc
    if isinstance(raw, dict):
        raw = {**raw, **(provenance or {})}
    try:
        return ModelCard.model_validate(raw)
    except ValidationError as exc:
        raise StartupError(f"model card {path} is invalid: {validation_summary(exc)}") from None


def open_session(path: Path) -> ort.InferenceSession:
    if not path.is_file():
        raise StartupError(f"model file {path} is missing")
    options = ort.SessionOptions()
    # One thread per session: the service scales with HTTP workers, and a tiny MLP
    # gains nothing from intra-op parallelism but pays for thread wake-ups.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise StartupError(f"model file {path} is not a loadable ONNX model: {exc}") from exc
