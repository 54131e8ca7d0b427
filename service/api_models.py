"""Pydantic models for everything that crosses the service boundary.

- `ModelCard` checks card.json at start-up and documents GET /metadata.
- `build_request_model` makes the /predict request model from the card, so the
  OpenAPI spec at /docs.json states the real feature count, feature names and
  row limit, and pydantic-core enforces them (in Rust, before our code runs).
- The answer models document the /predict response.

BentoML 1.4 publishes the spec as OpenAPI 3.0 but copies pydantic's JSON Schema
(draft 2020-12) into it, and it flattens the top level of a request/response
schema by keeping only the first branch of an `anyOf`. `OpenAPIModel` therefore
emits the OpenAPI 3.0 dialect (`nullable`, boolean exclusive bounds, `enum`
instead of `const`), and no top-level field of a request/response is nullable.
"""

import math
from collections.abc import Callable
from fractions import Fraction
from operator import attrgetter
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    AllowInfNan,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    StrictInt,
    StrictStr,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.json_schema import GenerateJsonSchema
from pydantic_core import PydanticCustomError

# Feature values beyond this magnitude are rejected. Real features are nowhere near it,
# and it keeps float32 arithmetic inside a trained MLP far from overflow, so a request
# that passes validation gets finite predictions (a 200, not an error).
MAX_ABS_FEATURE_VALUE = 1e15

# A category sent to /predict may be at most this long (or as long as the longest one in the
# vocabulary): an unseen category is answered, not refused, so its length must be bounded.
MAX_CATEGORY_CHARS = 200

# Categories named in a field's description (the OpenAPI spec); GET /metadata lists them all.
DESCRIBED_CATEGORIES = 30

# At most this many validation problems are spelled out in one error message.
MAX_REPORTED_ERRORS = 5


class OpenAPI30JsonSchema(GenerateJsonSchema):
    """Pydantic's JSON Schema generator, speaking the OpenAPI 3.0 dialect that BentoML declares."""

    def nullable_schema(self, schema):
        inner = self.generate_inner(schema["schema"])
        if "$ref" in inner:  # OpenAPI 3.0 ignores keywords next to a $ref
            return {"allOf": [inner], "nullable": True}
        return {**inner, "nullable": True}

    def float_schema(self, schema):
        return _boolean_exclusive_bounds(super().float_schema(schema))

    def int_schema(self, schema):
        return _boolean_exclusive_bounds(super().int_schema(schema))

    def literal_schema(self, schema):
        json_schema = super().literal_schema(schema)
        if "const" in json_schema:
            json_schema["enum"] = [json_schema.pop("const")]
        return json_schema

    def default_schema(self, schema):
        # `x` and `records` default to None only to mean "absent"; null itself is not allowed.
        json_schema = super().default_schema(schema)
        if json_schema.get("default", ...) is None and not json_schema.get("nullable"):
            del json_schema["default"]
        return json_schema


def _boolean_exclusive_bounds(json_schema: dict[str, Any]) -> dict[str, Any]:
    for exclusive, inclusive in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if exclusive in json_schema:
            json_schema[inclusive] = json_schema.pop(exclusive)
            json_schema[exclusive] = True
    return json_schema


class OpenAPIModel(BaseModel):
    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        kwargs.setdefault("schema_generator", OpenAPI30JsonSchema)
        return super().model_json_schema(*args, **kwargs)


class StrictBody(OpenAPIModel):
    """Client input: no type coercion (no "1" for 1, no true for 1) and no unknown keys."""

    model_config = ConfigDict(extra="forbid", strict=True, hide_input_in_errors=True)


FiniteFloat = Annotated[float, AllowInfNan(False)]
FeatureValue = Annotated[
    float,
    Strict(),
    AllowInfNan(False),
    Field(ge=-MAX_ABS_FEATURE_VALUE, le=MAX_ABS_FEATURE_VALUE),
]
Coverage = Annotated[float, Strict(), AllowInfNan(False), Field(gt=0, lt=1)]
ClassLabel = StrictStr | StrictInt


# --- the model card (card.json, GET /metadata) -----------------------------------------


