"""ASGI middleware at the HTTP edge of the service, in front of BentoML's routes.

What it does, and why here rather than in the API function:
- bearer-token auth for the model endpoints (before a body is read);
- load shedding: an API request is answered at once with 503, a `Retry-After` header and
  {"error": ...}, instead of queueing without bound, when either
  - the API requests in progress reach a cap (big or slow requests pile up in the app), or
  - the event loop runs what is ready later than a limit (LagWatch): a flood of small
    requests, each answered in one go, never has many in progress; it queues in front of
    the app, in socket buffers and the loop's ready queue, where the loop's lag measures it.
  (BentoML's own `traffic.max_concurrency` answers 429 with no Retry-After, from a
  middleware outside this one, and counts /docs.json too; so it is left unset.);
- body size limit, answered with 413 before the body is read (Content-Length) or as
  soon as a chunked upload crosses it: BentoML 1.4 itself reads any body whole;
- only JSON bodies, uncompressed: BentoML would parse form/multipart bodies with other
  rules, and would read a gzip body as if it were plain JSON;
- one error shape, {"error": "..."}: BentoML 1.4 answers a pydantic ValidationError with
  a `detail` list its own OpenAPI spec does not allow, and other 4xx errors as a list
  [{"error": ...}]; both are rewritten here;
- GET /metadata: BentoML 1.4 API routes are POST-only, and the card is static;
- /docs.json: adds what the routes above answer (GET /metadata, 401/413/415/422/503/504).
Health, metrics and docs endpoints pass untouched and need no token.

`RequestTimeout` stands in for BentoML's TimeoutMiddleware (service.py swaps it in): the
same 504 when no answer has started within traffic.timeout, but its timer is cancelled as
soon as the request is done. BentoML 1.4's leaves a timer pending for the whole timeout
after every request, holding that request's context (tracing span, futures): at 500
requests/s and a 30 s timeout that is ~15,000 dead requests, ~100 MB of worker memory.
"""

import asyncio
import hmac
import json
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

from pydantic import SecretStr

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON_TYPE = b"application/json"


