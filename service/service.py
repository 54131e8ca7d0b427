"""BentoML service for the Keras MLP, run through ONNX Runtime.

    cd service && bentoml serve service:MLPService

The model is a directory holding model.onnx and card.json: $SERVICE_MODEL_DIR when set,
otherwise the latest model named by the bento argument `model_name` in the BentoML model
store. The pipeline's package stage stores it under params.yaml's tracking.registered_model
and builds the bento with that argument, so `make serve` needs neither.
It is loaded and checked when this module is imported, so a missing or corrupt model,
an invalid card or a card/model mismatch stops `bentoml serve` with a non-zero exit
before it ever reports ready; and the request schema can be built from the card.

HTTP: POST /predict, GET /metadata (the card), POST /feedback (monitoring.py), plus BentoML's /livez, /readyz, /metrics,
/docs.json (OpenAPI) and /schema.json (BentoML's route schemas, read by its Python client;
the same request/response schemas as /docs.json, so open like it, even with a token set).
Every error body is {"error": "<what is wrong and what is allowed>"}, also for unknown paths
(404), wrong methods (405) and requests uvicorn cannot parse (400). Duplicate keys in a JSON
object are a 400. For a regression row outside the training range (`extrapolated`) the
interval's lower/upper are null and `note` says why: the calibration says nothing there.

Environment (read once at start-up; a bad value stops start-up with a message):
  SERVICE_MODEL_DIR          model directory; unset: the BentoML model store
  SERVICE_INTERVAL_COVERAGE  default interval coverage, 0 < c < 1 (card's default_coverage)
  SERVICE_MAX_ROWS           rows per request (10000); more is a 400
  SERVICE_MAX_BODY_BYTES     request body size (2 MiB = 2097152); more is a 413, sent before
                             the body is read (Content-Length) or as soon as the bytes
                             received pass it (any framing); the connection is then closed
  SERVICE_BODY_TIMEOUT_S     seconds for a whole request body to arrive (10); later: 408
                             and the connection is closed
  SERVICE_MAX_UPLOADS        request bodies arriving in more than one piece at once, per
                             worker (128); one more is a 503 with `Retry-After: 1`. With the
                             body limit this bounds upload buffers (128 x 2 MiB)
  SERVICE_MAX_CONCURRENCY    /predict requests in progress at once, per worker process
                             (256; `bentoml serve` runs one worker); one more is answered
                             at once with 503, `Retry-After: 1` and {"error": ...}
  SERVICE_MAX_QUEUE_DELAY_MS how long, in milliseconds, a request may wait in the worker's
                             event loop before it is handled (250); while the loop's lag
                             has been over it twice in a row (sampled every 50 ms),
                             /predict answers 503, `Retry-After: 1` and {"error": ...}
  SERVICE_REQUEST_TIMEOUT_S  seconds to start answering a request (30); later: 504
  SERVICE_API_TOKEN          when set, /predict, /feedback and /metadata need "Authorization: Bearer
                             <token>"; compared in constant time, never logged or shown
  SERVICE_DRIFT, SERVICE_DRIFT_WINDOW_ROWS/_S, SERVICE_REQUEST_LOG(_MAX_BYTES, _FILES, _BATCH):
                             drift gauges and the request log, see monitoring.py
  SERVICE_DEBUG              1: a refused start-up shows its traceback; otherwise it prints
                             one line, "service refused to start: StartupError: ...", exit 1

Overload: /predict sheds load instead of queueing it, on two signals, both answered with
503, `Retry-After: 1` and {"error": ...} naming the setting; nothing else changes, so the
service serves normally again as soon as the load drops. Health, metrics and docs endpoints
are never shed.
- SERVICE_MAX_CONCURRENCY: requests "in progress", that is with their body in and waiting on
  something (a batch over 256 rows in its worker thread). It catches big and slow requests.
  A body still arriving holds no such slot (260 uploads at 1 byte/s starved every request
  when it did); it has SERVICE_BODY_TIMEOUT_S to arrive and one of SERVICE_MAX_UPLOADS places.
- SERVICE_MAX_QUEUE_DELAY_MS: a small request runs start to finish in one go, so a flood of
  them never has many in progress; it queues in front of the worker instead (socket
  buffers, the event loop's ready queue), and every request waits longer for its turn.
  The gate measures that wait as the event loop's lag: how late a 50 ms timer runs. A
  single late sample (a garbage collection, the process descheduled) does not shed; two in
  a row over the limit do, until the first sample under it (within ~50 ms of the load
  dropping). On a 2-core machine with one worker (~1,300 single-row answers/s), the lag
  is ~40 ms at 64 connections sending back to back (p99 of samples ~100 ms) and ~400 ms
  at 600 connections: the default of 250 ms leaves 64 connections alone and sheds 600.

Hostile clients (docs/serving.md, bench/attack.py): request bodies are counted as they
arrive whatever the framing, Content-Length together with Transfer-Encoding is a 400;
unknown paths are answered by HttpGate and skip BentoML's per-path request metrics
(KnownPathMetrics), so no client can grow /metrics; a client that leaves before its body is
in is counted as service_gate_answers_total{status="499",reason="client_disconnected"},
never as a 5xx. service_gate_answers_total counts every answer HttpGate gives itself, by
status and reason.
"""

