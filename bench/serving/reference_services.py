"""Reference BentoML services for bench/serving/run.py: what our service is measured against.

All three are new-style BentoML 1.4 services like service/service.py (one worker, the same
`traffic` settings, served the same way), each with one API at POST /predict:

    cd bench/serving && bentoml serve reference_services:BareService --host 127.0.0.1 --port P

- BareService   ignores its input and returns a constant response: the HTTP ceiling of a
                BentoML service on this machine (BentoML still reads and JSON-parses the
                body, and runs its own middleware: tracing, metrics, access log).
- KerasService  calls Keras `model.predict` once per request: the naive way to serve the
                MLP. Model: $BENCH_KERAS_MODEL (a .keras file) when set and it takes
                $BENCH_N_FEATURES inputs, else a random Dense(10)-Dense(5)-Dense(1) MLP.
- EchoService   parses {"x": [[...], ...]} into a list of float rows and returns it: the
                cost of moving a big JSON body through BentoML, with no model at all.

With BENCH_TIMEOUT_FIX=1 these services get the request-timeout middleware that
service/service.py puts in place of BentoML's own (service/http_gate.py RequestTimeout), so
that a reference can also be measured with exactly the same BentoML stack as ours.

Module import stays light (the BentoML arbiter imports it too); TensorFlow is imported
only inside KerasService's worker.
"""

import os

import bentoml
from starlette.responses import Response

TRAFFIC = {"timeout": 30}  # as service/service.py

if os.environ.get("BENCH_TIMEOUT_FIX") == "1":
    import sys
    from pathlib import Path

    from bentoml._internal.server.http import traffic as bentoml_traffic

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "service"))
    from http_gate import RequestTimeout  # noqa: E402

    bentoml_traffic.TimeoutMiddleware = RequestTimeout  # as service/service.py does

CONSTANT_BODY = b'{"ok":true}'


@bentoml.service(traffic=TRAFFIC)
class BareService:
    @bentoml.api(route="/predict")
    async def predict(self) -> dict[str, bool]:
        # A ready-made response skips BentoML's output validation and serialization, the
        # cheapest way out of an API function: returning the dict itself measured ~30% fewer
        # requests/s here (BentoML wraps it in an IORootModel, validates and dumps that).
        # A new object each time: BentoML adds its headers to the response it is given.
        return Response(CONSTANT_BODY, media_type="application/json")


@bentoml.service(traffic=TRAFFIC)
class KerasService:
    def __init__(self) -> None:
        import keras
        import numpy as np

        n_features = int(os.environ.get("BENCH_N_FEATURES", "1"))
        path = os.environ.get("BENCH_KERAS_MODEL")
        self.model = keras.models.load_model(path, compile=False) if path else None
        source = path
        if self.model is None or self.model.input_shape[-1] != n_features:
            source = f"random Dense(10)-Dense(5)-Dense(1) over {n_features} feature(s)"
            keras.utils.set_random_seed(0)
            self.model = keras.Sequential(
                [
                    keras.Input(shape=(n_features,)),
                    keras.layers.Dense(10, activation="relu"),
                    keras.layers.Dense(5, activation="relu"),
                    keras.layers.Dense(1),
                ]
            )
        print(f"BENCH_KERAS_SOURCE {source}", flush=True)  # run.py reads it from the log
        self._np = np
        self.model.predict(np.zeros((1, n_features), dtype=np.float32), verbose=0)  # trace once

    @bentoml.api(route="/predict")
    def predict(self, x: list[list[float]]) -> list[float]:
        rows = self._np.asarray(x, dtype=self._np.float32)
        return self.model.predict(rows, verbose=0)[:, 0].astype(float).tolist()


@bentoml.service(traffic=TRAFFIC)
class EchoService:
    @bentoml.api(route="/predict")
    async def predict(self, x: list[list[float]]) -> dict[str, list[list[float]]]:
        return {"x": x}