class FeatureSpec(OpenAPIModel):
    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1)
    kind: Literal["numeric", "categorical"] = Field(
        default="numeric", description="numeric: a number; categorical: a string, one of `categories`."
    )
    min: FiniteFloat | None = Field(default=None, description="Smallest value seen in training (numeric only).")
    max: FiniteFloat | None = Field(default=None, description="Largest value seen in training (numeric only).")
    categories: list[str] | None = Field(
        default=None,
        description="Categorical only: the vocabulary learnt on the training rows, in model index order "
        "(the category at position i is model input i + 1; 0 is out-of-vocabulary). Another string is "
        "answered too, and flagged in the answer's unseen_categories.",
    )

    @model_validator(mode="after")
    def _kind_needs(self):
        if self.kind == "numeric":
            if self.min is None or self.max is None or self.categories is not None:
                raise ValueError(f"numeric feature {self.name!r} needs min and max, and no categories")
            if self.min > self.max:
                raise ValueError(f"feature {self.name!r}: min {self.min} > max {self.max}")
        else:
            if not self.categories or self.min is not None or self.max is not None:
                raise ValueError(f"categorical feature {self.name!r} needs categories, and no min or max")
            if len(set(self.categories)) != len(self.categories):
                raise ValueError(f"categorical feature {self.name!r}: categories must be unique")
        return self


def conformal_half_width(sorted_residuals: list[float], coverage: float) -> float | None:
    """Split-conformal quantile: the ceil((n+1)*coverage)-th smallest |residual|.

    None when that rank exceeds n: with n calibration points no finite interval reaches this
    coverage. Fraction(str(coverage)) keeps 0.07 * 100 exactly 7. The pipeline's evaluate
    stage and the service both use this function, so the interval a card's metrics report is
    the interval the service serves.
    """
    rank = math.ceil((len(sorted_residuals) + 1) * Fraction(str(coverage)))
    return None if rank > len(sorted_residuals) else sorted_residuals[rank - 1]


class IntervalSpec(OpenAPIModel):
    model_config = ConfigDict(extra="allow")

    method: Literal["split-conformal", "cross-conformal"]
    calibration: str = "validation"
    default_coverage: Coverage = Field(description="params.yaml's evaluate.interval_coverage.")
    abs_residuals: list[Annotated[FiniteFloat, Field(ge=0)]] = Field(
        min_length=1, description="Absolute residuals |y - yhat| on the calibration set, sorted; above 10,000 of them, "
        "10,000 order statistics chosen so that no interval is narrower (`calibration` says so)."
    )


class ImputationSpec(OpenAPIModel):
    model_config = ConfigDict(extra="allow")

    method: Literal["mean", "median"]
    values: dict[str, FiniteFloat] = Field(
        description="Per feature, the value a missing (null) input is filled with: the training rows' statistic."
    )


class Provenance(OpenAPIModel):
    model_config = ConfigDict(extra="allow")

    run_id: str | None = None
    registered_model: str | None = None
    model_version: str | None = None
    alias: str | None = None


class ProfileColumn(OpenAPIModel):
    """One column of the reference profile: bins and the training rows' share in each."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1)
    kind: Literal["numeric", "categorical"]
    edges: list[FiniteFloat] = Field(
        description="Ascending cut points; bin i holds edges[i-1] < value <= edges[i]. Numeric: training "
        "quantiles. Categorical: i + 0.5 on the category index (0 = out of vocabulary)."
    )
    expected: list[Annotated[FiniteFloat, Field(ge=0, le=1)]] = Field(
        description="Share of training rows per bin (len(edges) + 1 values)."
    )
    categories: list[str] | None = Field(default=None, description="Categorical: the bins' categories.")

    @model_validator(mode="after")
    def _consistent(self):
        if any(b <= a for a, b in zip(self.edges, self.edges[1:])):
            raise ValueError(f"profile column {self.name!r}: edges must be strictly ascending")
        if len(self.expected) != len(self.edges) + 1:
            raise ValueError(f"profile column {self.name!r}: {len(self.edges)} edges need "
                             f"{len(self.edges) + 1} shares, got {len(self.expected)}")
        if not math.isclose(sum(self.expected), 1.0, abs_tol=1e-6):
            raise ValueError(f"profile column {self.name!r}: shares sum to {sum(self.expected)}, not 1")
        return self


class ReferenceProfile(OpenAPIModel):
    """What the training inputs and the model's outputs on them looked like (service/drift.py)."""

    model_config = ConfigDict(extra="allow")

    rows: int = Field(ge=1, description="Training rows profiled.")
    features: list[ProfileColumn] = Field(description="In card feature order.")
    output: ProfileColumn = Field(description="The prediction (regression) or predicted class index.")


