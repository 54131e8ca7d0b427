"""POST /predict, GET /metadata and /docs.json of a real server for y = 2x + 1 (one feature x in [-1, 1])."""

import json
import socket

import pytest

from devtools.tiny_onnx_models import ABS_RESIDUALS, direct_predictions

pytestmark = pytest.mark.slow


def predict(client, body, **kwargs):
    return client.post("/predict", json=body, **kwargs)


def test_predictions_equal_onnxruntime(client, regression_dir):
    rows = [[0.5], [1.2], [-3.0], [0.0], [0.123456789]]
    answer = predict(client, {"x": rows})
    assert answer.status_code == 200, answer.text
    expected = [row[0] for row in direct_predictions(regression_dir, rows)]
    assert answer.json()["predictions"] == expected
    assert expected[:4] == [2.0, pytest.approx(3.4), -5.0, 1.0]


def test_extrapolated_marks_rows_outside_the_training_range(client):
    answer = predict(client, {"x": [[-1.0], [1.0], [0.0], [-1.0001], [1.5]]}).json()
    assert answer["extrapolated"] == [False, False, False, True, True]


def test_records_give_the_same_answer_as_rows(client):
    by_rows = predict(client, {"x": [[0.25], [-0.75]]}).json()
    by_records = predict(client, {"records": [{"x": 0.25}, {"x": -0.75}]}).json()
    assert by_records == by_rows


# Ten sorted residuals 0.05..0.5 (n = 10): coverage c uses the ceil(11 c)-th smallest.
@pytest.mark.parametrize(
    ("coverage", "rank"),
    [(None, 10), (0.9, 10), (0.8, 9), (0.5, 6), (0.05, 1), (0.909, 10)],
)
def test_split_conformal_interval(client, coverage, rank):
    body = {"x": [[0.5], [-0.75]]} | ({} if coverage is None else {"coverage": coverage})
    answer = predict(client, body).json()
    interval = answer["interval"]
    q = ABS_RESIDUALS[rank - 1]
    assert interval["coverage"] == (0.9 if coverage is None else coverage)  # card default 0.9
    assert interval["bounded"] is True
    assert interval["method"] == "split-conformal"
    assert interval["half_width"] == q
    assert interval["lower"] == [p - q for p in answer["predictions"]]
    assert interval["upper"] == [p + q for p in answer["predictions"]]


def test_extrapolated_rows_get_no_interval_and_a_note_saying_why(client):
    # Issue 20: out of range the in-range width claimed a coverage it cannot have.
    answer = predict(client, {"x": [[0.5], [-5.0], [1.5]]}).json()
    interval, q = answer["interval"], ABS_RESIDUALS[10 - 1]
    assert answer["extrapolated"] == [False, True, True]
    assert interval["lower"] == [answer["predictions"][0] - q, None, None]
    assert interval["upper"] == [answer["predictions"][0] + q, None, None]
    assert "row(s) [1, 2]" in interval["note"] and "training range" in interval["note"]
    assert predict(client, {"x": [[0.5]]}).json()["interval"]["note"] is None


def test_interval_is_unbounded_when_calibration_set_is_too_small(client):
    # ceil(11 * 0.95) = 11 > 10 residuals: no finite split-conformal interval exists.
    answer = predict(client, {"x": [[0.5]], "coverage": 0.95})
    assert answer.status_code == 200
    interval = answer.json()["interval"]
    assert interval["bounded"] is False
    assert interval["half_width"] is None and interval["lower"] is None and interval["upper"] is None
    assert "coverage <= 10/11 (~0.90909)" in interval["note"]  # the largest with finite bounds
    assert answer.json()["predictions"] == [2.0]