class HttpGate:
    def __init__(
        self,
        app: Callable[[Scope, Receive, Send], Awaitable[None]],
        *,
        api_paths: tuple[str, ...],
        static_json: dict[str, bytes],
        api_token: SecretStr | None,
        max_body_bytes: int,
        max_concurrency: int,
        max_queue_delay_ms: int | None = None,
        retry_after_s: int = 1,
        describe_errors: Callable[[list[dict[str, Any]]], str],
        patch_openapi: Callable[[dict[str, Any]], dict[str, Any]],
    ) -> None:
        self.app = app
        self.api_paths = frozenset(api_paths)
        self.static_json = static_json
        self.protected = self.api_paths | frozenset(static_json)
        self._expected_auth = (
            b"bearer " + api_token.get_secret_value().encode() if api_token is not None else None
        )
        self.max_body_bytes = max_body_bytes
        self.max_concurrency = max_concurrency
        self.retry_after = str(retry_after_s).encode()
        self.in_flight = 0  # API requests between this gate and their last response byte
        self.lag_watch = LagWatch(max_queue_delay_ms)  # started at the server's lifespan start-up
        self.describe_errors = describe_errors
        self.patch_openapi = patch_openapi

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                self.lag_watch.start()
            return await self.app(scope, receive, send)
        path = scope["path"]
        if path == "/docs.json":
            return await self.app(scope, receive, self._patching_openapi(send))
        if path not in self.protected:
            return await self.app(scope, receive, send)

        headers = _headers_of_interest(scope)
        if self._expected_auth is not None and not self._authorized(headers.get(b"authorization")):
            return await send_error(
                send, 401, "missing or wrong bearer token: send 'Authorization: Bearer <token>'",
                extra_headers=[(b"www-authenticate", b"Bearer")],
            )
        method = scope["method"]
        if path in self.static_json:
            if method not in ("GET", "HEAD"):
                return await send_error(
                    send, 405, f"{method} is not allowed on {path}; use GET",
                    extra_headers=[(b"allow", b"GET, HEAD")],
                )
            body = self.static_json[path]
            return await send_json(send, 200, body, head_only=method == "HEAD")

        # Shed load now rather than queue: the client learns at once when to come back.
        if self.in_flight >= self.max_concurrency:
            return await self._busy(
                send, f"{self.max_concurrency} requests are in progress (SERVICE_MAX_CONCURRENCY)"
            )
        if self.lag_watch.lagging:
            return await self._busy(
                send, f"requests wait over {self.lag_watch.limit_ms} ms to be handled "
                "(SERVICE_MAX_QUEUE_DELAY_MS)",
            )
        self.in_flight += 1
        try:
            await self._serve_api(scope, receive, send, headers)
        finally:
            self.in_flight -= 1

    async def _serve_api(
        self, scope: Scope, receive: Receive, send: Send, headers: dict[bytes, bytes]
    ) -> None:
        method = scope["method"]
        if method == "POST":
            media_type = headers.get(b"content-type", JSON_TYPE).split(b";")[0].strip().lower()
            if media_type != JSON_TYPE:
                got = media_type.decode(errors="replace")
                message = f"Content-Type must be application/json, got {got!r}"
                return await send_error(send, 415, message)
            encoding = headers.get(b"content-encoding", b"identity").strip().lower()
            if encoding != b"identity":
                got = encoding.decode(errors="replace")
                message = f"Content-Encoding must be identity (an uncompressed body), got {got!r}"
                return await send_error(send, 415, message)
        declared = headers.get(b"content-length")
        if declared is not None:
            # The HTTP server guarantees the body has exactly this length.
            if not declared.isdigit():
                return await send_error(send, 400, "Content-Length must be a whole number")
            size = int(declared)
            if size > self.max_body_bytes:
                return await send_error(send, 413, self._too_large())
        elif method in ("POST", "PUT", "PATCH"):
            # No length announced (chunked): read up to the limit before passing it on.
            body = await self._read_limited(receive)
            if body is None:
                return await send_error(send, 413, self._too_large())
            size = len(body)
            receive = _replay(body, receive)
        else:
            size = 0
        if method == "POST" and size == 0:
            # BentoML would read an empty body as {} and report missing fields instead.
            return await send_error(send, 400, "request body is empty: send a JSON object")
        await self.app(scope, receive, self._normalising_errors(send))

    # --- auth and limits ---------------------------------------------------------------

    async def _busy(self, send: Send, why: str) -> None:
        retry_after = self.retry_after.decode()
        message = f"the service is busy: {why}; retry after {retry_after} s"
        await send_error(send, 503, message, extra_headers=[(b"retry-after", self.retry_after)])

    def _authorized(self, header: bytes | None) -> bool:
        if header is None:
            return False
        # The scheme is case-insensitive (RFC 9110); the token is compared in constant time.
        scheme, _, token = header.partition(b" ")
        return hmac.compare_digest(scheme.lower() + b" " + token.strip(), self._expected_auth)

    def _too_large(self) -> str:
        return f"request body is larger than {self.max_body_bytes} bytes (SERVICE_MAX_BODY_BYTES)"

    async def _read_limited(self, receive: Receive) -> bytes | None:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # client went away
                return b""
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    # --- response rewriting -----------------------------------------------------------

    def _normalising_errors(self, send: Send) -> Send:
        """Pass successes straight through; buffer error bodies, rewrite them as {"error": ...}."""

        def as_error(status: int, body: bytes) -> bytes:
            return json.dumps({"error": self._error_text(status, body)}).encode()

        return _rewriting_body(send, lambda status: status >= 400, as_error)

    def _error_text(self, status: int, body: bytes) -> str:
        try:
            payload = json.loads(body)
        except ValueError:
            return body.decode(errors="replace").strip() or HTTPStatus(status).phrase
        if isinstance(payload, list) and len(payload) == 1:
            payload = payload[0]  # BentoML 1.4 wraps BentoMLException bodies in a list
        if isinstance(payload, dict):
            if isinstance(payload.get("detail"), list):  # a pydantic ValidationError
                return "invalid request: " + self.describe_errors(payload["detail"])
            if isinstance(payload.get("error"), str):
                return payload["error"]
        return HTTPStatus(status).phrase

    def _patching_openapi(self, send: Send) -> Send:
        def patched(_status: int, body: bytes) -> bytes:
            return json.dumps(self.patch_openapi(json.loads(body))).encode()

        return _rewriting_body(send, lambda status: status == 200, patched)


