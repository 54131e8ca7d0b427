#!/usr/bin/env bash
# The MLflow UI on this project's own store: runs in ./mlflow.db, artifacts in ./mlartifacts.
# Run it from the project root (`make ui` does). Port from $PORT (default 5000), local only.
#   PORT=5001 scripts/mlflow-ui.sh [more `mlflow ui` options, e.g. --workers 2]
set -euo pipefail

port="${PORT:-5000}"
host=127.0.0.1
# MLflow's UI opens its Assistant panel over a third of the page whenever the page's host name is
# localhost or 127.0.0.1. mlflow.localhost reaches the same loopback server (browsers resolve every
# *.localhost name to this machine, RFC 6761) and the UI then offers no assistant.
name=mlflow.localhost
root="$PWD"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# The experiment's runs in the classic (not GenAI) view, with the metric columns (pipeline/runs_view.py).
path="$(PYTHONPATH="$here/..${PYTHONPATH:+:$PYTHONPATH}" python "$here/mlflow_ui_url.py" "$root/mlflow.db" "$root/params.yaml")"
echo "MLflow UI: http://${name}:${port}${path}"
echo "  (a browser that does not resolve *.localhost: http://${host}:${port}${path})"
if [[ ! -f "$root/mlflow.db" ]]; then
    echo "note: no $root/mlflow.db yet; run the pipeline first (make run) to see runs" >&2
fi

# Job execution starts a background job runner (huey consumers) that outlives the server when it
# is stopped; this project has no jobs for it, so keep it off.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
# MLflow's own opt-outs: the server sends no usage data.
export MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true

# exec: the server replaces this shell, so Ctrl-C (or killing the process group) stops it cleanly.
exec mlflow ui \
    --host "$host" \
    --port "$port" \
    --workers 1 \
    --allowed-hosts "${name}:${port},${host}:${port},localhost:${port}" \
    --cors-allowed-origins "http://${name}:${port}" \
    --backend-store-uri "sqlite:///$root/mlflow.db" \
    --artifacts-destination "$root/mlartifacts" \
    "$@"
