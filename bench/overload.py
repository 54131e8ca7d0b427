"""Overload bench: a flood of single-row requests on a real server, then the recovery.

    .venv/bin/python bench/overload.py [--connections 600 | --rate 2000] [--duration 10]
        [--model-dir DIR] [--env SERVICE_MAX_QUEUE_DELAY_MS=250 ...] [--log server.log]

Starts `bentoml serve service:MLPService` on 127.0.0.1 (devtools/server.py) with the
packaged model in models/package when it is there, else the tiny y = 2x + 1 model, in the
service's default configuration plus any --env settings. Then, for --duration seconds,
single-row POST /predict requests (plain asyncio, hand-written HTTP/1.1, as bench/soak.py):
  closed loop (default)  --connections clients, each on its own keep-alive connection,
                         sending back to back: the backlog is at most --connections;
  open loop (--rate R)   R requests started per second whatever the answers, each on an
                         idle connection or a new one: over capacity, the backlog grows
                         for as long as the flood lasts (unless the service sheds it);
while GET /livez is polled every 0.25 s on a connection of its own. It prints, per status,
how many answers and their p50/p99 latency, anything that was not an answer (dropped
connection, no answer in 30 s), the /livez statuses, and after the flood how long until a
single request is answered 200 again.

Pass (exit status 0): only 200 and 503 answers, every 503 with a whole-number Retry-After
and an {"error": ...} body, every /livez 200, a 200 again within 5 s of the end of the
flood, no error in the server log. Whether 503s are expected depends on the load and the
settings: on one worker of a 2-core machine, 600 connections wait far longer than the
default SERVICE_MAX_QUEUE_DELAY_MS (250 ms) and are partly shed; 64 connections are not.
"""

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from devtools.server import Server, bench_model  # noqa: E402

from rawhttp import percentile, read_response, request_bytes  # noqa: E402

ANSWER_TIMEOUT_S = 30
RECOVERY_LIMIT_S = 5.0


class Flood:
    def __init__(self, host: str, port: int, body: bytes) -> None:
        self.host, self.port = host, port
        self.request = request_bytes("POST", "/predict", body)
        self.latencies: dict[int, list[float]] = defaultdict(list)  # status -> seconds
        self.failures: Counter = Counter()  # exception name -> count
        self.bad_503: list[str] = []  # 503 answers without a whole-number Retry-After or error
        self.health: Counter = Counter()
        self.sample_503: str | None = None
        self.most_open = 0  # open loop: most requests awaiting an answer at once
        self.start_delays: list[float] = []  # open loop: how late this client started requests

    async def client(self, deadline: float) -> None:
        connection = None
        while time.monotonic() < deadline:
            connection, headers = await self.exchange(connection, since=time.monotonic())
            if headers is not None and headers.get(b"connection", b"").lower() == b"close":
                connection = await close(connection)
        await close(connection)

    async def exchange(self, connection, since: float):
        """One request on `connection` (a new one if None); records its status and latency from
        `since`. Returns the connection still open (None after a failure) and the headers."""
        try:
            if connection is None:
                connection = await asyncio.wait_for(
                    asyncio.open_connection(self.host, self.port), ANSWER_TIMEOUT_S
                )
            reader, writer = connection
            writer.write(self.request)
            response = await asyncio.wait_for(read_response(reader), ANSWER_TIMEOUT_S)
            status, headers, body = response.status, response.headers, response.body
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError) as exc:
            self.failures[type(exc).__name__] += 1
            return await close(connection), None
        self.latencies[status].append(time.monotonic() - since)
        if status == 503:
            self.check_503(headers, body)
        return connection, headers

    def check_503(self, headers: dict[bytes, bytes], body: bytes) -> None:
        try:
            error = json.loads(body)["error"]
        except (ValueError, KeyError, TypeError):
            error = None
        if not headers.get(b"retry-after", b"").isdigit() or not isinstance(error, str):
            self.bad_503.append(f"{headers} {body[:200]!r}")
        elif self.sample_503 is None:
            self.sample_503 = f"Retry-After: {headers[b'retry-after'].decode()}; {error}"

    async def poll_health(self, deadline: float) -> None:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            while time.monotonic() < deadline:
                writer.write(request_bytes("GET", "/livez"))
                try:
                    status = (await asyncio.wait_for(read_response(reader), ANSWER_TIMEOUT_S)).status
                except asyncio.TimeoutError:
                    status = "no answer"
                self.health[status] += 1
                await asyncio.sleep(0.25)
        finally:
            await close((reader, writer))

    async def run(self, connections: int, duration_s: float, rate: float | None) -> None:
        deadline = time.monotonic() + duration_s
        if rate is None:
            load = [self.client(deadline) for _ in range(connections)]
        else:
            load = [self.open_loop(rate, deadline)]
        await asyncio.gather(self.poll_health(deadline), *load)

    async def open_loop(self, rate: float, deadline: float) -> None:
        """Requests started at `rate` per second whether or not earlier ones are answered, each
        on an idle keep-alive connection or a new one (as a client's connection pool does).
        Latency counts from the planned start, so a late client does not hide a slow server."""
        idle: list = []
        running: set[asyncio.Task] = set()
        planned = time.monotonic()
        while planned < deadline:
            delay = planned - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(self.one_request(idle, planned))
            running.add(task)
            task.add_done_callback(running.discard)
            self.most_open = max(self.most_open, len(running))
            planned += 1 / rate
        await asyncio.gather(*running)
        for connection in idle:
            await close(connection)

    async def one_request(self, idle: list, planned: float) -> None:
        self.start_delays.append(time.monotonic() - planned)
        connection, _ = await self.exchange(idle.pop() if idle else None, since=planned)
        if connection is not None:
            idle.append(connection)

    async def recovery_s(self) -> float | None:
        """Seconds from now until one request, on a new connection, is answered 200."""
        began = time.monotonic()
        while time.monotonic() - began < RECOVERY_LIMIT_S:
            connection = await asyncio.open_connection(self.host, self.port)
            connection[1].write(self.request)
            status = (await read_response(connection[0])).status
            await close(connection)
            if status == 200:
                return time.monotonic() - began
            await asyncio.sleep(0.05)
        return None