import functools
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import anyio.to_thread
import bentoml
import numpy as np
from bentoml._internal.server.http import instruments as bentoml_instruments
from bentoml._internal.server.http import traffic as bentoml_traffic
from pydantic import ValidationError
from starlette.responses import JSONResponse, Response
from uvicorn.protocols.http import h11_impl as uvicorn_h11

from api_models import (
    MAX_ABS_FEATURE_VALUE,
    ClassificationAnswer,
    ErrorBody,
    ModelCard,
    PredictionInterval,
    RegressionAnswer,
    build_request_model,
    category_max_chars,
    describe_validation_errors,
)
from http_gate import HttpGate, RequestTimeout, h11_send_400_json, routed
from model_bundle import ModelBundle, Outputs, StartupError
from monitoring import FeedbackAnswer, Monitoring, MonitoringSettings, build_feedback_model
from settings import Settings, refuse_to_start

MODEL_NAME: str | None = getattr(bentoml.use_arguments(), "model_name", None)

# Batches up to this size run on the event loop (ONNX Runtime needs microseconds for
# them; a thread hop would cost more). Larger ones go to a worker thread so other
# requests are not held up.
INLINE_ROWS = 256


def model_directory(settings: Settings) -> Path:
    if settings.model_dir is not None:
        return settings.model_dir
    if MODEL_NAME is None:
        raise StartupError(
            "no model to serve: set SERVICE_MODEL_DIR, serve the bento the pipeline built "
            "(`make serve`), or pass `--arg model_name=NAME` for a model in the BentoML store"
        )
    stored = bentoml.models.BentoModel(f"{MODEL_NAME}:latest").stored  # local store only
    if stored is None:
        raise StartupError(
            f"no model to serve: '{MODEL_NAME}' is not in the BentoML model store "
            "(the pipeline's package stage puts it there; see `bentoml models list`)"
        )
    return Path(stored.path)


try:
    SETTINGS = Settings.from_env(os.environ)
    BUNDLE = ModelBundle.load(model_directory(SETTINGS))
    MONITORING = Monitoring(MonitoringSettings.from_env(os.environ), BUNDLE.card)
except StartupError as refusal:
    refuse_to_start(refusal, os.environ)
CARD: ModelCard = BUNDLE.card
IS_REGRESSION = CARD.task == "regression"
DEFAULT_COVERAGE = (SETTINGS.coverage or CARD.interval.default_coverage) if IS_REGRESSION else None

PredictRequest = build_request_model(
    CARD, max_rows=SETTINGS.max_rows, default_coverage=DEFAULT_COVERAGE
)
PredictAnswer = RegressionAnswer if IS_REGRESSION else ClassificationAnswer
FeedbackRequest = build_feedback_model(CARD, max_rows=SETTINGS.max_rows)

