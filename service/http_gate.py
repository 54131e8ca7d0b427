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
- the request body, read here before BentoML sees it: bytes are counted as they arrive,
  whatever the framing (Content-Length, chunked, both: a 400; a length that lies), and a
  413 goes out at the first chunk past the limit (BentoML 1.4 itself reads any body whole);
  a body must be in within a deadline (408), only then does the request take a concurrency
  slot (uploads have their own, bounded places), and a client that leaves before it is in
  is counted as 499, not answered (BentoML logged it as a 500 with a traceback);
- unknown paths: 404 {"error": ...} here, counted under one label (see KnownPathMetrics in
  service.py); duplicate keys in a JSON body: 400;
- only JSON bodies, uncompressed: BentoML would parse form/multipart bodies with other
  rules, and would read a gzip body as if it were plain JSON;
- one error shape, {"error": "..."}: BentoML 1.4 answers a pydantic ValidationError with
  a `detail` list its own OpenAPI spec does not allow, and other 4xx errors as a list
  [{"error": ...}]; both are rewritten here;
- GET /metadata: BentoML 1.4 API routes are POST-only, and the card is static;
- /docs.json: adds what the routes above answer (GET /metadata, 401/413/415/422/503/504).
Health, metrics and docs endpoints need no token; their error answers are rewritten as
{"error": ...} too. Every answer given here is reported to `count(status, reason)`.