async def close(connection):
    if connection is not None:
        connection[1].close()
        try:
            await asyncio.wait_for(connection[1].wait_closed(), 5)
        except (OSError, asyncio.TimeoutError):
            pass
    return None


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--connections", type=int, default=600)
    parser.add_argument("--rate", type=float,
                        help="open loop instead: start this many requests per second, each on an idle "
                             "connection or a new one (--connections is then unused)")
    parser.add_argument("--duration", type=float, default=10, help="seconds of flood (default 10)")
    parser.add_argument("--model-dir", type=Path, help="default: models/package, else a tiny model")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="a SERVICE_* setting for the server (repeatable)")
    parser.add_argument("--log", type=Path, help="also copy the server's log here")
    args = parser.parse_args()
    env = dict(item.split("=", 1) for item in args.env)

    with tempfile.TemporaryDirectory(prefix="overload-") as tmp:
        workdir = Path(tmp)
        model_dir, body = bench_model(args.model_dir, workdir)
        server = Server(model_dir, workdir / "server.log", workdir / "bentoml_home", env)
        server.start().wait_ready()
        try:
            flood = Flood("127.0.0.1", server.port, body)
            began = time.monotonic()
            asyncio.run(flood.run(args.connections, args.duration, args.rate))
            elapsed = time.monotonic() - began
            recovery = asyncio.run(flood.recovery_s())
            errors_logged = "Traceback" in server.log() or "[ERROR]" in server.log()
        finally:
            server.stop()
            if args.log:
                args.log.write_text(server.log())

    total = sum(len(v) for v in flood.latencies.values())
    load = (f"{args.connections} connections" if args.rate is None
            else f"open loop at {args.rate:g} requests/s (at most {flood.most_open} awaiting an answer)")
    print(f"overload: {load}, {elapsed:.1f} s, settings {env or 'default'}; "
          f"{total} answers ({total / elapsed:.0f}/s)")
    for status, latencies in sorted(flood.latencies.items()):
        p50, p99 = percentile(latencies, 50) * 1000, percentile(latencies, 99) * 1000
        print(f"  {status}: {len(latencies)} ({len(latencies) / max(total, 1):.1%}), "
              f"p50 {p50:.0f} ms, p99 {p99:.0f} ms")
    print(f"  not answered: {dict(flood.failures) or 0}")
    if flood.start_delays:
        late50, late99 = (percentile(flood.start_delays, q) * 1000 for q in (50, 99))
        print(f"  this client started requests late by p50 {late50:.0f} ms, p99 {late99:.0f} ms "
              "(counted in the latencies above)")
    if flood.sample_503:
        print(f"  a 503: {flood.sample_503}")
    print(f"  /livez during the flood: {dict(flood.health)}")
    print(f"  after the flood, a 200 again in: "
          f"{'%.2f s' % recovery if recovery is not None else f'not within {RECOVERY_LIMIT_S:g} s'}")
    print(f"  server log has errors: {errors_logged}")
    ok = (
        set(flood.latencies) <= {200, 503}
        and not flood.failures
        and not flood.bad_503
        and set(flood.health) == {200}
        and recovery is not None
        and not errors_logged
    )
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
