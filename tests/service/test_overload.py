"""Overload: past SERVICE_MAX_CONCURRENCY requests in progress, /predict answers 503 with
Retry-After at once (not a queue, not an unexpected error), and serves again when the load drops.
A request that stalls (a client that stops sending its body) gets 504 after
SERVICE_REQUEST_TIMEOUT_S and gives its place back.

No test-only code path in the service: 10,000-row requests are slow enough (their inference
runs in a worker thread) that a burst of them holds a limit of 2 full.
"""

import asyncio
import json
import socket
import time

import httpx
import pytest

pytestmark = pytest.mark.slow

LIMIT = 2
TIMEOUT_S = 3
BURST = 24
BIG_BODY = json.dumps({"x": [[0.25]] * 10_000}).encode()
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def server(start_server, regression_dir):
    return start_server(
        regression_dir, SERVICE_MAX_CONCURRENCY=str(LIMIT), SERVICE_REQUEST_TIMEOUT_S=str(TIMEOUT_S)
    )


async def burst(url: str, n: int) -> tuple[list[httpx.Response], list[int]]:
    """n big /predict requests at once on n connections, plus /livez calls while they run."""
    limits = httpx.Limits(max_connections=n + 1, max_keepalive_connections=n + 1)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        requests = [client.post("/predict", content=BIG_BODY, headers=JSON) for _ in range(n)]
        answers = await asyncio.gather(*requests, client.get("/livez"))
    return list(answers[:-1]), [answers[-1].status_code]


def test_burst_over_the_limit_gets_503_with_retry_after_then_the_service_recovers(server):
    for _ in range(2):  # twice: the limit is not stuck after the first burst
        answers, health = asyncio.run(burst(server.url, BURST))
        statuses = [answer.status_code for answer in answers]
        assert set(statuses) <= {200, 503}, statuses
        assert statuses.count(503) >= 1, statuses
        assert statuses.count(200) >= 1, statuses  # the limit admits, it does not block all
        assert health == [200]  # health checks are not counted against the limit
        for answer in answers:
            if answer.status_code == 200:
                assert len(answer.json()["predictions"]) == 10_000
                continue
            assert answer.headers["retry-after"].isdigit()
            assert answer.headers["content-type"] == "application/json"
            body = answer.json()
            assert list(body) == ["error"]
            assert "busy" in body["error"] and "SERVICE_MAX_CONCURRENCY" in body["error"]

        # The load is gone: every request is served again, small and big.
        with httpx.Client(base_url=server.url, timeout=60) as client:
            for _ in range(5):
                assert client.post("/predict", json={"x": [[0.5]]}).json()["predictions"] == [2.0]
            assert client.post("/predict", content=BIG_BODY, headers=JSON).status_code == 200


def test_overload_is_not_logged_as_an_error(server):
    asyncio.run(burst(server.url, 8))
    log = server.log()
    assert "status=503" in log
    assert "Traceback" not in log and "[ERROR]" not in log


def test_spec_documents_the_503_and_its_retry_after_header(server):
    spec = httpx.get(f"{server.url}/docs.json").json()
    busy = spec["paths"]["/predict"]["post"]["responses"]["503"]
    assert busy["headers"]["Retry-After"]["required"] is True
    assert busy["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}


def read_response(sock: socket.socket) -> bytes:
    response = b""
    while b"\r\n\r\n" not in response or not response.endswith(b"}"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        response += chunk
    return response


def test_a_stalled_upload_gets_504_after_the_timeout_and_frees_its_place(server):
    began = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT_S + 20) as stalled:
        stalled.sendall(
            b"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\nc\r\n{\"x\": [[0.5]\r\n"  # ...and nothing more
        )
        with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT_S + 20) as other:
            # A second stalled upload fills the limit of 2: a third request is turned away.
            other.sendall(b"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                          b"Transfer-Encoding: chunked\r\n\r\n1\r\n{\r\n")
            time.sleep(0.5)
            assert httpx.post(f"{server.url}/predict", json={"x": [[0.5]]}).status_code == 503
            response = read_response(stalled)
            waited = time.monotonic() - began
            assert read_response(other).startswith(b"HTTP/1.1 504")
    head, _, body = response.decode().partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 504"), head
    assert "SERVICE_REQUEST_TIMEOUT_S" in json.loads(body)["error"]
    assert TIMEOUT_S - 0.5 < waited < TIMEOUT_S + 15
    # Both places are free again.
    answers = asyncio.run(burst(server.url, LIMIT))[0]
    assert [answer.status_code for answer in answers] == [200] * LIMIT
