"""Hostile clients (issue 20) replayed against a real server, side by side with no attack.

    .venv/bin/python bench/attack.py [--model-dir DIR] [--only NAME ...] [--slow-seconds 25]

Starts `bentoml serve service:MLPService` on 127.0.0.1 (devtools/server.py) with the
packaged model in models/package when it is there, else the tiny y = 2x + 1 model, in the
service's default configuration. Then, per attack, two phases of the same length on the
same server: first no attack, then the attack, while --clients legitimate clients (each on
its own keep-alive connection, in a process of their own so the attacker's event loop does
not skew their clock) send single-row POST /predict back to back. Per phase it prints the
legitimate requests' success rate (200s / sent) and p99 latency, and per attack the server's
RSS (arbiter + workers) before, at its peak during, and after it.

Attacks (each as the outside attack run found it):
  chunked     one upload of 500 MiB with `Content-Length: 20` and `Transfer-Encoding: chunked`,
              one of 500 MiB chunked only: the status, and how much the server took before it
  paths       5,000 GETs to distinct 4 KB unknown paths (no token): /metrics size and RSS
  slow        260 connections sending a /predict body at 1 byte/s for --slow-seconds, each
              reconnecting 1 s after it is refused or cut off
  disconnect  500 clients that send half a body and leave: 5xx counted in /metrics (BentoML's
              request counter), 499s counted by the gate, errors in the server log

Goals (issue 20): chunked 413 (or 400) and RSS growth < 20 MB; paths RSS growth < 20 MB and
/metrics within 10 %; slow >= 99 % of legitimate requests served with p99 <= 10x the
unattacked p99; disconnect zero 5xx. Exit status 0 when all are met.
"""

import argparse
import asyncio
import multiprocessing
import re
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from devtools.server import Server, bench_model  # noqa: E402

from rawhttp import percentile, read_response, request_bytes  # noqa: E402

MB = 1_000_000
MIB = 1024 * 1024


# --- legitimate load, in a process of its own ---------------------------------------------


async def _legit(port: int, body: bytes, clients: int, seconds: float) -> list[tuple[int, float]]:
    results: list[tuple[int, float]] = []
    request = request_bytes("POST", "/predict", body)
    deadline = time.monotonic() + seconds

    async def client() -> None:
        connection = None
        while time.monotonic() < deadline:
            began = time.monotonic()
            try:
                if connection is None:
                    connection = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 30)
                connection[1].write(request)
                answer = await asyncio.wait_for(read_response(connection[0]), 30)
                results.append((answer.status, time.monotonic() - began))
                if answer.must_close:
                    connection[1].close()
                    connection = None
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError):
                results.append((0, time.monotonic() - began))
                connection = None
        if connection is not None:
            connection[1].close()

    await asyncio.gather(*(client() for _ in range(clients)))
    return results


def _legit_process(port, body, clients, seconds, queue) -> None:
    queue.put(asyncio.run(_legit(port, body, clients, seconds)))


@dataclass
class Phase:
    results: list[tuple[int, float]]

    @property
    def success(self) -> float:
        return sum(status == 200 for status, _ in self.results) / max(len(self.results), 1)

    @property
    def p99_ms(self) -> float:
        return percentile([t for status, t in self.results if status == 200], 99) * 1000

    def describe(self) -> str:
        others = sorted({status for status, _ in self.results} - {200})
        return (f"{len(self.results)} requests, {self.success:.2%} served, p99 {self.p99_ms:.1f} ms"
                + (f", other statuses {others}" if others else ""))


class LegitLoad:
    def __init__(self, port: int, body: bytes, clients: int, seconds: float) -> None:
        self.queue = multiprocessing.Queue()
        self.process = multiprocessing.Process(
            target=_legit_process, args=(port, body, clients, seconds, self.queue)
        )

    def __enter__(self) -> "LegitLoad":
        self.process.start()
        return self

    def __exit__(self, *exc) -> None:
        self.phase = Phase(self.queue.get(timeout=120))
        self.process.join(30)


class RssWatch:
    """Samples the server tree's RSS every 0.1 s from a thread; `peak` is the highest seen."""

    def __init__(self, server: Server) -> None:
        self.server, self.peak, self._stop = server, server.rss_bytes(), threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.peak = max(self.peak, self.server.rss_bytes())

    def __enter__(self) -> "RssWatch":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.thread.join()


# --- the attacks (plain asyncio in this process) --------------------------------------------


def _head(method: str, path: str, *lines: str) -> bytes:
    return ("\r\n".join([f"{method} {path} HTTP/1.1", "Host: attack", *lines]) + "\r\n\r\n").encode()


