"""Soak test: minutes of steady single-row load on a real server, with bad requests mixed in.

    .venv/bin/python bench/soak.py [--duration 300] [--concurrency 64] [--model-dir DIR]
    (make soak)

Starts `bentoml serve service:MLPService` on 127.0.0.1 (devtools/server.py) with the
packaged model in models/package when it is there, else the tiny y = 2x + 1 model from
devtools/tiny_onnx_models.py, in the service's default configuration. Then
--concurrency clients, each on its own keep-alive connection, send requests back to back
for --duration seconds (at most --max-requests in all):
  valid     single-row {"x": [[...]]}, values drawn inside the card's training ranges -> 200
  invalid   ~--invalid-rate: NaN, wrong row width, unknown field, broken JSON, ...   -> 400
  oversize  ~--oversize-rate: a body just over SERVICE_MAX_BODY_BYTES, sent whole   -> 413
Anything else (another status, a dropped connection, no answer in 30 s) is unexpected.

Per minute (--report-every) it prints: requests, throughput, unexpected answers, p50/p99
latency of the valid requests, server RSS (arbiter + workers, psutil) and the CPU used
by the server and by this load generator (if the generator nears 100 % of a core, it, not
the server, is the limit). Pass: zero unexpected answers, server RSS at the end less than
10 % above its value at the end of the first minute, and as many /metrics samples at the end
as then (drift gauges and the rest have fixed label sets). --request-log serves with the
request log on. Exit status 0 on pass.

The load generator is plain asyncio with hand-written HTTP/1.1 (no client library in the
way): on a 2-core machine it needs well under one core for the rate one worker serves.
"""

import argparse
import asyncio
import json
import math
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from devtools import tiny_onnx_models as models  # noqa: E402
from devtools.server import Server  # noqa: E402

from rawhttp import percentile, read_response, request_bytes  # noqa: E402

PACKAGE_DIR = REPO / "models" / "package"
DEFAULT_MAX_BODY_BYTES = 2 * 1024 * 1024  # the service default (SERVICE_MAX_BODY_BYTES)
REQUEST_TIMEOUT_S = 30
EXPECTED = {"valid": 200, "invalid": 400, "oversize": 413}
RSS_GROWTH_LIMIT = 0.10


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- request bodies ---------------------------------------------------------------------


def valid_bodies(card: dict, rng: random.Random, n: int = 2000) -> list[bytes]:
    """Rows inside the training ranges; a categorical feature gets one of its categories, or now and then
    one the model never saw (answered and flagged, also a 200)."""
    def value(feature: dict):
        if feature.get("kind") == "categorical":
            return rng.choice(feature["categories"]) if rng.random() < 0.95 else "never seen"
        return round(rng.uniform(feature["min"], feature["max"]), 6)

    return [json.dumps({"x": [[value(f) for f in card["features"]]]}).encode() for _ in range(n)]


def invalid_bodies(card: dict) -> list[bytes]:
    n = len(card["features"])
    row = [0.0] * n
    return [
        b'{"x": [[' + b", ".join([b"NaN"] * n) + b"]]}",  # not finite
        json.dumps({"x": [row + [1.0]]}).encode(),  # one value too many
        json.dumps({"x": [row], "rows": 1}).encode(),  # unknown field
        json.dumps({"x": []}).encode(),  # no rows
        json.dumps({"x": [[str(v) for v in row]]}).encode(),  # strings, not numbers
        json.dumps({"x": [[1e300] * n]}).encode(),  # beyond the value bound
        json.dumps({"records": [{"no such feature": 1.0}]}).encode(),
        b'{"x": [[0.5]',  # broken JSON
        b"[]",  # not an object
    ]


