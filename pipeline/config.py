"""params.yaml -> typed, validated configuration.

The file is parsed once into frozen pydantic models that reject unknown keys, wrong types and
out-of-range values; stages only ever see these objects.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline.errors import PipelineError

DEFAULT_PARAMS = Path("params.yaml")


class ConfigError(PipelineError):
    """A params file that cannot be used; the message is one line naming the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


Optimizer = Literal["sgd", "adam"]
Activation = Literal["relu", "tanh", "sigmoid", "elu", "gelu", "swish"]
Selection = Literal["best", "one_se"]


class SyntheticClassification(_Strict):
    """scikit-learn's make_classification: n_classes = 2 gives a binary task, more a multi-class one."""

    n_features: int = Field(ge=1, le=1000)
    n_informative: int = Field(ge=1, le=1000)
    n_classes: int = Field(ge=2, le=100)
    class_sep: float = Field(gt=0)

    @model_validator(mode="after")
    def _informative_fit(self) -> SyntheticClassification:
        if self.n_informative > self.n_features:
            raise ValueError(f"data.classification.n_informative ({self.n_informative}) must not exceed "
                             f"data.classification.n_features ({self.n_features})")
        return self


class FileSource(_Strict):
    """The user's own table (CSV or Parquet)."""

    path: str = Field(min_length=1)
    target: str = Field(min_length=1)
    features: list[str] | None = Field(default=None, description="null = every column but the target")
    impute: Literal["none", "mean", "median"]
    categorical: list[str] = Field(default_factory=list, description="whole-number columns to read as categories "
                                   "(text columns always are)")


class SklearnSource(_Strict):
    name: Literal["diabetes", "breast_cancer", "iris", "wine", "digits"]


class DataConfig(_Strict):
    source: Literal["synthetic", "file", "sklearn"]
    task: Literal["auto", "regression", "binary", "multiclass"]
    seed: int = Field(ge=0)
    n_samples: int = Field(ge=10, le=10_000_000)
    synthetic: Literal["line", "classification"]
    # the tutorial's line: y = slope * x + intercept + N(0, noise^2)
    noise: float = Field(ge=0)
    slope: float
    intercept: float
    x_min: float
    x_max: float
    x_spacing: Literal["linspace", "uniform"]
    classification: SyntheticClassification
    file: FileSource
    sklearn: SklearnSource

    @model_validator(mode="after")
    def _range_is_ordered(self) -> DataConfig:
        if not self.x_min < self.x_max:
            raise ValueError(f"data.x_min ({self.x_min}) must be below data.x_max ({self.x_max})")
        return self

    @property
    def is_line(self) -> bool:
        """The tutorial's synthetic line, for which the generating noise (and so a noise floor) is known."""
        return self.source == "synthetic" and self.synthetic == "line"


class SplitConfig(_Strict):
    train: float = Field(gt=0, lt=1)
    val: float = Field(gt=0, lt=1)
    test: float = Field(gt=0, lt=1)
    seed: int = Field(ge=0)
    folds: int = Field(ge=1, le=20, description="1 = train on train, stop on val; k >= 2 = k-fold cross-validation "
                       "of train + val for tuning, and a bag of k networks")
    # What `split` fits on the training rows besides the imputation fill values (pipeline/categories.py).
    max_categories: int = Field(default=100, ge=1, le=100_000, description="vocabulary per categorical feature: its "
                                "most frequent training categories; rarer ones share the out-of-vocabulary index 0")
    embed_above: int = Field(default=10, ge=1, le=100_000, description="a categorical feature with more categories "
                             "than this is embedded (learnt); one with at most this many is one-hot encoded")
    near_constant: float = Field(default=0.999, gt=0.5, le=1.0, description="a feature whose most common value fills "
                                 "at least this share of the training rows is dropped")

    @model_validator(mode="after")
    def _fractions_sum_to_one(self) -> SplitConfig:
        total = self.train + self.val + self.test
        if not math.isclose(total, 1.0, abs_tol=1e-9):
            raise ValueError(f"split.train + split.val + split.test must sum to 1, got {total:g}")
        return self


class HyperParams(_Strict):
    """Everything that shapes one fit: the architecture and the optimiser settings."""

    units_1: int = Field(ge=1, le=4096)
    units_2: int = Field(ge=1, le=4096)
    activation: Activation
    dropout: float = Field(ge=0, lt=1)
    l1: float = Field(ge=0)
    l2: float = Field(ge=0)
    optimizer: Optimizer
    learning_rate: float = Field(gt=0, le=10)
    batch_size: int = Field(ge=1, le=1_000_000)


class TrainConfig(_Strict):
    hyperparams: HyperParams
    epochs: int = Field(ge=1, le=100_000)
    patience: int = Field(ge=0, description="epochs without a better validation loss; 0 = no early stopping")
    min_epochs: int = Field(ge=0, description="early stopping never stops before this epoch; epochs still caps the run")
    seed: int = Field(ge=0)
    max_epoch_steps: int | None = Field(default=200, ge=1, le=10_000_000, description="an epoch is one pass over the "
                                        "training rows or this many mini-batch steps, whichever is fewer; null = a pass")
    stream_above_rows: int | None = Field(default=500_000, ge=0, description="more training rows than this are read "
                                          "from disk in shuffled chunks as training goes (tf.data), not held in memory;"
                                          " null = always in memory")

    @model_validator(mode="after")
    def _epochs_reach_min_epochs(self) -> TrainConfig:
        # Otherwise `-S train.epochs=50` silently trains 50 epochs while min_epochs promises early stopping from 100.
        if self.epochs < self.min_epochs:
            raise ValueError(f"train.epochs ({self.epochs}) must be at least train.min_epochs ({self.min_epochs});"
                             f" lower train.min_epochs too to train for fewer epochs")
        return self


