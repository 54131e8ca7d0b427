#!/usr/bin/env bash
# A team's infrastructure on one machine, for trying the pipeline "beyond one machine":
#   PostgreSQL  - the Optuna study storage (database `optuna`) and MLflow's backend store (database `mlflow`)
#   MLflow      - a tracking server on that PostgreSQL, artifacts in a local directory (served through it)
# Both listen on 127.0.0.1 only; data lives under .cache/infra/ (git-ignored).
#
#   scripts/infra.sh up       start both (idempotent) and print the variables to export
#   scripts/infra.sh status   what runs, and the variables
#   scripts/infra.sh down     stop both (data is kept; `rm -rf .cache/infra` forgets it)
#
# Settings (environment): INFRA_DIR (default .cache/infra), PG_PORT (5433), MLFLOW_PORT (5001).
# PostgreSQL comes from Debian (`bash scripts/install-postgres.sh`); it refuses to run as root, so
# as root the server runs as the `postgres` user. Authentication is `trust` on loopback: fine on a
# laptop, not for a shared server (give it passwords and TLS there).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
dir="${INFRA_DIR:-$root/.cache/infra}"
pg_port="${PG_PORT:-5433}"
mlflow_port="${MLFLOW_PORT:-5001}"
host=127.0.0.1
pgdata="$dir/postgres"
artifacts="$dir/mlartifacts"
mlflow_pid="$dir/mlflow.pid"
tune_storage="postgresql://postgres@$host:$pg_port/optuna"
backend_store="postgresql://postgres@$host:$pg_port/mlflow"
tracking_uri="http://$host:$mlflow_port"

if [[ -x "$root/.venv/bin/mlflow" ]]; then
    bin="$root/.venv/bin"
else
    bin="$(dirname "$(command -v mlflow || echo /nonexistent/mlflow)")"
fi

die() { echo "infra: $*" >&2; exit 1; }

pg_bin() {
    local found
    found="$(compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" | sort -V | tail -n 1 || true)"
    [[ -n $found ]] || die "PostgreSQL is not installed: run 'bash scripts/install-postgres.sh' (as root)"
    dirname "$found"
}

as_pg() {  # run a PostgreSQL server command as a user PostgreSQL accepts
    if ((EUID == 0)); then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

pg_running() { [[ -f "$pgdata/PG_VERSION" ]] && as_pg "$(pg_bin)/pg_ctl" -D "$pgdata" status >/dev/null 2>&1; }

mlflow_running() { [[ -f $mlflow_pid ]] && kill -0 "$(cat "$mlflow_pid")" 2>/dev/null; }

healthy() {  # MLflow answers /health
    "$bin/python" -c 'import sys, urllib.request
try:
    sys.exit(urllib.request.urlopen(sys.argv[1] + "/health", timeout=3).status != 200)
except OSError:
    sys.exit(1)' "$tracking_uri"
}

port_free() {
    "$bin/python" -c 'import socket, sys
s = socket.socket()
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)' "$1"
}

print_env() {
    cat <<EOF
PostgreSQL: $host:$pg_port (databases optuna, mlflow; data in $pgdata)
MLflow:     $tracking_uri (UI and API; artifacts in $artifacts)
Export these (or: source $dir/env), then run the pipeline and tune workers as usual:
  export TUNE_STORAGE=$tune_storage
  export MLFLOW_TRACKING_URI=$tracking_uri
EOF
}

up() {
    local pgbin
    pgbin="$(pg_bin)"
    [[ -x "$bin/mlflow" ]] || die "mlflow not found: run 'make setup' first"
    mkdir -p "$dir" "$artifacts"
    if ((EUID == 0)); then
        runuser -u postgres -- test -x "$dir" \
            || die "user postgres cannot reach $dir (a parent directory is not world-searchable); set INFRA_DIR"
    fi

    if ! pg_running; then
        port_free "$pg_port" || die "port $pg_port is taken: set PG_PORT"
        if [[ ! -f "$pgdata/PG_VERSION" ]]; then
            mkdir -p "$pgdata"
            ((EUID == 0)) && chown postgres:postgres "$pgdata"
            chmod 700 "$pgdata"
            as_pg "$pgbin/initdb" -D "$pgdata" -U postgres --auth=trust -E UTF8 --no-instructions >"$dir/initdb.log" \
                || die "initdb failed, see $dir/initdb.log"
        fi
        # Loopback TCP only; the Unix socket goes into the data directory, not /var/run/postgresql.
        as_pg "$pgbin/pg_ctl" -D "$pgdata" -l "$pgdata/server.log" -w -t 60 \
            -o "-c listen_addresses=$host -p $pg_port -k $pgdata" start >/dev/null \
            || die "PostgreSQL did not start, see $pgdata/server.log"
    fi
    for db in optuna mlflow; do
        if [[ -z "$("$pgbin/psql" -h "$host" -p "$pg_port" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'")" ]]; then
            "$pgbin/createdb" -h "$host" -p "$pg_port" -U postgres "$db"
        fi
    done

    if ! mlflow_running; then
        port_free "$mlflow_port" || die "port $mlflow_port is taken: set MLFLOW_PORT"
        # Job execution would start a background job runner that outlives the server; the pipeline needs none.
        # setsid: the server and its worker processes form one process group, which `down` stops.
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false setsid "$bin/mlflow" server \
            --backend-store-uri "$backend_store" \
            --artifacts-destination "$artifacts" \
            --host "$host" --port "$mlflow_port" --workers 1 \
            </dev/null >"$dir/mlflow.log" 2>&1 &
        echo $! >"$mlflow_pid"
    fi
    local deadline=$((SECONDS + ${INFRA_TIMEOUT:-180}))  # the first start migrates MLflow's schema
    until healthy; do
        mlflow_running || die "MLflow server exited, see $dir/mlflow.log"
        ((SECONDS < deadline)) || die "MLflow server not healthy after ${INFRA_TIMEOUT:-180} s, see $dir/mlflow.log"
        sleep 1
    done
    printf 'export TUNE_STORAGE=%s\nexport MLFLOW_TRACKING_URI=%s\n' "$tune_storage" "$tracking_uri" >"$dir/env"
    print_env
}

down() {
    if mlflow_running; then
        local pid
        pid="$(cat "$mlflow_pid")"
        kill -TERM -- "-$pid" 2>/dev/null || true
        for _ in $(seq 1 30); do
            kill -0 -- "-$pid" 2>/dev/null || break
            sleep 0.5
        done
        kill -KILL -- "-$pid" 2>/dev/null || true
        echo "MLflow server stopped"
    fi
    rm -f "$mlflow_pid"
    if pg_running; then
        as_pg "$(pg_bin)/pg_ctl" -D "$pgdata" -m fast -w stop >/dev/null
        echo "PostgreSQL stopped"
    fi
}

status() {
    local rc=0
    if pg_running; then echo "PostgreSQL: running on $host:$pg_port"; else echo "PostgreSQL: stopped"; rc=3; fi
    if mlflow_running && healthy; then
        echo "MLflow:     running on $tracking_uri"
    elif mlflow_running; then
        echo "MLflow:     starting (pid $(cat "$mlflow_pid"))"; rc=3
    else
        echo "MLflow:     stopped"; rc=3
    fi
    ((rc)) || print_env | tail -n 3
    return "$rc"
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) status ;;
    *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