def oversize_body(limit: int) -> bytes:
    filler = b"[0.5], " * ((limit // 7) + 200)  # ~1.4 kB over the limit: still "just over"
    return b'{"x": [' + filler + b"[0.5]]}"


# --- statistics -------------------------------------------------------------------------


@dataclass
class Window:
    requests: Counter = field(default_factory=Counter)  # kind -> count
    unexpected: Counter = field(default_factory=Counter)  # (kind, status or error) -> count
    latencies: list[float] = field(default_factory=list)  # seconds, valid requests only


@dataclass
class Soak:
    host: str
    port: int
    duration_s: float
    window_s: float
    concurrency: int
    max_requests: int
    invalid_rate: float
    oversize_rate: float
    valid: list[bytes]
    invalid: list[bytes]
    oversize: bytes
    seed: int
    windows: list[Window] = field(default_factory=list)
    sent: int = 0

    def __post_init__(self) -> None:
        self.n_windows = max(1, math.ceil(self.duration_s / self.window_s))
        self.windows = [Window() for _ in range(self.n_windows)]
        hostport = f"{self.host}:{self.port}"
        self.valid_requests = [request_bytes("POST", "/predict", b, hostport) for b in self.valid]
        self.invalid_requests = [request_bytes("POST", "/predict", b, hostport) for b in self.invalid]
        self.oversize_request = request_bytes("POST", "/predict", self.oversize, hostport)

    def pick(self, rng: random.Random) -> tuple[str, bytes]:
        roll = rng.random()
        if roll < self.oversize_rate:
            return "oversize", self.oversize_request
        if roll < self.oversize_rate + self.invalid_rate:
            return "invalid", rng.choice(self.invalid_requests)
        return "valid", rng.choice(self.valid_requests)

    async def client(self, index: int, start: float, deadline: float) -> None:
        rng = random.Random(self.seed * 1000 + index)
        connection = None
        while time.monotonic() < deadline and self.sent < self.max_requests:
            self.sent += 1
            kind, payload = self.pick(rng)
            began = time.monotonic()
            window = self.windows[min(self.n_windows - 1, int((began - start) // self.window_s))]
            window.requests[kind] += 1
            try:
                if connection is None:
                    connection = await asyncio.wait_for(
                        asyncio.open_connection(self.host, self.port), REQUEST_TIMEOUT_S
                    )
                reader, writer = connection
                writer.write(payload)
                status, close = await asyncio.wait_for(self._exchange(reader, writer), REQUEST_TIMEOUT_S)
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError) as exc:
                window.unexpected[(kind, type(exc).__name__)] += 1
                connection = await self._close(connection)
                continue
            elapsed = time.monotonic() - began
            if status != EXPECTED[kind]:
                window.unexpected[(kind, status)] += 1
            elif kind == "valid":
                window.latencies.append(elapsed)
            if close:
                connection = await self._close(connection)
        await self._close(connection)

    @staticmethod
    async def _exchange(reader, writer) -> tuple[int, bool]:
        await writer.drain()
        response = await read_response(reader)
        return response.status, response.must_close

    @staticmethod
    async def _close(connection):
        if connection is not None:
            writer = connection[1]
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), 5)
            except (OSError, asyncio.TimeoutError):
                pass
        return None

    async def run(self, on_window) -> None:
        start = time.monotonic()
        deadline = start + self.duration_s
        clients = [asyncio.create_task(self.client(i, start, deadline)) for i in range(self.concurrency)]
        for k in range(self.n_windows):
            end = min(start + (k + 1) * self.window_s, deadline)
            await asyncio.sleep(max(0.0, end - time.monotonic()))
            on_window(k)
        await asyncio.gather(*clients)


# --- main -------------------------------------------------------------------------------


def resolve_model_dir(requested: Path | None, workdir: Path) -> tuple[Path, str]:
    candidate = requested or PACKAGE_DIR
    if (candidate / "model.onnx").exists() and (candidate / "card.json").exists():
        return candidate, str(candidate)
    if requested is not None:
        raise SystemExit(f"{requested} holds no model.onnx + card.json")
    return models.regression_1d(workdir / "tiny_model"), "tiny y = 2x + 1 model (no models/package)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=300, help="seconds of load (default 300)")
    parser.add_argument("--report-every", type=float, default=60, help="seconds per report row (default 60)")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--max-requests", type=int, default=5_000_000, help="hard cap on requests sent")
    parser.add_argument("--invalid-rate", type=float, default=0.01)
    parser.add_argument("--oversize-rate", type=float, default=0.01)
    parser.add_argument("--model-dir", type=Path, help="default: models/package, else a tiny model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--request-log", action="store_true",
                        help="serve with the request log on (SERVICE_REQUEST_LOG in a temporary directory)")
    args = parser.parse_args()
    if args.duration <= 0 or args.report_every <= 0 or args.concurrency < 1:
        parser.error("--duration, --report-every and --concurrency must be positive")
    if args.duration > 3600:
        parser.error("--duration is capped at 3600 s")

    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        workdir = Path(tmp)
        model_dir, model_label = resolve_model_dir(args.model_dir, workdir)
        card = json.loads((model_dir / "card.json").read_text())
        env = {"SERVICE_REQUEST_LOG": str(workdir / "requests")} if args.request_log else {}
        server = Server(model_dir, workdir / "server.log", workdir / "bentoml_home", env=env)
        server.start().wait_ready()
        try:
            return soak(args, server, card, model_label)
        finally:
            server.stop()


def metrics_series(server: Server) -> int:
    """Lines of /metrics that are samples (not # HELP / # TYPE)."""
    body = httpx.get(f"{server.url}/metrics", timeout=REQUEST_TIMEOUT_S).text
    return sum(1 for line in body.splitlines() if line and not line.startswith("#"))


def soak(args, server: Server, card: dict, model_label: str) -> int:
    rng = random.Random(args.seed)
    runner = Soak(host="127.0.0.1", port=server.port, duration_s=args.duration, window_s=args.report_every,
                  concurrency=args.concurrency, max_requests=args.max_requests, seed=args.seed,
                  invalid_rate=args.invalid_rate, oversize_rate=args.oversize_rate,
                  valid=valid_bodies(card, rng), invalid=invalid_bodies(card),
                  oversize=oversize_body(DEFAULT_MAX_BODY_BYTES))
    me = psutil.Process()
    cpu_of = lambda processes: sum(p.cpu_times().user + p.cpu_times().system for p in processes)  # noqa: E731

    def server_cpu() -> float:
        try:
            return cpu_of(server.process_tree())
        except psutil.NoSuchProcess:
            return math.nan

    print(f"soak: {model_label}; {args.concurrency} connections, {args.duration:g} s, "
          f"~{args.invalid_rate:.0%} invalid + ~{args.oversize_rate:.0%} oversize "
          f"({len(runner.oversize) / 1e6:.2f} MB) requests; server pid {server.process.pid}", flush=True)
    rows: list[dict] = []
    marks = {"time": time.monotonic(), "server_cpu": server_cpu(), "client_cpu": cpu_of([me])}

    def on_window(k: int) -> None:
        now, s_cpu, c_cpu = time.monotonic(), server_cpu(), cpu_of([me])
        wall = now - marks["time"]
        window = runner.windows[k]
        total = sum(window.requests.values())
        row = {
            "minute": k + 1,
            "requests": total,
            "per_s": total / wall if wall else math.nan,
            **{kind: window.requests[kind] for kind in EXPECTED},
            "unexpected": sum(window.unexpected.values()),
            "unexpected_detail": {f"{kind}->{what}": n for (kind, what), n in window.unexpected.items()},
            "p50_ms": percentile(window.latencies, 50) * 1000,
            "p99_ms": percentile(window.latencies, 99) * 1000,
            "rss_mb": server.rss_bytes() / 2**20,
            "metrics_series": metrics_series(server),
            "server_cpu_pct": 100 * (s_cpu - marks["server_cpu"]) / wall,
            "client_cpu_pct": 100 * (c_cpu - marks["client_cpu"]) / wall,
        }
        marks.update(time=now, server_cpu=s_cpu, client_cpu=c_cpu)
        rows.append(row)
        print(f"  window {k + 1}: {total} requests, {row['unexpected']} unexpected, "
              f"p99 {row['p99_ms']:.1f} ms, RSS {row['rss_mb']:.1f} MB", flush=True)

    asyncio.run(runner.run(on_window))
    # Requests that began in the last window but finished after its row was printed.
    for k, row in enumerate(rows):
        window = runner.windows[k]
        row["requests"] = sum(window.requests.values())
        row.update({kind: window.requests[kind] for kind in EXPECTED})
        row["unexpected"] = sum(window.unexpected.values())
        row["unexpected_detail"] = {f"{kind}->{what}": n for (kind, what), n in window.unexpected.items()}
        row["p99_ms"] = percentile(window.latencies, 99) * 1000
        row["p50_ms"] = percentile(window.latencies, 50) * 1000

    unit = "minute" if args.report_every == 60 else f"{args.report_every:g} s window"
    print(f"\n| {unit} | requests | req/s | valid | invalid | oversize | unexpected | p50 ms | p99 ms "
          "| server RSS MB | server CPU % | load-gen CPU % |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['minute']} | {row['requests']} | {row['per_s']:.0f} | {row['valid']} | {row['invalid']} "
              f"| {row['oversize']} | {row['unexpected']} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} "
              f"| {row['rss_mb']:.1f} | {row['server_cpu_pct']:.0f} | {row['client_cpu_pct']:.0f} |")
    total = sum(row["requests"] for row in rows)
    unexpected = sum(row["unexpected"] for row in rows)
    first_rss, last_rss = rows[0]["rss_mb"], rows[-1]["rss_mb"]
    growth = (last_rss - first_rss) / first_rss if first_rss else math.nan
    series = (rows[0]["metrics_series"], rows[-1]["metrics_series"])  # labels are bounded: traffic adds none
    for row in rows:
        if row["unexpected_detail"]:
            print(f"unexpected in {unit} {row['minute']}: {row['unexpected_detail']}")
    passed = unexpected == 0 and growth < RSS_GROWTH_LIMIT and total > 0 and series[0] == series[1]
    print(f"\nrequests: {total}; unexpected: {unexpected}; server RSS {first_rss:.1f} MB after {unit} 1 -> "
          f"{last_rss:.1f} MB at the end ({growth:+.1%}, limit +{RSS_GROWTH_LIMIT:.0%}); /metrics series "
          f"{series[0]} -> {series[1]}; "
          f"p99 {rows[0]['p99_ms']:.1f} ms first {unit}, {rows[-1]['p99_ms']:.1f} ms last -> "
          f"{'PASS' if passed else 'FAIL'}")
    if args.json:
        args.json.write_text(json.dumps({"model": model_label, "rows": rows, "requests": total,
                                         "unexpected": unexpected, "rss_growth": growth,
                                         "passed": passed}, indent=2))
    if not passed:
        print(server.log()[-3000:], file=sys.stderr)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
