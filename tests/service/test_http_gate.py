"""HttpGate and RequestTimeout on their own, in front of stand-in ASGI apps."""

import asyncio
import contextvars
import gc
import hmac
import json
import weakref

import httpx
import pytest
from pydantic import SecretStr

import http_gate
from http_gate import HttpGate, RequestTimeout


class SlowApp:
    """Answers 200 once `release` is set; counts the requests that reached it."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.reached = 0

    async def __call__(self, scope, receive, send):
        self.reached += 1
        if scope["path"] == "/predict":
            await receive()
            await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


def gate(app, *, max_concurrency=2, token=None, counted=None, **options) -> HttpGate:
    return HttpGate(
        app,
        api_paths=("/predict",),
        static_json={"/metadata": b"{}"},
        api_token=SecretStr(token) if token else None,
        max_body_bytes=1000,
        max_concurrency=max_concurrency,
        describe_errors=lambda errors: "bad",
        patch_openapi=lambda spec: spec,
        count=lambda status, reason: counted.append((status, reason)) if counted is not None else None,
        **options,
    )


async def call(app, path="/predict", method="POST", headers=(), body=b'{"x": [[1]]}'):
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    *headers],
    }
    sent = []

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    content = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start.get("headers", [])), content


def test_requests_over_the_cap_get_503_with_retry_after_and_the_gate_recovers():
    async def scenario():
        app = SlowApp()
        front = gate(app, max_concurrency=2)
        held = [asyncio.create_task(call(front)) for _ in range(2)]
        await asyncio.sleep(0.01)
        assert front.in_flight == 2

        status, headers, body = await call(front)  # a third one: refused at once
        assert status == 503
        assert headers[b"retry-after"] == b"1"
        assert headers[b"content-type"] == b"application/json"
        assert "SERVICE_MAX_CONCURRENCY" in json.loads(body)["error"]
        assert app.reached == 2  # the refused request never reached the service

        # Health and the static card are not counted against the cap.
        assert (await call(front, "/livez", "GET", body=b""))[0] == 200
        assert (await call(front, "/metadata", "GET", body=b""))[0] == 200

        app.release.set()
        assert [status for status, _, _ in await asyncio.gather(*held)] == [200, 200]
        assert front.in_flight == 0
        assert (await call(front))[0] == 200  # load gone: served again

    asyncio.run(scenario())


def test_a_failed_or_cancelled_request_gives_its_slot_back():
    async def failing(scope, receive, send):
        raise RuntimeError("boom")

    async def scenario():
        front = gate(failing, max_concurrency=1)
        status, headers, body = await call(front)
        assert (status, headers[b"content-type"]) == (500, b"application/json")
        assert json.loads(body) == {"error": "unexpected server error"}
        assert front.in_flight == 0

        slow = SlowApp()
        front = gate(slow, max_concurrency=1)
        task = asyncio.create_task(call(front))
        await asyncio.sleep(0.01)
        assert front.in_flight == 1
        task.cancel()  # as BentoML's timeout middleware does
        with pytest.raises(asyncio.CancelledError):
            await task
        assert front.in_flight == 0

    asyncio.run(scenario())


def test_client_errors_found_at_the_gate_do_not_hold_a_slot():
    async def scenario():
        front = gate(SlowApp(), max_concurrency=1)
        for headers, expected in [
            ([(b"content-length", b"5000")], 413),
            ([(b"content-encoding", b"gzip")], 415),
        ]:
            assert (await call(front, headers=headers))[0] == expected
            assert front.in_flight == 0

    asyncio.run(scenario())


def test_unauthenticated_requests_are_refused_before_the_cap_is_checked():
    async def scenario():
        front = gate(SlowApp(), max_concurrency=1, token="s3cret")
        front.in_flight = 1  # full
        assert (await call(front))[0] == 401
        ok = [(b"authorization", b"Bearer s3cret")]
        assert (await call(front, headers=ok))[0] == 503

    asyncio.run(scenario())


def test_the_token_is_compared_in_constant_time(monkeypatch):
    compared = []
    real = hmac.compare_digest

    def spy(a, b):
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(http_gate.hmac, "compare_digest", spy)
    front = gate(SlowApp(), token="s3cret")
    assert front._authorized(b"Bearer s3cret")
    assert not front._authorized(b"Bearer s3cres")
    assert not front._authorized(b"Bearer s3cret-and-more")
    assert not front._authorized(None)
    assert [expected for _, expected in compared] == [b"bearer s3cret"] * 3


# --- RequestTimeout (in place of BentoML's TimeoutMiddleware) ---------------------------

REQUEST_CONTEXT = contextvars.ContextVar("request_context")


class Payload:
    """Stands for what a request leaves in its context (BentoML: the tracing span)."""


def test_request_timeout_lets_go_of_a_finished_request():
    async def quick(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def scenario():
        middleware = RequestTimeout(quick, timeout=30)
        payload = Payload()
        ref = weakref.ref(payload)
        REQUEST_CONTEXT.set(payload)  # as an outer middleware does before calling it
        assert (await call(middleware))[0] == 200
        REQUEST_CONTEXT.set(None)
        del payload
        await asyncio.sleep(0)  # one loop turn: cancelled timers are dropped then
        gc.collect()
        # BentoML 1.4's middleware keeps a 30 s timer holding a copy of this context.
        assert ref() is None, "the finished request is still referenced (a pending timer?)"

    asyncio.run(scenario())


def test_request_timeout_answers_504_when_no_answer_has_started():
    async def stalled(scope, receive, send):
        await asyncio.sleep(10)

    async def slow_stream(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.sleep(0.2)  # longer than the timeout, but the answer has started
        await send({"type": "http.response.body", "body": b"{}"})

    async def scenario():
        status, headers, body = await call(RequestTimeout(stalled, timeout=0.05))
        assert status == 504
        assert headers[b"content-type"] == b"application/json"
        assert "SERVICE_REQUEST_TIMEOUT_S" in json.loads(body)["error"]
        assert (await call(RequestTimeout(slow_stream, timeout=0.05)))[:1] == (200,)

    asyncio.run(scenario())


# --- hostile clients: bodies counted as they arrive, slow uploads, disconnects ------------


class Upload:
    """An ASGI receive() that hands out `chunks` one by one (then waits, or disconnects),
    and counts how often it was called: what the gate read of the body."""

    def __init__(self, chunks, *, then="wait", delay=0.0):
        self.chunks, self.then, self.delay, self.reads = list(chunks), then, delay, 0

    async def __call__(self):
        self.reads += 1
        await asyncio.sleep(self.delay)
        if self.chunks:
            chunk = self.chunks.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(self.chunks) or self.then != "end"}
        if self.then == "disconnect":
            return {"type": "http.disconnect"}
        if self.then == "end":
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.sleep(3600)


async def send_raw(app, receive, headers=(), path="/predict", method="POST"):
    scope = {"type": "http", "method": method, "path": path,
             "headers": [(b"content-type", b"application/json"), *headers]}
    sent = []

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)
    starts = [m for m in sent if m["type"] == "http.response.start"]
    if not starts:
        return None, {}, b""
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return starts[0]["status"], dict(starts[0]["headers"]), body


CHUNKED = [(b"transfer-encoding", b"chunked")]


@pytest.mark.parametrize(
    "headers",
    [CHUNKED, [(b"content-length", b"20")], []],
    ids=["chunked", "content-length that lies", "no framing header"],
)
def test_the_body_limit_counts_bytes_as_they_arrive_whatever_the_framing(headers):
    async def scenario():
        counted = []
        app = SlowApp()
        front = gate(app, counted=counted)  # 1000 bytes at most
        upload = Upload([b"x" * 400] * 100)  # 40,000 bytes offered
        status, sent_headers, body = await send_raw(front, upload, headers)
        assert status == 413
        assert "1000 bytes" in json.loads(body)["error"]
        assert sent_headers[b"connection"] == b"close"  # uvicorn stops reading the rest
        assert upload.reads == 3  # 1,200 bytes: refused at the first chunk over the limit
        assert app.reached == 0 and front.in_flight == 0 and front.uploads == 0
        assert counted == [(413, "too_large")]

    asyncio.run(scenario())


def test_content_length_and_transfer_encoding_together_are_refused():
    async def scenario():
        upload = Upload([b'{"x": [[1]]}'], then="end")
        status, headers, body = await send_raw(gate(SlowApp()), upload, [(b"content-length", b"20"), *CHUNKED])
        assert (status, headers[b"connection"]) == (400, b"close")
        assert "not both" in json.loads(body)["error"]
        assert upload.reads == 0

    asyncio.run(scenario())


def test_a_body_in_pieces_under_the_limit_is_passed_on_whole():
    async def scenario():
        seen = []

        async def echo(scope, receive, send):
            seen.append(await receive())
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"{}"})

        status, _, _ = await send_raw(gate(echo), Upload([b'{"x": ', b"[[1]]}"], then="end"), CHUNKED)
        assert status == 200
        assert seen == [{"type": "http.request", "body": b'{"x": [[1]]}', "more_body": False}]

    asyncio.run(scenario())


def test_a_slow_upload_gets_408_and_holds_no_concurrency_slot_meanwhile():
    async def scenario():
        counted = []
        front = gate(SlowApp(), max_concurrency=1, body_timeout_s=0.3, counted=counted)
        slow = asyncio.create_task(send_raw(front, Upload([b"{"] * 1000, delay=0.05), CHUNKED))
        await asyncio.sleep(0.1)
        assert (front.uploads, front.in_flight) == (1, 0)

        quick = SlowApp()
        quick.release.set()
        front.app = quick  # a legitimate request while the upload trickles in: served
        assert (await call(front))[0] == 200

        status, headers, body = await slow
        assert (status, headers[b"connection"]) == (408, b"close")
        assert "SERVICE_BODY_TIMEOUT_S" in json.loads(body)["error"]
        assert (front.uploads, front.in_flight) == (0, 0)
        assert counted == [(408, "body_timeout")]

    asyncio.run(scenario())


def test_uploads_in_progress_are_bounded_but_whole_bodies_pass():
    async def scenario():
        front = gate(SlowApp(), max_uploads=1, body_timeout_s=5)
        slow = asyncio.create_task(send_raw(front, Upload([b"{"] * 1000, delay=0.05), CHUNKED))
        await asyncio.sleep(0.1)
        status, headers, body = await send_raw(front, Upload([b"{", b"}"], then="end"), CHUNKED)
        assert (status, headers[b"retry-after"], headers[b"connection"]) == (503, b"1", b"close")
        assert "SERVICE_MAX_UPLOADS" in json.loads(body)["error"]

        quick = SlowApp()
        quick.release.set()
        front.app = quick  # a body that arrives whole needs no upload place
        assert (await call(front))[0] == 200
        slow.cancel()

    asyncio.run(scenario())


def test_a_client_that_goes_away_mid_upload_is_counted_499_not_answered():
    async def scenario():
        counted = []
        app = SlowApp()
        front = gate(app, counted=counted)
        status, _, _ = await send_raw(front, Upload([b'{"x": '], then="disconnect"), CHUNKED)
        assert status is None  # nobody to answer
        assert counted == [(499, "client_disconnected")]
        assert app.reached == 0 and front.in_flight == 0 and front.uploads == 0

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("body", "key"),
    [(b'{"x": [[1]], "x": [[2]]}', "x"), (b'{"records": [{"a": 1, "a": 2}]}', "a")],
)
def test_duplicate_json_keys_are_400(body, key):
    async def scenario():
        app = SlowApp()
        status, _, content = await call(gate(app), body=body)
        assert status == 400
        assert f"key '{key}' appears twice" in json.loads(content)["error"]
        assert app.reached == 0

    asyncio.run(scenario())


def test_duplicate_keys_in_a_large_body_are_found_off_the_event_loop():
    async def scenario():
        front = gate(SlowApp())
        front.max_body_bytes = 1_000_000
        body = b'{"x": [' + b",".join([b"[1]"] * 30_000) + b'], "x": []}'
        assert len(body) > front.max_inline_json_bytes
        status, _, content = await call(front, body=body)
        assert status == 400 and "'x' appears twice" in json.loads(content)["error"]

    asyncio.run(scenario())


# --- unknown paths, in front of a real Starlette router -----------------------------------


def test_unknown_paths_are_answered_by_the_gate_and_counted_under_one_reason():
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    reached = []

    async def livez(request):
        reached.append(request.url.path)
        return PlainTextResponse("ok")

    counted = []
    app = Starlette(
        routes=[Route("/livez", livez), Route("/predict", livez, methods=["POST"])],
        middleware=[Middleware(HttpGate, api_paths=("/predict",), static_json={}, api_token=None,
                               max_body_bytes=1000, max_concurrency=2, describe_errors=str,
                               patch_openapi=dict, count=lambda *key: counted.append(key))],
    )

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gate") as client:
            for i in range(3):
                answer = await client.get(f"/no/such/{'p' * 4000}{i}")
                assert answer.status_code == 404
                error = answer.json()["error"]
                assert error.startswith("no such path") and "/predict" in error and "ppp" not in error
            assert (await client.get("/livez")).text == "ok"
            wrong_method = await client.delete("/livez")  # Starlette's plain-text 405, as JSON
            assert wrong_method.status_code == 405
            assert wrong_method.json() == {"error": "Method Not Allowed"}
        assert counted == [(404, "unknown_path")] * 3
        assert reached == ["/livez"]

    asyncio.run(scenario())
