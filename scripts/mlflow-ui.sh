#!/usr/bin/env bash
# The MLflow UI on this project's own store: runs in ./mlflow.db, artifacts in ./mlartifacts.
# Run it from the project root (`make ui` does). Port from $PORT (default 5000), local only.
#   PORT=5001 scripts/mlflow-ui.sh [more `mlflow ui` options, e.g. --workers 2]
set -euo pipefail

port="${PORT:-5000}"
host=127.0.0.1
root="$PWD"

echo "MLflow UI: http://${host}:${port}"
if [[ ! -f "$root/mlflow.db" ]]; then
    echo "note: no $root/mlflow.db yet; run the pipeline first (make run) to see runs" >&2
fi

# Job execution starts a background job runner (huey consumers) that outlives the server when it
# is stopped; this project has no jobs for it, so keep it off.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false

# exec: the server replaces this shell, so Ctrl-C (or killing the process group) stops it cleanly.
exec mlflow ui \
    --host "$host" \
    --port "$port" \
    --workers 1 \
    --backend-store-uri "sqlite:///$root/mlflow.db" \
    --artifacts-destination "$root/mlartifacts" \
    "$@"