_feature_list = ", ".join(CARD.feature_names)
_categorical = [f.name for f in CARD.features if f.kind == "categorical"]
_numbers = f"finite numbers with |value| <= {MAX_ABS_FEATURE_VALUE:g}"
_values = (
    f"values are {_numbers}, except for the categorical feature(s) {', '.join(_categorical)}: strings "
    f"of at most {category_max_chars(CARD.features)} characters (GET /metadata lists the categories)"
    if _categorical
    else f"values are {_numbers}"
)
ERROR_HINTS = {
    "x": (
        f"x is a list of 1 to {SETTINGS.max_rows} rows; each row is a list of "
        f"{BUNDLE.n_features} value(s) in this order: {_feature_list}; {_values}"
        if _categorical
        else f"x is a list of 1 to {SETTINGS.max_rows} rows; each row is a list of "
        f"{BUNDLE.n_features} finite number(s) with |value| <= {MAX_ABS_FEATURE_VALUE:g}, "
        f"in this order: {_feature_list}"
    ),
    "records": (
        f"records is a list of 1 to {SETTINGS.max_rows} objects, each with exactly these "
        f"keys: {_feature_list}; {_values}"
    ),
    "coverage": "coverage is a number strictly between 0 and 1",
    "id": "id is the request_id of a /predict answer: 32 hexadecimal digits",
    "targets": (
        f"targets is a list of 1 to {SETTINGS.max_rows} true values, one per row of that request, in row order: "
        + ("finite numbers" if IS_REGRESSION else f"each one of the class labels {BUNDLE.class_labels}")
    ),
}


# No traffic.max_concurrency here: HttpGate enforces SERVICE_MAX_CONCURRENCY (see http_gate.py).
@bentoml.service(traffic={"timeout": SETTINGS.request_timeout_s})
class MLPService:
    """Keras MLP predictions: conformal intervals (regression) or class probabilities."""

    if SETTINGS.model_dir is None:
        # Declared only when it is what we load: `bentoml serve` resolves every declared
        # model before starting, and `bentoml build` bundles it into the bento.
        model_ref = bentoml.models.BentoModel(f"{MODEL_NAME}:latest")

    def __init__(self) -> None:
        self.bundle = BUNDLE

    @bentoml.on_shutdown
    def _write_request_log(self) -> None:
        MONITORING.close()  # what the log's batch still holds

    @bentoml.api(route="/predict")
    async def predict(self, request: PredictRequest, /) -> PredictAnswer:
        """Predict for 1..SERVICE_MAX_ROWS rows, given as `x` (rows in card feature order)
        or `records` (objects keyed by feature name). Errors answer {"error": "..."}."""
        rows = request.feature_rows()
        if len(rows) <= INLINE_ROWS:
            outputs = self.bundle.infer(rows)
        else:
            outputs = await anyio.to_thread.run_sync(self.bundle.infer, rows)
        if not np.isfinite(outputs.values).all():
            return self._non_finite_answer(outputs)
        if IS_REGRESSION:
            answer = self._regression_answer(outputs, request.coverage)
        else:
            answer = self._classification_answer(outputs)
        answer.request_id = MONITORING.observe(
            rows, outputs.values, outputs.extrapolated,
            lambda: answer.predictions if IS_REGRESSION else answer.labels,
        )
        # The same JSON BentoML would write, minus its output machinery (~40 us a request, measured
        # by bench/serving); the OpenAPI schema still comes from the annotation. unseen_categories only
        # for a model with categorical features, request_id only with the request log on.
        exclude = {name for name, absent in (("unseen_categories", outputs.unseen is None),
                                             ("request_id", MONITORING.log is None)) if absent}
        return Response(answer.model_dump_json(exclude=exclude or None), media_type="application/json")

    @bentoml.api(route="/feedback")
    async def feedback(self, request: FeedbackRequest, /) -> FeedbackAnswer:
        """Ground truth for a logged request: its request_id and the true target of each of its rows."""
        if MONITORING.log is None:
            return JSONResponse({"error": "request logging is off, so there is nothing to attach feedback to: "
                                          "start the service with SERVICE_REQUEST_LOG=DIR"}, status_code=404)
        MONITORING.log.feedback(request.id, list(request.targets))
        answer = FeedbackAnswer(id=request.id, rows=len(request.targets))
        return Response(answer.model_dump_json(), media_type="application/json")

    def _regression_answer(self, outputs: Outputs, coverage: float) -> RegressionAnswer:
        predictions = outputs.values
        half_width = self.bundle.interval_half_width(coverage)
        if half_width is None:
            n = len(CARD.interval.abs_residuals)
            interval = PredictionInterval.model_construct(
                method=CARD.interval.method, coverage=coverage, bounded=False,
                half_width=None, lower=None, upper=None,
                note=(
                    f"{n} calibration residuals give no finite interval at coverage {coverage}: "
                    f"finite bounds need coverage <= {n}/{n + 1} "
                    f"(~{math.floor(self.bundle.max_bounded_coverage() * 1e6) / 1e6})"
                ),
            )
        else:
            lower, upper = (predictions - half_width).tolist(), (predictions + half_width).tolist()
            outside = np.flatnonzero(outputs.extrapolated).tolist()
            note = None
            if outside:
                # Coverage is calibrated on rows like the training data; out of range the error
                # can be any size (x = -5 on sine data: off by 1.5 against +/-0.10), so no
                # interval is claimed for those rows.
                for i in outside:
                    lower[i] = upper[i] = None
                note = (
                    f"no interval for row(s) {outside[:10]}{' ...' if len(outside) > 10 else ''}: "
                    "outside the training range the calibration residuals say nothing about coverage"
                )
            interval = PredictionInterval.model_construct(
                method=CARD.interval.method, coverage=coverage, bounded=True,
                half_width=half_width, lower=lower, upper=upper, note=note,
            )
        # model_construct: the values are ours and already checked; skip re-validation.
        return RegressionAnswer.model_construct(
            predictions=predictions.tolist(),
            extrapolated=outputs.extrapolated.tolist(),
            imputed=outputs.imputed,
            unseen_categories=outputs.unseen,
            interval=interval,
        )

    @staticmethod
    def _non_finite_answer(outputs: Outputs) -> JSONResponse:
        # Valid input can still overflow float32 inside the model: say so (422), not 500.
        per_row = outputs.values.reshape(len(outputs.extrapolated), -1)
        bad_rows = np.flatnonzero(~np.isfinite(per_row).all(axis=1))[:10].tolist()
        message = (
            f"the model gave a non-finite output for row(s) {bad_rows}; "
            "their inputs are too far outside the training range"
        )
        return JSONResponse({"error": message}, status_code=422)

    def _classification_answer(self, outputs: Outputs) -> ClassificationAnswer:
        return ClassificationAnswer.model_construct(
            labels=self.bundle.labels_for(outputs.values),
            probabilities=outputs.values.tolist(),
            class_labels=self.bundle.class_labels,
            extrapolated=outputs.extrapolated.tolist(),
            imputed=outputs.imputed,
            unseen_categories=outputs.unseen,
        )


