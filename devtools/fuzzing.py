"""Property-based fuzzing of a running service from its own OpenAPI spec, with schemathesis.

`run_schemathesis` runs the schemathesis CLI (`st run <url>/docs.json`, v4) against a
server, with every check on (`--checks all`: no 5xx, status code / content type / headers /
body as documented, schema-invalid input rejected with a 4xx, schema-valid input accepted,
unsupported methods 405 with Allow, auth not ignored) and every phase that applies
(examples, coverage: boundary and type-confusion cases, fuzzing: random valid and invalid
cases). It reads back the NDJSON event stream, so the figures come from what was really
sent and answered, not from the console text.

Used by tests/service/test_fuzz.py (a short run) and scripts/fuzz.py (the long run).
"""

import base64
import json
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ST = Path(sys.executable).parent / "st"
CONFIG = Path(__file__).with_name("schemathesis.toml")  # 413 counts as a proper refusal

# Checks whose failure means the answer is not what /docs.json documents.
SCHEMA_CHECKS = frozenset(
    {
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
    }
)


@dataclass
class Failure:
    check: str
    operation: str
    status: int | None
    title: str
    message: str
    request: str  # method, URL and the first bytes of the body


@dataclass
class FuzzReport:
    exit_code: int
    cases: int = 0  # generated test cases, each sent once
    requests: int = 0  # HTTP exchanges recorded (a case may need more than one)
    statuses: Counter = field(default_factory=Counter)  # status code -> count
    per_operation: Counter = field(default_factory=Counter)  # "POST /predict" -> cases
    failures: list[Failure] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # schemathesis could not run a case
    output: str = ""  # the CLI's console output

    @property
    def server_errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 500)

    @property
    def schema_violations(self) -> list[Failure]:
        return [f for f in self.failures if f.check in SCHEMA_CHECKS]

    @property
    def other_failures(self) -> list[Failure]:
        return [f for f in self.failures if f.check not in SCHEMA_CHECKS]

    def ok(self) -> bool:
        return (
            self.exit_code == 0
            and self.cases > 0
            and not self.failures
            and not self.errors
            and self.server_errors == 0
        )

    def summary(self) -> str:
        statuses = ", ".join(f"{status}: {n}" for status, n in sorted(self.statuses.items()))
        lines = [
            f"cases run: {self.cases} ({self.requests} requests; {statuses})",
            f"5xx answers: {self.server_errors}",
            f"schema violations: {len(self.schema_violations)}",
            f"other check failures: {len(self.other_failures)}",
            f"errors: {len(self.errors)}",
        ]
        for failure in self.failures[:20]:
            lines.append(
                f"  {failure.check} on {failure.operation} ({failure.status}): {failure.title}\n"
                f"    {failure.message[:400]}\n    request: {failure.request}"
            )
        lines.extend(f"  error: {error[:400]}" for error in self.errors[:10])
        return "\n".join(lines)


def run_schemathesis(
    base_url: str,
    *,
    max_examples: int,
    seed: int,
    report_dir: Path,
    headers: dict[str, str] | None = None,
    timeout_s: float = 600,
) -> FuzzReport:
    """Fuzz every operation in base_url/docs.json; up to max_examples cases per operation and phase."""
    report_dir.mkdir(parents=True, exist_ok=True)
    events = report_dir / "events.ndjson"
    events.unlink(missing_ok=True)
    command = [
        str(ST), "--config-file", str(CONFIG), "run", f"{base_url}/docs.json",
        "--checks", "all",
        "--max-examples", str(max_examples),
        "--seed", str(seed),
        "--continue-on-failure",  # count every violation, not just the first per operation
        "--workers", "1",  # the machine has 2 cores; the server needs one
        "--request-timeout", "30",
        "--generation-database", "none",  # no .hypothesis/ left in the working tree
        "--no-color",
        "--report", "ndjson",
        "--report-ndjson-path", str(events),
    ]
    for name, value in (headers or {}).items():
        command += ["--header", f"{name}: {value}"]
    result = subprocess.run(
        command,
        cwd=report_dir,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    report = FuzzReport(exit_code=result.returncode, output=result.stdout + result.stderr)
    if events.exists():
        _read_events(events, report)
    return report


def _read_events(path: Path, report: FuzzReport) -> None:
    for line in path.read_text().splitlines():
        event = json.loads(line)
        (kind, payload), = event.items()
        if kind == "NonFatalError":
            report.errors.append(str(payload.get("info", payload))[:1000])
        elif kind == "FatalError":
            report.errors.append(str(payload)[:1000])
        if kind not in ("ScenarioFinished", "FuzzScenarioFinished") or payload.get("is_final"):
            continue  # is_final: a replay of a failing case, already counted
        recorder = payload.get("recorder", {})
        operation = recorder.get("label", "?")
        interactions = recorder.get("interactions", {})
        report.cases += len(recorder.get("cases", {}))
        report.per_operation[operation] += len(recorder.get("cases", {}))
        for interaction in interactions.values():
            response = interaction.get("response")
            if response is not None:
                report.requests += 1
                report.statuses[response["status_code"]] += 1
        for case_id, checks in recorder.get("checks", {}).items():
            for check in checks:
                if check["status"] != "failure":
                    continue
                info = check.get("failure_info", {}).get("failure", {})
                interaction = interactions.get(case_id, {})
                response = interaction.get("response") or {}
                report.failures.append(
                    Failure(
                        check=check["name"],
                        operation=info.get("operation", operation),
                        status=response.get("status_code"),
                        title=info.get("title", ""),
                        message=info.get("message", ""),
                        request=_describe_request(interaction.get("request", {})),
                    )
                )


def _describe_request(request: dict) -> str:
    body = request.get("body") or {}
    if "$base64" in body:
        content = base64.b64decode(body["$base64"])[:200]
    else:
        content = str(body.get("string", ""))[:200].encode()
    headers = {k: v for k, v in (request.get("headers") or {}).items() if k.lower() != "authorization"}
    return f"{request.get('method')} {request.get('uri')} headers={headers} body={content!r}"