async def chunked_upload(port: int, total: int, *extra: str) -> tuple[str, int]:
    """(answer, bytes sent before the server stopped taking them). The client waits 0.2 s
    after the headers for an early answer (as for `Expect: 100-continue`): a server that
    refuses on the headers alone then closes at once, and the kernel drops an answer
    that a reset overtakes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_head("POST", "/predict", "Content-Type: application/json",
                       "Transfer-Encoding: chunked", *extra))
    chunk = b"100000\r\n" + b" " * MIB + b"\r\n"
    sent = 0
    answered = asyncio.ensure_future(read_response(reader))
    await asyncio.wait({answered}, timeout=0.2)
    try:
        while sent < total and not answered.done():
            writer.write(chunk)
            await writer.drain()
            sent += MIB
        if not answered.done():
            writer.write(b"0\r\n\r\n")
        await asyncio.wait_for(asyncio.shield(answered), 60)
    except (OSError, asyncio.TimeoutError):
        pass
    finally:
        writer.close()
    if answered.done() and answered.exception() is None:
        answer = answered.result()
        return f"{answer.status} {answer.body[:90].decode(errors='replace')}", sent
    if not answered.done():
        answered.cancel()
        return "no answer in 60 s", sent
    return f"no answer ({type(answered.exception()).__name__})", sent


async def unknown_paths(port: int, count: int, connections: int = 8) -> dict[int, int]:
    statuses: dict[int, int] = {}
    queue = iter(range(count))

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for i in queue:
            writer.write(request_bytes("GET", f"/{'p' * 4000}/{i}"))
            answer = await read_response(reader)
            statuses[answer.status] = statuses.get(answer.status, 0) + 1
            if answer.must_close:
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()

    await asyncio.gather(*(client() for _ in range(connections)))
    return statuses


async def slow_uploads(port: int, connections: int, seconds: float) -> dict[str, int]:
    outcomes: dict[str, int] = {}
    deadline = time.monotonic() + seconds
    body = b'{"x": [[0.5]]}' + b" " * 10_000

    async def client() -> None:
        while time.monotonic() < deadline:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                outcomes["connect failed"] = outcomes.get("connect failed", 0) + 1
                await asyncio.sleep(1)
                continue
            writer.write(_head("POST", "/predict", "Content-Type: application/json",
                               f"Content-Length: {len(body)}"))
            answered = asyncio.ensure_future(read_response(reader))
            try:
                for byte in body:
                    if answered.done() or time.monotonic() > deadline:
                        break
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.wait({answered}, timeout=1)
                outcome = str(answered.result().status) if answered.done() and not answered.exception() else "cut"
            except OSError:
                outcome = "cut"
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            answered.cancel()
            writer.close()
            await asyncio.sleep(1)

    await asyncio.gather(*(client() for _ in range(connections)))
    return outcomes


async def disconnects(port: int, count: int) -> None:
    for _ in range(count // 50):
        async def leave() -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(_head("POST", "/predict", "Content-Type: application/json",
                               "Content-Length: 1000") + b'{"x": [[0.5')
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.transport.abort()

        await asyncio.gather(*(leave() for _ in range(50)))


# --- a run ---------------------------------------------------------------------------------


def metric_sum(text: str, name: str, pattern: str = "") -> float:
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
        if line.startswith(name + "{") and re.search(pattern, line)
    )


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def say(self, line: str) -> None:
        self.lines.append(line)
        print(line, flush=True)

    def check(self, ok: bool, goal: str) -> None:
        self.say(f"    goal {'met' if ok else 'MISSED'}: {goal}")
        if not ok:
            self.failed.append(goal)


def side_by_side(server: Server, body: bytes, clients: int, seconds: float, attack, report: Report):
    """Run the legitimate load alone, then with `attack()` (a coroutine factory) going on."""
    with LegitLoad(server.port, body, clients, seconds) as quiet:
        pass
    time.sleep(0.5)
    before = server.rss_bytes()
    with RssWatch(server) as watch, LegitLoad(server.port, body, clients, seconds) as loud:
        outcome = asyncio.run(attack())
    time.sleep(1)
    after = server.rss_bytes()
    report.say(f"    no attack: {quiet.phase.describe()}")
    report.say(f"    attack:    {loud.phase.describe()}")
    ratio = loud.phase.p99_ms / quiet.phase.p99_ms
    report.say(f"    p99 ratio attack/no attack: {ratio:.2f}x; served ratio: "
               f"{loud.phase.success / max(quiet.phase.success, 1e-9):.3f}")
    report.say(f"    RSS before {before / MB:.0f} MB, peak {watch.peak / MB:.0f} MB, after {after / MB:.0f} MB "
               f"(growth {(after - before) / MB:+.1f} MB, peak {(watch.peak - before) / MB:+.1f} MB)")
    return outcome, quiet.phase, loud.phase, before, after, watch.peak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, help="default: models/package, else a tiny model")
    parser.add_argument("--only", nargs="*", default=["chunked", "paths", "slow", "disconnect"])
    parser.add_argument("--clients", type=int, default=4, help="legitimate clients (default 4)")
    parser.add_argument("--slow-seconds", type=float, default=25)
    parser.add_argument("--slow-connections", type=int, default=260)
    parser.add_argument("--paths", type=int, default=5000)
    parser.add_argument("--chunked-mib", type=int, default=500)
    args = parser.parse_args()
    report = Report()

    with tempfile.TemporaryDirectory(prefix="attack-") as tmp:
        workdir = Path(tmp)
        model_dir, body = bench_model(args.model_dir, workdir)
        server = Server(model_dir, workdir / "server.log", workdir / "bentoml_home")
        server.start().wait_ready()
        port = server.port
        metrics = lambda: httpx.get(f"{server.url}/metrics", timeout=60).text
        try:
            for _ in range(3):  # warm up: first requests, first /metrics
                asyncio.run(_legit(port, body, args.clients, 1))
                metrics()
            report.say(f"attack bench: {model_dir.name}, {args.clients} legitimate clients, default settings")

            if "chunked" in args.only:
                report.say(f"chunked: {args.chunked_mib} MiB bodies, chunked with and without Content-Length: 20")

                async def attack():
                    return [await chunked_upload(port, args.chunked_mib * MIB, "Content-Length: 20"),
                            await chunked_upload(port, args.chunked_mib * MIB)]

                outcome, *_, before, after, peak = side_by_side(server, body, args.clients, 5, attack, report)
                for (answer, sent), name in zip(outcome, ("with Content-Length: 20", "chunked only")):
                    report.say(f"    {name}: {answer}; {sent / MIB:.0f} MiB sent before the server stopped reading")
                report.check(all(a.startswith(("400", "413")) for a, _ in outcome), "refused with 413 (or 400)")
                report.check(peak - before < 20 * MB, "RSS growth < 20 MB (peak)")

            if "paths" in args.only:
                report.say(f"paths: {args.paths} GETs to distinct 4 KB unknown paths")
                size_before = len(metrics())
                outcome, *_, before, after, peak = side_by_side(
                    server, body, args.clients, 5, lambda: unknown_paths(port, args.paths), report
                )
                size_after = len(metrics())
                report.say(f"    statuses {outcome}; /metrics {size_before} -> {size_after} bytes "
                           f"({size_after / size_before:.3f}x)")
                report.check(after - before < 20 * MB, "RSS growth < 20 MB")
                report.check(abs(size_after / size_before - 1) <= 0.10, "/metrics size within 10 %")

            if "slow" in args.only:
                report.say(f"slow: {args.slow_connections} uploads at 1 byte/s for {args.slow_seconds:g} s")
                outcome, quiet, loud, *_ = side_by_side(
                    server, body, args.clients, args.slow_seconds,
                    lambda: slow_uploads(port, args.slow_connections, args.slow_seconds), report,
                )
                report.say(f"    the slow uploads ended as: {outcome}")
                report.check(loud.success >= 0.99, ">= 99 % of legitimate requests served")
                report.check(loud.p99_ms <= 10 * quiet.p99_ms, "p99 <= 10x the unattacked p99")

            if "disconnect" in args.only:
                report.say("disconnect: 500 clients send half a body and leave")
                text = metrics()
                server_errors = lambda t: metric_sum(t, "bentoml_service_request_total", r'http_response_code="5\d\d"')
                gone = lambda t: metric_sum(t, "service_gate_answers_total", 'status="499"')
                errors_before, gone_before = server_errors(text), gone(text)
                side_by_side(server, body, args.clients, 5, lambda: disconnects(port, 500), report)
                text = metrics()
                five_xx, counted = server_errors(text) - errors_before, gone(text) - gone_before
                log = server.log()
                logged = log.count("Traceback") + log.count("ERROR")
                report.say(f"    5xx counted: {five_xx:.0f}; 499 counted by the gate: {counted:.0f}; "
                           f"errors/tracebacks in the server log: {logged}")
                report.check(five_xx == 0 and logged == 0, "zero 5xx for client disconnects")
        finally:
            server.stop()

    report.say("PASS" if not report.failed else f"FAIL: {report.failed}")
    return 0 if not report.failed else 1


if __name__ == "__main__":
    sys.exit(main())
