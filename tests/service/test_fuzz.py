"""Property-based fuzzing of a real server from its own OpenAPI spec (/docs.json), schemathesis v4.

A short run (~200 cases per server); `make fuzz` (scripts/fuzz.sh) is the long one. Every
check is on: no 5xx, every answer as documented (status, content type, headers, body schema),
schema-invalid input refused with a 4xx, schema-valid input accepted, other methods 405.
"""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from devtools import tiny_onnx_models as models
from devtools.fuzzing import run_schemathesis

pytestmark = pytest.mark.slow

SEED = 20240601  # fixed: the suite is reproducible; scripts/fuzz.py picks a fresh seed each run
TOKEN = "fuzz-test-token-2b8e"


def assert_clean(report):
    assert report.ok(), report.summary() + "\n" + report.output[-4000:]
    assert report.per_operation["POST /predict"] >= 100, report.summary()
    assert report.per_operation["GET /metadata"] >= 1, report.summary()


def test_fuzz_regression_service(regression_server, tmp_path):
    report = run_schemathesis(regression_server.url, max_examples=80, seed=SEED, report_dir=tmp_path)
    assert_clean(report)
    assert report.cases >= 200
    assert report.statuses[200] > 0 and report.statuses[400] > 0  # both valid and invalid input sent


def test_fuzz_classifier_with_token_auth(start_server, model_root, tmp_path):
    server = start_server(models.binary_2d(model_root / "binary_fuzz"), SERVICE_API_TOKEN=TOKEN)
    report = run_schemathesis(
        server.url,
        max_examples=40,
        seed=SEED,
        report_dir=tmp_path,
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert_clean(report)
    assert report.statuses[401] > 0  # schemathesis also tried without the token
    assert TOKEN not in server.log()


class PlantedFaults(BaseHTTPRequestHandler):
    """A one-operation API with two planted bugs: 500 for negative n; n answered as a string."""

    ITEM = {"application/json": {"schema": {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}}}}
    SPEC = {
        "openapi": "3.0.2",
        "info": {"title": "planted", "version": "1"},
        "paths": {
            "/items": {
                "post": {
                    "requestBody": {"required": True, "content": ITEM},
                    "responses": {"200": {"description": "ok", "content": ITEM}, "400": {"description": "bad"}},
                }
            }
        },
    }

    def log_message(self, *args):
        pass

    def reply(self, status: int, payload) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/docs.json":
            return self.reply(200, self.SPEC)
        self.reply(404, {})

    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            n = json.loads(raw)["n"]
            assert isinstance(n, int) and not isinstance(n, bool)
        except Exception:
            return self.reply(400, {})
        if n < 0:
            return self.reply(500, {})
        self.reply(200, {"n": str(n)})


def test_the_harness_reports_planted_faults(tmp_path):
    """The figures above mean something: a server with known bugs is not reported clean."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), PlantedFaults)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        report = run_schemathesis(url, max_examples=20, seed=SEED, report_dir=tmp_path, timeout_s=120)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert not report.ok()
    assert report.cases > 0
    assert report.server_errors > 0
    assert any(f.check == "not_a_server_error" for f in report.failures)
    assert any(f.check == "response_schema_conformance" for f in report.schema_violations)