def patch_openapi(spec: dict[str, Any]) -> dict[str, Any]:
    """Document what HttpGate answers on top of BentoML's generated spec."""
    ref = "#/components/schemas/{model}"
    components = spec.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for model in (ModelCard, ErrorBody):
        schema = model.model_json_schema(ref_template=ref)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema

    def error(description: str) -> dict[str, Any]:
        return {
            "description": description,
            "content": {"application/json": {"schema": {"$ref": ref.format(model="ErrorBody")}}},
        }

    predict = spec["paths"]["/predict"]["post"]
    predict["requestBody"]["required"] = True  # BentoML leaves it optional; an empty body is a 400
    predict["responses"].pop("404", None)  # BentoML's, for its task endpoints; never sent here
    busy = error(
        "Overloaded: SERVICE_MAX_CONCURRENCY requests already in progress, or requests wait "
        "longer than SERVICE_MAX_QUEUE_DELAY_MS to be handled"
    )
    busy["headers"] = {
        "Retry-After": {
            "description": "Seconds to wait before retrying",
            "required": True,
            "schema": {"type": "integer", "minimum": 0},
        }
    }
    predict["responses"].update(
        {
            "400": error(
                "Invalid request: the message names the field and what is allowed (also: "
                "duplicate JSON keys, Content-Length together with Transfer-Encoding)"
            ),
            "408": error("The request body did not arrive within SERVICE_BODY_TIMEOUT_S"),
            "413": error("Request body larger than SERVICE_MAX_BODY_BYTES"),
            "415": error("Content-Type is not application/json, or the body is compressed"),
            "422": error("The model gave a non-finite output for these inputs"),
            "500": error("Unexpected server error"),
            "503": busy,
            "504": error("Not answered within SERVICE_REQUEST_TIMEOUT_S"),
        }
    )
    metadata = {
        "tags": predict.get("tags", []),
        "operationId": "MLPService__metadata",
        "description": "The model card of the served model.",
        "responses": {
            "200": {
                "description": "The model card",
                "content": {
                    "application/json": {"schema": {"$ref": ref.format(model="ModelCard")}}
                },
            }
        },
    }
    spec["paths"]["/metadata"] = {"get": metadata}
    feedback = spec["paths"]["/feedback"]["post"]
    feedback["requestBody"]["required"] = True
    feedback["responses"].update({
        "400": error("Invalid feedback: the message names the field and what is allowed"),
        "404": error("Request logging is off (SERVICE_REQUEST_LOG unset)"),
        **{code: predict["responses"][code] for code in ("408", "413", "415", "500", "503", "504")},
    })
    if SETTINGS.api_token is not None:
        components["securitySchemes"] = {"bearerAuth": {"type": "http", "scheme": "bearer"}}
        for operation in (predict, metadata, feedback):
            operation["security"] = [{"bearerAuth": []}]
            operation["responses"]["401"] = error("Missing or wrong bearer token")
    return spec