class ModelCard(OpenAPIModel):
    """The model card: the pipeline writes it (validated against this model) and the service
    reads it. Fields not listed here pass through unchanged, so an older service reads a newer card."""

    model_config = ConfigDict(extra="allow")

    name: str
    task: Literal["regression", "binary", "multiclass"]
    target: str | None = None
    features: list[FeatureSpec] = Field(
        min_length=1, description="In the column order of the model input."
    )
    class_labels: list[ClassLabel] | None = Field(
        default=None, description="Class labels in model output order (classification only)."
    )
    dropped_features: dict[str, str] | None = Field(
        default=None,
        description="Columns of the training table the model does not take: (nearly) constant on the "
        "training rows (split.near_constant), each with its value and share.",
    )
    interval: IntervalSpec | None = Field(
        default=None, description="Calibration for prediction intervals (regression only)."
    )
    imputation: ImputationSpec | None = Field(
        default=None,
        description="Present when the model was trained with data.file.impute: /predict then accepts "
        "null feature values and fills them with these.",
    )
    metrics: dict[str, FiniteFloat | None] = Field(
        default_factory=dict, description="This model's test metrics, measured by the pipeline's evaluate stage."
    )
    data_hash: str | None = Field(default=None, description="sha256 of the data the model was trained on.")
    split_fingerprint: str | None = Field(
        default=None, description="Which rows it learnt from and was tested on (the registry's fair rule)."
    )
    params: dict[str, str] = Field(default_factory=dict, description="The training run's parameters.")
    onnx_parity_max_abs_diff: FiniteFloat | None = None
    mlflow: Provenance | None = Field(default=None, description="From provenance.json, when it matches the model.")
    git_commit: str | None = None
    profile: ReferenceProfile | None = Field(
        default=None, description="The training inputs' and outputs' reference distribution, for drift."
    )

    @field_validator("features")
    @classmethod
    def _unique_feature_names(cls, features: list[FeatureSpec]) -> list[FeatureSpec]:
        names = [feature.name for feature in features]
        if len(set(names)) != len(names):
            raise ValueError(f"feature names must be unique, got {names}")
        return features

    @field_validator("class_labels")
    @classmethod
    def _unique_class_labels(cls, labels: list[ClassLabel] | None) -> list[ClassLabel] | None:
        if labels is not None and len(set(labels)) != len(labels):
            raise ValueError(f"class labels must be unique, got {labels}")
        return labels

    @model_validator(mode="after")
    def _task_needs(self):
        if self.task == "regression" and self.interval is None:
            raise ValueError("a regression card needs 'interval' with 'abs_residuals'")
        if self.task == "binary" and self.class_labels is not None and len(self.class_labels) != 2:
            raise ValueError(f"a binary card needs exactly 2 class labels, got {self.class_labels}")
        if self.imputation is not None and set(self.imputation.values) != set(self.feature_names):
            raise ValueError("imputation.values must name exactly the card's features")
        if self.profile is not None and [c.name for c in self.profile.features] != self.feature_names:
            raise ValueError("profile.features must list exactly the card's features, in order")
        return self

    @property
    def feature_names(self) -> list[str]:
        return [feature.name for feature in self.features]


# --- POST /predict request -----------------------------------------------------------


class FeatureRecordBase(StrictBody):
    """One row given as {feature name: value}; subclassed per card by `build_request_model`."""

    @model_validator(mode="before")
    @classmethod
    def _exactly_the_card_features(cls, data: Any) -> Any:
        if isinstance(data, dict):
            expected = [field.alias for field in cls.model_fields.values()]
            unknown = [key for key in data if key not in expected]
            missing = [name for name in expected if name not in data]
            if unknown or missing:
                problems = []
                if unknown:
                    problems.append(f"unknown feature(s) {_quoted(unknown)}")
                if missing:
                    problems.append(f"missing feature(s) {_quoted(missing)}")
                raise PydanticCustomError(
                    "feature_names",
                    "{problems}; each record needs exactly these features: {expected}",
                    {"problems": " and ".join(problems), "expected": _quoted(expected)},
                )
        return data


