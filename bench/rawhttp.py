"""A minimal HTTP/1.1 client over asyncio streams, shared by the load benches (soak, overload).

Hand-written rather than a client library so that on a 2-core machine the load generator needs
well under one core for the rate one service worker answers.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass


def request_bytes(method: str, path: str, body: bytes = b"", host: str = "bench") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n"
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return (head + "\r\n").encode() + body


@dataclass
class Response:
    status: int
    headers: dict[bytes, bytes]  # lower-case names
    body: bytes

    @property
    def must_close(self) -> bool:
        return self.headers.get(b"connection", b"").lower() == b"close"


async def read_response(reader: asyncio.StreamReader) -> Response:
    """One answer, with a Content-Length or a chunked body."""
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("connection closed before an answer")
    status = int(status_line.split(b" ", 2)[1])
    headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
        chunks = []
        while size := int((await reader.readline()).split(b";")[0], 16):
            chunks.append((await reader.readexactly(size + 2))[:-2])
        await reader.readline()  # the empty line after the last chunk
        return Response(status, headers, b"".join(chunks))
    return Response(status, headers, await reader.readexactly(int(headers.get(b"content-length", b"0"))))


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank q-th percentile; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]
