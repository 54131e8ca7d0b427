"""Issue 20 on a real server: what a hostile client can send over a socket (framing, slow or
abandoned uploads, unknown paths, malformed HTTP) and what the service must still do.

Memory and latency figures under these attacks are measured by bench/attack.py, not here."""

import re
import socket
import time

import httpx
import pytest

pytestmark = pytest.mark.slow

TOKEN = "hostile-t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BODY_TIMEOUT_S = 1


@pytest.fixture(scope="module")
def server(start_server, regression_dir):
    return start_server(regression_dir, SERVICE_API_TOKEN=TOKEN, SERVICE_BODY_TIMEOUT_S=str(BODY_TIMEOUT_S))


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=30, headers=AUTH) as client:
        yield client


def connect(server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    return sock


def head(*lines: str) -> bytes:
    return ("\r\n".join(["POST /predict HTTP/1.1", "Host: t", "Content-Type: application/json",
                         f"Authorization: Bearer {TOKEN}", *lines]) + "\r\n\r\n").encode()


def stream_chunks(sock: socket.socket, total_mib: int) -> int:
    """Send up to total_mib MiB of 64 KiB chunks; return how many bytes went out before the
    server closed the connection."""
    chunk = b"10000\r\n" + b" " * 65536 + b"\r\n"
    sent = 0
    try:
        for _ in range(total_mib * 16):
            sock.sendall(chunk)
            sent += 65536
    except OSError:  # the server answered and closed: what we want
        pass
    return sent


def read_answer(sock: socket.socket) -> tuple[int, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        if not piece:
            break
        data += piece
    status = int(data.split(b" ", 2)[1])
    return status, data


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.parametrize(
    "framing", [["Transfer-Encoding: chunked"], ["Content-Length: 20", "Transfer-Encoding: chunked"]],
    ids=["chunked", "content-length and chunked"],
)
def test_a_streamed_body_is_cut_off_not_buffered(server, framing):
    # Finding 1: Content-Length 20 plus a chunked body passed the gate and 50 MiB was read whole.
    with connect(server) as sock:
        sock.sendall(head(*framing))
        sent = stream_chunks(sock, 64)
        status, answer = read_answer(sock)
    assert status in (400, 413) and b"connection: close" in answer.lower()
    assert sent < 16 * 1024 * 1024, f"the server took {sent} bytes before refusing"
    assert b'{"error": ' in answer


def test_a_malformed_request_is_answered_in_json(server):
    with connect(server) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        status, answer = read_answer(sock)
        answer += sock.recv(1000)
    assert status == 400
    assert b"content-type: application/json" in answer.lower()
    assert b'{"error": "malformed HTTP request' in answer


def test_unknown_paths_do_not_grow_metrics(server, client):
    # Finding 2: every unknown path added Prometheus series (with or without a token).
    before = client.get("/metrics").text
    for i in range(200):
        answer = client.get(f"/{'a' * 2000}/{i}", headers={"Authorization": ""})
        assert answer.status_code == 404 and "no such path" in answer.json()["error"]
    after = client.get("/metrics").text
    assert "a" * 100 not in after
    assert metric(after, "service_gate_answers_total", status="404", reason="unknown_path") >= 200
    # The same series as before (a counter value grows, no line is added by the 200 paths).
    series = lambda text: {line.rsplit(" ", 1)[0] for line in text.splitlines() if not line.startswith("#")}
    assert len(series(after) - series(before)) <= 2, series(after) - series(before)


def test_a_slow_upload_gets_408_while_others_are_served(server, client):
    # Finding 3: bodies trickling in held the concurrency slots; now they have a deadline
    # and hold no slot.
    socks = [connect(server) for _ in range(20)]
    try:
        for sock in socks:
            sock.sendall(head("Content-Length: 1000") + b'{"x": ')
        for _ in range(5):
            assert client.post("/predict", json={"x": [[0.5]]}).status_code == 200
        began = time.monotonic()
        statuses = [read_answer(sock)[0] for sock in socks]
        assert time.monotonic() - began < BODY_TIMEOUT_S + 5
    finally:
        for sock in socks:
            sock.close()
    assert statuses == [408] * 20


def test_clients_that_leave_mid_upload_are_499_not_500(server, client):
    # Finding 4: each dropped upload logged an ERROR with a traceback and counted a 500.
    before = client.get("/metrics").text
    for _ in range(5):
        with connect(server) as sock:
            sock.sendall(head("Content-Length: 1000") + b'{"x": [[')
            time.sleep(0.05)
    time.sleep(0.5)
    after = client.get("/metrics").text
    gone = lambda text: metric(text, "service_gate_answers_total", status="499", reason="client_disconnected")
    assert gone(after) - gone(before) == 5
    server_errors = lambda text: sum(
        metric(text, name, http_response_code=code)
        for name in ("bentoml_service_request_total", "bentoml_api_server_request_total")
        for code in ("500", "502", "503")
    )
    assert server_errors(after) == server_errors(before)
    log = server.log()
    assert "Traceback" not in log and "ERROR" not in log
    assert not re.search(r'" 5\d\d ', log)


def test_schema_json_is_a_docs_endpoint_open_like_docs_json(server):
    # Documented choice: /schema.json states the request/response schemas /docs.json also
    # states (BentoML's own client reads it), and no model card content.
    answer = httpx.get(f"{server.url}/schema.json")
    assert answer.status_code == 200
    assert "abs_residuals" not in answer.text and "predict" in answer.text