BAD_BODIES = [
    # (case, raw body, words the message must contain)
    ("two values for one feature", {"x": [[0.5, 0.3]]}, ["x[0]", "at most 1 item", "in this order: x"]),
    ("no value in a row", {"x": [[]]}, ["x[0]", "at least 1 item"]),
    ("ragged rows", {"x": [[0.5], [0.5, 0.2]]}, ["x[1]", "at most 1 item"]),
    ("NaN literal", b'{"x": [[NaN]]}', ["x[0][0]", "finite number"]),
    ("Infinity literal", b'{"x": [[Infinity]]}', ["x[0][0]", "finite number"]),
    ("-Infinity literal", b'{"x": [[-Infinity]]}', ["x[0][0]", "finite number"]),
    ("overflowing number", b'{"x": [[1e999]]}', ["x[0][0]", "finite number"]),
    ("beyond the value bound", {"x": [[2e15]]}, ["x[0][0]", "less than or equal to"]),
    ("null value", {"x": [[None]]}, ["x[0][0]", "valid number"]),
    ("string value", {"x": [["0.5"]]}, ["x[0][0]", "valid number"]),
    ("bool value", {"x": [[True]]}, ["x[0][0]", "valid number"]),
    ("empty x", {"x": []}, ["x:", "at least 1 item"]),
    ("scalar x", {"x": 0.5}, ["x:", "valid array"]),
    ("1-D x", {"x": [0.5, 1.2]}, ["x[0]", "valid array", "each row is a list"]),
    ("null x", {"x": None}, ["x:", "valid array"]),
    ("neither x nor records", {}, ["exactly one of 'x'", "'records'"]),
    ("both x and records", {"x": [[0.5]], "records": [{"x": 0.5}]}, ["exactly one of 'x'"]),
    ("unknown field", {"x": [[0.5]], "rows": 1}, ["unknown field(s) 'rows'", "allowed fields: 'x', 'records', 'coverage'"]),
    ("coverage 0", {"x": [[0.5]], "coverage": 0}, ["coverage", "greater than 0", "strictly between 0 and 1"]),
    ("coverage 1", {"x": [[0.5]], "coverage": 1}, ["coverage", "less than 1"]),
    ("coverage as string", {"x": [[0.5]], "coverage": "0.9"}, ["coverage", "valid number"]),
    ("unknown feature name", {"records": [{"y": 0.5}]}, ["records[0]", "unknown feature(s) 'y'", "missing feature(s) 'x'"]),
    ("extra feature name", {"records": [{"x": 0.5, "z": 1.0}]}, ["records[0]", "unknown feature(s) 'z'"]),
    ("record missing its feature", {"records": [{}]}, ["records[0]", "missing feature(s) 'x'"]),
    ("record value NaN", b'{"records": [{"x": NaN}]}', ["records[0].x", "finite number"]),
    ("empty records", {"records": []}, ["records:", "at least 1 item"]),
    ("records not a list", {"records": {"x": 0.5}}, ["records:", "valid array"]),
    ("body is a list", [[0.5]], ["object"]),
    ("body is a number", 0.5, ["object"]),
    ("invalid JSON", b'{"x": [[0.5]', ["Invalid JSON"]),
    ("trailing garbage", b'{"x": [[0.5]]} x', ["Invalid JSON"]),
    ("not UTF-8", b'{"x": [[0.5]], "\xff": 1}', ["Invalid JSON"]),
    ("empty body", b"", ["body is empty"]),
]


@pytest.mark.parametrize(("case", "body", "words"), BAD_BODIES, ids=[c[0] for c in BAD_BODIES])
def test_bad_input_is_400_with_a_message_naming_the_problem(client, case, body, words):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    answer = client.post("/predict", content=content, headers={"Content-Type": "application/json"})
    assert answer.status_code == 400, answer.text
    assert answer.headers["content-type"] == "application/json"
    message = answer.json()["error"]
    assert list(answer.json()) == ["error"]
    for word in words:
        assert word in message, f"{case}: {word!r} not in {message!r}"


def test_row_limit(client):
    ok = predict(client, {"x": [[0.123456789012345678]] * 10_000})
    assert ok.status_code == 200
    assert len(ok.json()["predictions"]) == 10_000
    too_many = predict(client, {"x": [[0.5]] * 10_001})
    assert too_many.status_code == 400
    assert "at most 10000 items" in too_many.json()["error"]


def test_oversize_body_with_content_length_is_413_before_the_body_is_read(regression_server):
    # Announce 3 MB but send only the headers: the answer must come without the body.
    with socket.create_connection(("127.0.0.1", regression_server.port), timeout=10) as sock:
        sock.sendall(
            b"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Content-Length: 3000000\r\n\r\n"
        )
        response = b""
        while not response.endswith(b"}"):  # the JSON error body ends the response
            chunk = sock.recv(65536)
            if not chunk:
                break
            response += chunk
    head, _, body = response.decode().partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 413"), head
    assert json.loads(body)["error"] == "request body is larger than 2097152 bytes (SERVICE_MAX_BODY_BYTES)"


