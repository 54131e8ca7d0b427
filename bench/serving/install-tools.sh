#!/usr/bin/env bash
# Installs the load generator for bench/serving/run.py: Debian's wrk (HTTP benchmarking tool
# with Lua scripting, used for the POST bodies). Needs root (or sudo) and apt. Idempotent.
set -euo pipefail
if command -v wrk >/dev/null 2>&1; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends wrk
command -v wrk >/dev/null