class PredictRequestBase(StrictBody):
    """Exactly one of `x` / `records`; subclassed per card by `build_request_model`."""

    # Set by build_request_model: a record's values in card feature order.
    record_values: ClassVar[Callable[[Any], list[float | str | None]]]

    @model_validator(mode="before")
    @classmethod
    def _known_keys_and_one_input(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = [key for key in data if key not in cls.model_fields]
            if unknown:
                raise PydanticCustomError(
                    "unknown_field",
                    "unknown field(s) {unknown}; allowed fields: {allowed}",
                    {"unknown": _quoted(unknown), "allowed": _quoted(cls.model_fields)},
                )
            if ("x" in data) == ("records" in data):
                raise PydanticCustomError(
                    "one_input",
                    "give exactly one of 'x' (a list of rows) or 'records' (a list of objects)",
                )
        return data

    def feature_rows(self) -> list[list[float | str | None]]:
        """The input rows, values in card feature order (a string for a categorical feature)."""
        if self.x is not None:
            return self.x
        return [self.record_values(record) for record in self.records]


def build_request_model(
    card: ModelCard, *, max_rows: int, default_coverage: float | None
) -> type[PredictRequestBase]:
    """The /predict request model for this card: its features, its task, the row limit."""
    names = card.feature_names
    n = len(names)
    nullable = card.imputation is not None
    record_model = _record_model(card.features, nullable)
    example_row = [
        f.categories[0] if f.kind == "categorical" else round((f.min + f.max) / 2, 6)
        for f in card.features
    ]
    categorical = [f for f in card.features if f.kind == "categorical"]
    if categorical:
        item = FeatureValue | _category_type(card.features)
        item = item | None if nullable else item
        row = Annotated[
            list[item], Field(min_length=n, max_length=n), AfterValidator(_kinds_in_order(card.features))
        ]
        what = f"{n} value(s): a string for {_quoted(f.name for f in categorical)}, else a number"
    else:
        value = FeatureValue if not nullable else FeatureValue | None
        row = Annotated[list[value], Field(min_length=n, max_length=n)]
        what = f"{n} number(s)"
    annotations: dict[str, Any] = {"x": list[row], "records": list[record_model]}
    namespace: dict[str, Any] = {
        "x": Field(
            default=None,
            min_length=1,
            max_length=max_rows,
            description=f"Rows of {what} in this feature order: {', '.join(names)}.",
        ),
        "records": Field(
            default=None,
            min_length=1,
            max_length=max_rows,
            description="Rows as objects keyed by feature name.",
        ),
    }
    if card.task == "regression":
        annotations["coverage"] = Coverage
        namespace["coverage"] = Field(
            default=default_coverage,
            description="Target coverage of the prediction interval, 0 < coverage < 1.",
        )
    namespace.update(
        __annotations__=annotations,
        __module__=__name__,
        __doc__=f"Feature rows for the {card.task} model; give exactly one of x / records.",
        record_values=staticmethod(_list_getter(*record_model.model_fields)),  # f0, f1, ...
        model_config=ConfigDict(
            json_schema_extra={
                "oneOf": [{"required": ["x"]}, {"required": ["records"]}],
                "example": {"x": [example_row]},
            }
        ),
    )
    return type("PredictRequest", (PredictRequestBase,), namespace)


def _record_model(features: list[FeatureSpec], nullable: bool) -> type[FeatureRecordBase]:
    # Field names are positional (f0, f1, ...) and the card names are aliases, so any
    # feature name works, even one that clashes with a pydantic attribute.
    annotations = {}
    for i, feature in enumerate(features):
        if feature.kind == "categorical":
            value, description = _category_type([feature]), _categories_text(feature)
        else:
            value, description = FeatureValue, f"A number; trained on {feature.min:g} to {feature.max:g}."
        annotations[f"f{i}"] = Annotated[
            value | None if nullable else value, Field(alias=feature.name, description=description)
        ]
    namespace = {"__annotations__": annotations, "__module__": __name__}
    return type("FeatureRecord", (FeatureRecordBase,), namespace)


def category_max_chars(features: list[FeatureSpec]) -> int:
    """The longest category string /predict accepts for these features."""
    lengths = [len(c) for f in features if f.kind == "categorical" for c in f.categories]
    return max([MAX_CATEGORY_CHARS, *lengths])


def _category_type(features: list[FeatureSpec]) -> Any:
    return Annotated[str, Strict(), StringConstraints(max_length=category_max_chars(features))]


def _categories_text(feature: FeatureSpec) -> str:
    shown = _quoted(feature.categories[:DESCRIBED_CATEGORIES])
    more = len(feature.categories) - DESCRIBED_CATEGORIES
    rest = f" and {more} more (GET /metadata lists them)" if more > 0 else ""
    return (
        f"A category (string): {shown}{rest}. Another string is answered as out-of-vocabulary "
        "and flagged in unseen_categories."
    )


def _kinds_in_order(features: list[FeatureSpec]) -> Callable[[list], list]:
    """An `x` row's check: a string exactly where the card has a categorical feature."""

    def check(row: list) -> list:
        for i, (value, feature) in enumerate(zip(row, features)):
            if value is None:
                continue
            if feature.kind == "categorical" and not isinstance(value, str):
                raise ValueError(
                    f"position {i} is categorical feature {feature.name!r}: give its category as a "
                    f"string (one of {_quoted(feature.categories[:5])}{', ...' if len(feature.categories) > 5 else ''}), not a number"
                )
            if feature.kind == "numeric" and isinstance(value, str):
                raise ValueError(f"position {i} is numeric feature {feature.name!r}: give a number, not a string")
        return row

    return check


def _list_getter(*attributes: str) -> Callable[[Any], list[float]]:
    get = attrgetter(*attributes)
    if len(attributes) == 1:
        return lambda record: [get(record)]
    return lambda record: list(get(record))


# --- POST /predict answers ---------------------------------------------------------


class PredictionInterval(OpenAPIModel):
    method: str = Field(description="'split-conformal' (calibrated on validation) or 'cross-conformal' (out-of-fold residuals of a bag).")
    coverage: float = Field(description="Target coverage used for these intervals.")
    bounded: bool = Field(
        description="False when the calibration set is too small for this coverage: "
        "then the interval is the whole real line and half_width/lower/upper are null."
    )
    half_width: float | None = Field(
        description="The conformal quantile q: each interval is prediction +/- q."
    )
    lower: list[float | None] | None = Field(
        description="Per row, prediction - half_width; null for an extrapolated row (see note)."
    )
    upper: list[float | None] | None = Field(
        description="Per row, prediction + half_width; null for an extrapolated row (see note)."
    )
    note: str | None = Field(
        default=None,
        description="Why an interval is missing: for the whole answer (bounded false), or "
        "for extrapolated rows, where the calibration residuals say nothing about coverage.",
    )


UNSEEN_DESCRIPTION = (
    "Models with categorical features only: per row, the categorical features whose category is not in "
    "the card's vocabulary (never seen in training, or too rare to be kept): the model read them as "
    "out-of-vocabulary, and the row is extrapolated. Absent for other models."
)
EXTRAPOLATED_DESCRIPTION = (
    "Per row: true if any numeric feature lies outside its training range, or any categorical feature "
    "holds a category outside the vocabulary (see unseen_categories)."
)


# Per-row notes both answers carry, declared once.
Imputed = Annotated[list[list[str]] | None, Field(
    description="Models trained with imputation only: per row, the features whose null value was filled from "
    "the card's imputation values; null for other models.")]
UnseenCategories = Annotated[list[list[str]] | None, Field(description=UNSEEN_DESCRIPTION)]
RequestId = Annotated[str | None, Field(
    description="Only with the request log on (SERVICE_REQUEST_LOG): this request's id, for POST /feedback.")]


class RegressionAnswer(OpenAPIModel):
    predictions: list[float]
    extrapolated: list[bool] = Field(description=EXTRAPOLATED_DESCRIPTION)
    interval: PredictionInterval
    imputed: Imputed = None
    unseen_categories: UnseenCategories = None
    request_id: RequestId = None


class ClassificationAnswer(OpenAPIModel):
    labels: list[ClassLabel] = Field(description="Most probable class label per row.")
    probabilities: list[list[float]] = Field(
        description="Per row, the probability of each class, in class_labels order."
    )
    class_labels: list[ClassLabel]
    extrapolated: list[bool] = Field(description=EXTRAPOLATED_DESCRIPTION)
    imputed: Imputed = None
    unseen_categories: UnseenCategories = None
    request_id: RequestId = None


class ErrorBody(OpenAPIModel):
    """Every 4xx/5xx body of /predict and /metadata."""

    error: str


# --- validation errors -> one readable message --------------------------------------


def describe_validation_errors(errors: list[dict[str, Any]], hints: dict[str, str]) -> str:
    """Turn pydantic's error list into one message naming each field and what is allowed.

    `hints` maps a top-level field to a sentence appended once when that field is at fault.
    """
    parts = []
    for error in errors[:MAX_REPORTED_ERRORS]:
        where = _location(error.get("loc") or [])
        message = str(error.get("msg", "invalid value"))
        parts.append(f"{where}: {message}" if where else message)
    text = "; ".join(parts)
    if len(errors) > MAX_REPORTED_ERRORS:
        text += f"; and {len(errors) - MAX_REPORTED_ERRORS} more problem(s)"
    fields_at_fault = {str(error["loc"][0]) for error in errors if error.get("loc")}
    for field, hint in hints.items():
        if field in fields_at_fault:
            text += f". {hint}"
    return text


def _location(loc: list[Any]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _quoted(names: Any) -> str:
    return ", ".join(f"'{name}'" for name in names)


def validation_summary(exc: ValidationError) -> str:
    """All problems in one line, for a start-up refusal."""
    return describe_validation_errors(exc.errors(include_url=False, include_input=False), {})