def test_oversize_chunked_body_is_413(client):
    chunk = b"[0.5]," * 10_000  # 60 kB

    def body():
        yield b'{"x": ['
        for _ in range(40):  # 2.4 MB in total, over the 2 MiB default
            yield chunk
        yield b"[0.5]]}"

    answer = client.post("/predict", content=body(), headers={"Content-Type": "application/json"})
    assert answer.status_code == 413
    assert "larger than 2097152 bytes" in answer.json()["error"]


def test_chunked_body_under_the_limit_is_served(client):
    def body():
        yield b'{"x": [[0.5],'
        yield b" [1.0]]}"

    answer = client.post("/predict", content=body(), headers={"Content-Type": "application/json"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["predictions"] == [2.0, 3.0]


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/vnd.bentoml+pickle"])
def test_non_json_content_type_is_415(client, content_type):
    answer = client.post("/predict", content=b'{"x": [[0.5]]}', headers={"Content-Type": content_type})
    assert answer.status_code == 415
    assert "application/json" in answer.json()["error"]


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "identity, gzip"])
def test_compressed_body_is_415(client, encoding):
    # BentoML would read the bytes as plain JSON whatever the Content-Encoding says.
    answer = client.post(
        "/predict", content=b'{"x": [[0.5]]}', headers={"Content-Type": "application/json", "Content-Encoding": encoding}
    )
    assert answer.status_code == 415
    assert "Content-Encoding must be identity" in answer.json()["error"]


def test_identity_content_encoding_is_accepted(client):
    headers = {"Content-Type": "application/json", "Content-Encoding": "identity"}
    assert client.post("/predict", content=b'{"x": [[0.5]]}', headers=headers).status_code == 200


def test_json_content_type_with_charset_is_accepted(client):
    answer = client.post("/predict", content=b'{"x": [[0.5]]}', headers={"Content-Type": "application/json; charset=utf-8"})
    assert answer.status_code == 200


def test_wrong_method_is_405_with_allow_header(client):
    answer = client.get("/predict")
    assert answer.status_code == 405
    assert answer.headers["allow"] == "POST"
    assert "error" in answer.json()
    assert client.post("/metadata", json={}).status_code == 405


def test_metadata_is_the_model_card(client, regression_dir):
    answer = client.get("/metadata")
    assert answer.status_code == 200
    card = json.loads((regression_dir / "card.json").read_text())
    assert answer.json() == card  # everything passes through, pipeline fields included


def test_openapi_spec_describes_the_real_contract(client):
    spec = client.get("/docs.json").json()
    predict_op = spec["paths"]["/predict"]["post"]
    request = predict_op["requestBody"]["content"]["application/json"]["schema"]
    assert predict_op["requestBody"]["required"] is True
    assert request["additionalProperties"] is False
    assert request["properties"]["x"]["maxItems"] == 10_000
    assert request["properties"]["x"]["items"]["minItems"] == 1
    assert request["properties"]["x"]["items"]["maxItems"] == 1
    assert request["oneOf"] == [{"required": ["x"]}, {"required": ["records"]}]
    assert {"200", "400", "413", "415", "422", "500", "503", "504"} <= set(predict_op["responses"])
    assert "404" not in predict_op["responses"]  # BentoML's task-endpoint answer; never sent here
    for status in ("400", "413", "415", "422", "500", "503", "504"):
        body = predict_op["responses"][status]["content"]["application/json"]["schema"]
        assert body == {"$ref": "#/components/schemas/ErrorBody"}, status
    assert predict_op["responses"]["503"]["headers"]["Retry-After"]["required"] is True
    assert "401" not in predict_op["responses"]  # no token configured
    assert "get" in spec["paths"]["/metadata"]
    assert "ModelCard" in spec["components"]["schemas"]
    assert "securitySchemes" not in spec["components"]


@pytest.mark.parametrize("path", ["/livez", "/readyz", "/metrics", "/docs.json"])
def test_infrastructure_endpoints(client, path):
    assert client.get(path).status_code == 200


def test_client_errors_are_not_logged_as_server_errors(client, regression_server):
    client.post("/predict", content=b'{"x": [[NaN]]}', headers={"Content-Type": "application/json"})
    log = regression_server.log()
    assert "status=400" in log
    assert "Traceback" not in log and "[ERROR]" not in log