class _DropClientValidationErrors(logging.Filter):
    """BentoML logs every request that fails validation as an ERROR with a traceback.
    Those are client mistakes, answered 400 and counted by the access log; a flood of
    bad requests must not flood the log (or copy request content into it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], ValidationError))


logging.getLogger("bentoml._internal.server.http_app").addFilter(_DropClientValidationErrors())

class KnownPathMetrics(bentoml_instruments.RunnerTrafficMetricsMiddleware):
    """BentoML's request metrics (the outermost middleware), for the app's routes only.

    BentoML labels each request's series with its raw path: every distinct unknown path
    added series to the worker's memory and to every /metrics scrape, with or without a
    token (5,000 4-KB paths: +1.6 GB, a 431 MB /metrics). Requests to unknown paths skip
    it; HttpGate answers them 404 and counts them under one label,
    service_gate_answers_total{status="404",reason="unknown_path"}."""

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and not routed(scope):
            return await self.app(scope, receive, send)
        if scope["type"] == "http" and scope["path"] == "/metrics":
            MONITORING.publish()  # the drift gauges as of now, not as of the last refresh
        return await super().__call__(scope, receive, send)


@functools.cache
def _gate_answers():
    # Imported on first use, not with this module: BentoML's worker sets
    # PROMETHEUS_MULTIPROC_DIR after importing it, and prometheus_client reads it on import.
    import prometheus_client

    return prometheus_client.Counter(
        "service_gate_answers",
        "Requests HttpGate answered itself, by status and reason (BentoML's request metrics "
        "count them by path, not why); 499: the client went away before its body was in",
        ["status", "reason"],
    )


def count_gate_answer(status: int, reason: str) -> None:
    _gate_answers().labels(status=str(status), reason=reason).inc()


# The only places where BentoML's or uvicorn's internals are replaced; each has a test in
# tests/service/test_hostile_clients.py that fails if an upgrade removes what is replaced.
# - BentoML builds its middleware stack after importing this module and looks the timeout
#   middleware up by name at that point; see RequestTimeout for why it is replaced.
# - uvicorn answers unparseable requests itself in plain text; see h11_send_400_json.
# - BentoML's request metrics label every request with its raw path; see KnownPathMetrics.
bentoml_traffic.TimeoutMiddleware = RequestTimeout
uvicorn_h11.H11Protocol.send_400_response = h11_send_400_json
bentoml_instruments.RunnerTrafficMetricsMiddleware = KnownPathMetrics

MLPService.add_asgi_middleware(
    HttpGate,
    api_paths=("/predict", "/feedback"),
    static_json={"/metadata": json.dumps(CARD.model_dump(mode="json", exclude_unset=True)).encode()},
    api_token=SETTINGS.api_token,
    max_body_bytes=SETTINGS.max_body_bytes,
    max_concurrency=SETTINGS.max_concurrency,
    max_uploads=SETTINGS.max_uploads,
    body_timeout_s=SETTINGS.body_timeout_s,
    max_queue_delay_ms=SETTINGS.max_queue_delay_ms,
    describe_errors=lambda errors: describe_validation_errors(errors, ERROR_HINTS),
    patch_openapi=patch_openapi,
    count=count_gate_answer,
)