`RequestTimeout` stands in for BentoML's TimeoutMiddleware (service.py swaps it in): the
same 504 when no answer has started within traffic.timeout, but its timer is cancelled as
soon as the request is done. BentoML 1.4's leaves a timer pending for the whole timeout
after every request, holding that request's context (tracing span, futures): at 500
requests/s and a 30 s timeout that is ~15,000 dead requests, ~100 MB of worker memory.
"""

import asyncio
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

import h11
from pydantic import SecretStr
from starlette.routing import Match

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON_TYPE = b"application/json"
# After refusing a body that may still be arriving: uvicorn then closes the connection
# instead of reading (and discarding) the rest.
CLOSE = [(b"connection", b"close")]

logger = logging.getLogger(__name__)


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
        max_uploads: int = 128,
        body_timeout_s: float = 10,
        max_queue_delay_ms: int | None = None,
        retry_after_s: int = 1,
        describe_errors: Callable[[list[dict[str, Any]]], str],
        patch_openapi: Callable[[dict[str, Any]], dict[str, Any]],
        count: Callable[[int, str], None] = lambda status, reason: None,
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
        self.max_uploads = max_uploads
        self.body_timeout_s = body_timeout_s
        self.retry_after = str(retry_after_s).encode()
        self.in_flight = 0  # API requests, body in, between this gate and their last response byte
        self.uploads = 0  # API request bodies still arriving (more than one receive)
        self.routes: list | None = None  # the app's routes, taken at lifespan start-up
        self.count = count
        self.lag_watch = LagWatch(max_queue_delay_ms)  # started at the server's lifespan start-up
        self.describe_errors = describe_errors
        self.patch_openapi = patch_openapi
        self.known_paths = ", ".join(sorted({*self.protected, "/docs.json", "/livez", "/readyz", "/metrics"}))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                self._take_routes(scope)
                self.lag_watch.start()
            return await self.app(scope, receive, send)
        path = scope["path"]
        if path == "/docs.json":
            return await self.app(scope, receive, self._patching_openapi(send))
        if path not in self.protected:
            if not self._routed(scope):
                # Answered here, before BentoML's metrics middleware labels it with the raw
                # path: a client must not be able to grow /metrics, one series per path.
                return await self._refuse(
                    send, 404, "unknown_path", f"no such path; this service answers {self.known_paths}"
                )
            return await self._guarded(self.app, scope, receive, self._normalising_errors(send))

        headers = _headers_of_interest(scope)
        if self._expected_auth is not None and not self._authorized(headers.get(b"authorization")):
            return await self._refuse(
                send, 401, "unauthorized",
                "missing or wrong bearer token: send 'Authorization: Bearer <token>'",
                extra_headers=[(b"www-authenticate", b"Bearer")],
            )
        method = scope["method"]
        if path in self.static_json:
            if method not in ("GET", "HEAD"):
                return await self._refuse(
                    send, 405, "method", f"{method} is not allowed on {path}; use GET",
                    extra_headers=[(b"allow", b"GET, HEAD")],
                )
            body = self.static_json[path]
            return await send_json(send, 200, body, head_only=method == "HEAD")

        # Shed load now rather than queue: the client learns at once when to come back.
        if busy := self._why_busy():
            return await self._busy(send, busy)
        refusal = self._refuse_headers(method, headers)
        if refusal is not None:
            return await self._refuse(send, *refusal)
        body = await self._read_body(receive, send)
        if body is None:  # refused or the client went away; answered and counted
            return
        if method == "POST" and not body:
            # BentoML would read an empty body as {} and report missing fields instead.
            return await self._refuse(send, 400, "empty_body", "request body is empty: send a JSON object")
        if method == "POST" and (key := await duplicate_key(body, self.max_inline_json_bytes)) is not None:
            return await self._refuse(
                send, 400, "duplicate_key",
                f"invalid JSON: key {key!r} appears twice in one object; each key may appear once",
            )
        # The body is in: only now does the request take a slot, so slow uploads hold none.
        if busy := self._why_busy():
            return await self._busy(send, busy)
        self.in_flight += 1
        try:
            await self._guarded(self.app, scope, _replay(body, receive), self._normalising_errors(send))
        finally:
            self.in_flight -= 1

    # Bodies up to this size are checked for duplicate keys on the event loop; larger ones
    # (a 10,000-row request: ~20 ms) in a thread, so other requests are not held up.
    max_inline_json_bytes = 64 * 1024

    def _take_routes(self, scope: Scope) -> None:
        # Starlette puts itself in every scope; its routes say which paths exist. Failing
        # here stops start-up, loudly, if a BentoML upgrade changes that.
        app = scope.get("app")
        if app is None or not hasattr(app, "routes"):
            raise RuntimeError("HttpGate needs the Starlette app in scope['app'] to tell known paths")
        self.routes = app.routes

    def _routed(self, scope: Scope) -> bool:
        return routed(scope, self.routes)

    async def _guarded(self, app, scope: Scope, receive: Receive, send: Send) -> None:
        """Run `app`; an exception before the answer started is a 500 {"error": ...}, logged
        once here (uvicorn and Starlette would answer it in plain text)."""
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await app(scope, receive, tracking_send)
        except Exception:
            if started:
                raise
            logger.exception("unexpected error answering %s %s", scope["method"], scope["path"][:200])
            await self._refuse(send, 500, "server_error", "unexpected server error")

    def _why_busy(self) -> str | None:
        if self.in_flight >= self.max_concurrency:
            return f"{self.max_concurrency} requests are in progress (SERVICE_MAX_CONCURRENCY)"
        if self.lag_watch.lagging:
            return f"requests wait over {self.lag_watch.limit_ms} ms to be handled (SERVICE_MAX_QUEUE_DELAY_MS)"
        return None

    def _refuse_headers(self, method: str, headers: dict[bytes, bytes]) -> tuple | None:
        """(status, reason, message[, headers]) when the headers alone refuse the request."""
        if method == "POST":
            media_type = headers.get(b"content-type", JSON_TYPE).split(b";")[0].strip().lower()
            if media_type != JSON_TYPE:
                got = media_type.decode(errors="replace")
                return 415, "media_type", f"Content-Type must be application/json, got {got!r}"
            encoding = headers.get(b"content-encoding", b"identity").strip().lower()
            if encoding != b"identity":
                got = encoding.decode(errors="replace")
                return 415, "media_type", f"Content-Encoding must be identity (an uncompressed body), got {got!r}"
        declared = headers.get(b"content-length")
        if declared is not None and b"transfer-encoding" in headers:
            # RFC 9112 6.3: a request smuggling pattern; the server may refuse it and must close.
            return 400, "framing", "send either Content-Length or Transfer-Encoding, not both", CLOSE
        if declared is not None and not declared.isdigit():
            return 400, "framing", "Content-Length must be a whole number", CLOSE
        if declared is not None and int(declared) > self.max_body_bytes:
            return 413, "too_large", self._too_large(), CLOSE
        return None

    async def _read_body(self, receive: Receive, send: Send) -> bytes | None:
        """The whole body, counted as it arrives whatever the framing; None once answered.

        More than the limit: 413 at once, nothing more read. Not in within
        SERVICE_BODY_TIMEOUT_S: 408. The client gone: nothing to answer; counted as 499.
        A body still arriving after the first read takes one of SERVICE_MAX_UPLOADS places,
        not a SERVICE_MAX_CONCURRENCY slot."""
        chunks: list[bytes] = []
        size = 0
        uploading = False
        try:
            async with asyncio.timeout(self.body_timeout_s):
                while True:
                    message = await receive()
                    if message["type"] != "http.request":
                        self.count(499, "client_disconnected")
                        return None
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > self.max_body_bytes:
                        await self._refuse(send, 413, "too_large", self._too_large(), CLOSE)
                        return None
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        return b"".join(chunks)
                    if not uploading:
                        if self.uploads >= self.max_uploads:
                            await self._busy(
                                send, f"{self.max_uploads} request bodies are arriving (SERVICE_MAX_UPLOADS)", CLOSE
                            )
                            return None
                        uploading = True
                        self.uploads += 1
        except TimeoutError:
            message = (
                f"the request body did not arrive within {self.body_timeout_s:g} s "
                "(SERVICE_BODY_TIMEOUT_S)"
            )
            await self._refuse(send, 408, "body_timeout", message, CLOSE)
            return None
        finally:
            if uploading:
                self.uploads -= 1

    # --- auth and limits ---------------------------------------------------------------

    async def _refuse(
        self, send: Send, status: int, reason: str, message: str,
        extra_headers: list[tuple[bytes, bytes]] = (),
    ) -> None:
        self.count(status, reason)
        await send_error(send, status, message, extra_headers=extra_headers)

    async def _busy(self, send: Send, why: str, extra_headers: list[tuple[bytes, bytes]] = ()) -> None:
        retry_after = self.retry_after.decode()
        message = f"the service is busy: {why}; retry after {retry_after} s"
        await self._refuse(
            send, 503, "busy", message, extra_headers=[(b"retry-after", self.retry_after), *extra_headers]
        )

    def _authorized(self, header: bytes | None) -> bool:
        if header is None:
            return False
        # The scheme is case-insensitive (RFC 9110); the token is compared in constant time.
        scheme, _, token = header.partition(b" ")
        return hmac.compare_digest(scheme.lower() + b" " + token.strip(), self._expected_auth)

    def _too_large(self) -> str:
        return f"request body is larger than {self.max_body_bytes} bytes (SERVICE_MAX_BODY_BYTES)"

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


def routed(scope: Scope, routes: list | None = None) -> bool:
    """Whether a route of the Starlette app (`routes`, else the one in scope["app"]) takes this
    path; with no router at all (a bare app, as in tests) every path is routed."""
    if routes is None:
        routes = getattr(scope.get("app"), "routes", None)
        if routes is None:
            return True
    return any(route.matches(scope)[0] is not Match.NONE for route in routes)


def _headers_of_interest(scope: Scope) -> dict[bytes, bytes]:
    wanted = (b"authorization", b"content-type", b"content-length", b"content-encoding", b"transfer-encoding")
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


def h11_send_400_json(self, msg: str) -> None:
    """uvicorn's H11Protocol.send_400_response (uvicorn 0.54; the service installs no
    httptools, so uvicorn runs h11), answering {"error": ...}.

    uvicorn answers a request it cannot parse (broken framing, a Content-Length that lies
    about what follows) itself, before any ASGI app sees it, in plain text; service.py puts
    this in its place so that every error the service sends is JSON."""
    body = json.dumps({"error": f"malformed HTTP request: {msg}"}).encode()
    headers = [(b"content-type", JSON_TYPE), (b"content-length", str(len(body)).encode()), *CLOSE]
    response = h11.Response(status_code=400, headers=headers, reason=b"Bad Request")
    for event in (response, h11.Data(data=body), h11.EndOfMessage()):
        self.transport.write(self.conn.send(event))
    self.transport.close()


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return result


def _find_duplicate_key(body: bytes) -> str | None:
    try:
        json.loads(body, object_pairs_hook=_no_duplicates)
    except _DuplicateKey as exc:
        return exc.args[0]
    except ValueError:  # not JSON at all: BentoML's parser reports it
        pass
    return None


async def duplicate_key(body: bytes, max_inline_bytes: int) -> str | None:
    """The first key repeated within one JSON object of `body`, if any. Python's and
    pydantic's parsers keep the last value silently; a strict API refuses the body."""
    if len(body) <= max_inline_bytes:
        return _find_duplicate_key(body)
    return await asyncio.to_thread(_find_duplicate_key, body)


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