class FloatRange(_Strict):
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> FloatRange:
        if not self.low <= self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scale range needs low > 0, got {self.low}")
        return self


class IntRange(_Strict):
    low: int = Field(ge=1)
    high: int = Field(ge=1)
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> IntRange:
        if not self.low <= self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        return self


class SearchSpace(_Strict):
    """Ranges and choices Optuna searches; anything not searched comes from train.hyperparams."""

    learning_rate: FloatRange
    batch_size: list[int] = Field(min_length=1)
    units_1: IntRange
    units_2: IntRange
    optimizer: list[Optimizer] = Field(min_length=1)
    activation: list[Activation] = Field(min_length=1)
    dropout: FloatRange
    l2: FloatRange


class PrunerConfig(_Strict):
    n_startup_trials: int = Field(ge=0)
    n_warmup_steps: int = Field(ge=0)


class TuneConfig(_Strict):
    n_trials: int = Field(ge=0, le=100_000, description="0 = no search: train.hyperparams are used as they are")
    seed: int = Field(ge=0)
    epochs: int = Field(ge=1, le=100_000)
    patience: int = Field(ge=0)
    storage: str | None = Field(default=None, description="Optuna storage URL; default sqlite:///optuna.db")
    pruner: PrunerConfig
    space: SearchSpace
    select: Selection = Field(default="best", description="which finished trial train gets: best = the lowest mean "
                              "validation loss; one_se = the most regularised within one standard error of it")
    sample_rows: int | None = Field(default=10_000, ge=100, le=100_000_000, description="trials fit and validate on a "
                                    "seeded sample of at most this many train + validation rows; null = all rows")
    timeout_minutes: float | None = Field(default=None, gt=0, le=10_000, allow_inf_nan=False, description="no trial starts after this "
                                          "many minutes of the stage; null = no time budget")


class EvaluateConfig(_Strict):
    noise_floor_points: int = Field(ge=100, le=10_000_000)
    seed: int = Field(ge=0)
    min_fair_rows: int = Field(ge=1)
    interval_coverage: float = Field(gt=0, lt=1)
    sample_rows: int | None = Field(default=100_000, ge=100, le=100_000_000, description="the baselines, the "
                                    "tutorial's configuration and the card's training profile use a seeded sample of at "
                                    "most this many training rows; null = all of them. Test metrics always use every test row")


class TrackingConfig(_Strict):
    experiment: str = Field(min_length=1)
    registered_model: str = Field(min_length=1)


class MonitorConfig(_Strict):
    """`python -m pipeline monitor`: when logged traffic calls for retraining (exit status 1)."""

    psi_threshold: float = Field(gt=0, description="a feature (or the output) drifted when its PSI exceeds this")
    min_rows: int = Field(ge=1, description="fewer logged rows: too few to judge drift")
    error_ratio: float = Field(gt=0, description="degraded when the live error (from feedback) exceeds the test "
                               "error times this")
    min_feedback_rows: int = Field(ge=1, description="fewer labelled rows: too few to judge the live error")


class Params(_Strict):
    data: DataConfig
    split: SplitConfig
    tune: TuneConfig
    train: TrainConfig
    evaluate: EvaluateConfig
    tracking: TrackingConfig
    monitor: MonitorConfig

    @model_validator(mode="after")
    def _one_se_needs_folds(self) -> Params:
        if self.tune.select == "one_se" and self.split.folds < 2:
            raise ValueError(f"tune.select: one_se takes its standard error over the folds, so it needs split.folds"
                             f" >= 2 (got {self.split.folds}); use tune.select: best with one validation split")
        return self


def _allowed_keys(section: tuple) -> list[str]:
    model: type[BaseModel] = Params
    for part in section:
        model = model.model_fields[part].annotation
    return list(model.model_fields)


def _describe(error: dict) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "params"
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"{key}: unknown key; allowed here: {', '.join(_allowed_keys(error['loc'][:-1]))}"
    if kind == "missing":
        return f"{key}: required key is missing"
    message = error["msg"].removeprefix("Value error, ")
    if kind == "literal_error":
        return f"{key}: {error['input']!r} is not allowed; {message[0].lower()}{message[1:]}"
    if key == "params" or kind == "value_error":
        return message if key == "params" or key in message else f"{key}: {message}"
    return f"{key}: {message} (got {error['input']!r})"


def parse_params(raw: object) -> Params:
    """Validate an already-loaded YAML document; raise ConfigError with one line per problem."""
    if not isinstance(raw, dict):
        raise ConfigError("params.yaml must be a mapping of sections (data, split, train, ...)")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError("; ".join(_describe(e) for e in exc.errors())) from None


def load_params(path: Path = DEFAULT_PARAMS) -> Params:
    """Read and validate params.yaml."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or exc.__class__.__name__
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    return parse_params(raw)
