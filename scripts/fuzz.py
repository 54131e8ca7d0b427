"""Long property-based fuzzing run of the service from its own OpenAPI spec (schemathesis).

    .venv/bin/python scripts/fuzz.py [--max-examples 1000] [--seed N] [--only NAME ...]
    (scripts/fuzz.sh runs this under `nice`; `make fuzz`)

For each variant below it starts a real `bentoml serve service:MLPService` on 127.0.0.1
(tiny ONNX models from devtools/tiny_onnx_models.py; the packaged model in
models/package too when it is there), runs `st run <url>/docs.json --checks all`
(see tests/service/fuzzing.py), stops the server, and prints per variant and in total:
cases run, 5xx answers, schema violations (status code, content type, headers or body
not as documented), other check failures (e.g. invalid input not refused with a 4xx).

Variants:
  regression-1      y = 2x + 1, one feature (rows `x` and `records`, coverage)
  regression-2      two features with different ranges
  multiclass        three class labels
  binary-auth       binary classifier with SERVICE_API_TOKEN set: fuzzed with the token;
                    schemathesis also sends requests without it (must be 401)
  small-limits      SERVICE_MAX_ROWS=3, SERVICE_MAX_BODY_BYTES=512: limits reached often
  package           models/package (the pipeline's packaged model), when present

Exit status 0 only if every variant ran cases and none had a 5xx, a violation or an error.
Every request goes to 127.0.0.1; the run is bounded by --max-examples per operation and
phase, and by a time limit per variant.
"""

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from devtools import tiny_onnx_models as models  # noqa: E402
from devtools.fuzzing import run_schemathesis  # noqa: E402
from devtools.server import Server  # noqa: E402

TOKEN = "fuzz-token-7d1e"
PACKAGE_DIR = REPO / "models" / "package"


def variants(root: Path) -> dict[str, tuple[Path, dict[str, str], dict[str, str]]]:
    """name -> (model directory, server environment, request headers)."""
    found = {
        "regression-1": (models.regression_1d(root / "regression_1d"), {}, {}),
        "regression-2": (models.regression_2d(root / "regression_2d"), {}, {}),
        "multiclass": (models.multiclass_2d(root / "multiclass_2d"), {}, {}),
        "binary-auth": (
            models.binary_2d(root / "binary_2d"),
            {"SERVICE_API_TOKEN": TOKEN},
            {"Authorization": f"Bearer {TOKEN}"},
        ),
        "small-limits": (
            models.regression_2d(root / "regression_2d_small"),
            {"SERVICE_MAX_ROWS": "3", "SERVICE_MAX_BODY_BYTES": "512"},
            {},
        ),
    }
    if (PACKAGE_DIR / "model.onnx").exists() and (PACKAGE_DIR / "card.json").exists():
        found["package"] = (PACKAGE_DIR, {}, {})
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-examples", type=int, default=1000, help="per operation and phase (default 1000)")
    parser.add_argument("--seed", type=int, default=None, help="default: random, printed")
    parser.add_argument("--only", nargs="*", help="run only these variants")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per variant (default 900)")
    parser.add_argument("--keep", type=Path, help="keep reports and server logs in this directory")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    print(f"schemathesis fuzzing, --max-examples {args.max_examples}, --seed {seed}", flush=True)

    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        chosen = variants(root / "models")
        if args.only:
            unknown = set(args.only) - set(chosen)
            if unknown:
                parser.error(f"unknown or unavailable variant(s): {sorted(unknown)}; have {sorted(chosen)}")
            chosen = {name: chosen[name] for name in args.only}

        rows, total_ok = [], True
        for name, (model_dir, env, headers) in chosen.items():
            server = Server(model_dir, root / f"{name}.log", root / "bentoml_home", env)
            started = time.monotonic()
            try:
                server.start().wait_ready()
                report = run_schemathesis(
                    server.url,
                    max_examples=args.max_examples,
                    seed=seed,
                    headers=headers,
                    report_dir=root / f"report-{name}",
                    timeout_s=args.timeout,
                )
            finally:
                server.stop()
            ok = report.ok()
            total_ok &= ok
            elapsed = time.monotonic() - started
            rows.append((name, report, elapsed))
            print(f"\n== {name} ({elapsed:.0f} s): {'PASS' if ok else 'FAIL'}", flush=True)
            print(report.summary(), flush=True)
            if not ok:
                print(report.output[-6000:], flush=True)

    print("\n| variant | cases | requests | 5xx | schema violations | other failures | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, report, _ in rows:
        print(
            f"| {name} | {report.cases} | {report.requests} | {report.server_errors} | "
            f"{len(report.schema_violations)} | {len(report.other_failures)} | {len(report.errors)} |"
        )
    totals = [sum(getattr(r, a) for _, r, _ in rows) for a in ("cases", "requests", "server_errors")]
    violations = sum(len(r.schema_violations) for _, r, _ in rows)
    others = sum(len(r.other_failures) for _, r, _ in rows)
    errors = sum(len(r.errors) for _, r, _ in rows)
    print(f"| **total** | {totals[0]} | {totals[1]} | {totals[2]} | {violations} | {others} | {errors} |")
    print(f"\ncases run: {totals[0]}, 5xx: {totals[2]}, schema violations: {violations}  "
          f"-> {'PASS' if total_ok else 'FAIL'} (seed {seed})")
    return 0 if total_ok else 1


if __name__ == "__main__":
    sys.exit(main())
