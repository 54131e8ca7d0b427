#!/usr/bin/env bash
# Long schemathesis fuzzing run of the service (make fuzz); arguments go to scripts/fuzz.py.
# Prints cases run / 5xx / schema violations per variant and in total; exit 1 on any finding.
set -euo pipefail
cd "$(dirname "$0")/.."
export BENTOML_DO_NOT_TRACK=True
exec nice -n 10 .venv/bin/python scripts/fuzz.py "$@"
