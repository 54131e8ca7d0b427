"""HttpGate and RequestTimeout on their own, in front of stand-in ASGI apps."""

import asyncio
import contextvars
import gc
import hmac
import json
import weakref

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


def gate(app, *, max_concurrency=2, token=None) -> HttpGate:
    return HttpGate(
        app,
        api_paths=("/predict",),
        static_json={"/metadata": b"{}"},
        api_token=SecretStr(token) if token else None,
        max_body_bytes=1000,
        max_concurrency=max_concurrency,
        describe_errors=lambda errors: "bad",
        patch_openapi=lambda spec: spec,
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
        with pytest.raises(RuntimeError):
            await call(front)
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