def _headers_of_interest(scope: Scope) -> dict[bytes, bytes]:
    wanted = (b"authorization", b"content-type", b"content-length", b"content-encoding")
    return {name: value for name, value in scope["headers"] if name in wanted}


def _kept_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [(k, v) for k, v in headers if k.lower() not in (b"content-length", b"content-type")]


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replaying_receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # e.g. http.disconnect

    return replaying_receive


async def send_json(
    send: Send,
    status: int,
    body: bytes,
    *,
    extra_headers: list[tuple[bytes, bytes]] = (),
    head_only: bool = False,
) -> None:
    headers = [
        (b"content-type", JSON_TYPE),
        (b"content-length", str(len(body)).encode()),
        *extra_headers,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head_only else body})


async def send_error(
    send: Send, status: int, message: str, *, extra_headers: list[tuple[bytes, bytes]] = ()
) -> None:
    body = json.dumps({"error": message}).encode()
    await send_json(send, status, body, extra_headers=extra_headers)


class LagWatch:
    """How late the event loop runs what is ready to run: the queueing delay of every request.

    A timer asks to run every CHECK_INTERVAL_S and measures how much later than asked it
    does. Requests are answered on this same loop: one that has arrived waits about as long
    before the gate even sees it, wherever the backlog is (socket buffers, the loop's ready
    queue). Under sustainable load the lag stays within tens of milliseconds; when requests
    arrive faster than they are answered, every turn of the loop has more of them to run.

    `lagging` is True from the second sample in a row over the limit (a single late timer,
    such as a garbage collection or the process descheduled on a busy machine, is not a
    backlog) to the first sample under it: within ~CHECK_INTERVAL_S of the load dropping.
    Cost: one timer callback per interval, nothing per request but reading `lagging`.
    """

    CHECK_INTERVAL_S = 0.05

    def __init__(self, limit_ms: int | None) -> None:
        self.limit_ms = limit_ms
        self.started = False
        self.lagging = False
        self.lag_s = 0.0  # the last sample
        self._loop: asyncio.AbstractEventLoop | None = None
        self._due = 0.0

    def start(self) -> None:
        """Start sampling on the running loop (no-op after the first call, or without a limit)."""
        if self.started:
            return
        self.started = True
        if self.limit_ms is not None:
            self._loop = asyncio.get_running_loop()
            self._schedule()

    def _schedule(self) -> None:
        self._due = self._loop.time() + self.CHECK_INTERVAL_S
        self._loop.call_at(self._due, self._sample)

    def _sample(self) -> None:
        lag = self._loop.time() - self._due
        limit_s = self.limit_ms / 1000
        self.lagging = lag > limit_s and self.lag_s > limit_s
        self.lag_s = lag
        self._schedule()


class RequestTimeout:
    """504 {"error": ...} when no response has started `timeout` seconds after a request came in."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], timeout: float) -> None:
        self.app = app
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        started = False

        async def send_started(message: Message) -> None:
            nonlocal started
            if not started:
                started = True
                deadline.reschedule(None)  # answering: no timeout from here on
            await send(message)

        try:
            async with asyncio.timeout(self.timeout) as deadline:  # its timer goes on exit
                await self.app(scope, receive, send_started)
        except TimeoutError:
            if started:  # cannot happen (rescheduled), but never send a second response
                raise
            message = f"no answer within {self.timeout:g} s (SERVICE_REQUEST_TIMEOUT_S)"
            await send_error(send, 504, message)


def _rewriting_body(send: Send, applies: Callable[[int], bool], rewrite: Callable[[int, bytes], bytes]) -> Send:
    """Wrap `send`: a response whose status `applies` is buffered whole and sent as `rewrite(status, body)`
    (JSON, original headers kept); any other response passes straight through."""
    held: Message | None = None
    chunks: list[bytes] = []

    async def rewriting_send(message: Message) -> None:
        nonlocal held
        if message["type"] == "http.response.start" and applies(message["status"]):
            held = message
            return
        if held is None or message["type"] != "http.response.body":
            return await send(message)
        chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        status = held["status"]
        await send_json(send, status, rewrite(status, b"".join(chunks)), extra_headers=_kept_headers(held["headers"]))

    return rewriting_send
