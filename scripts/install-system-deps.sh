#!/usr/bin/env bash
# System packages the test suite drives for real: Chromium (MLflow UI test), PostgreSQL (distributed
# tuning, MLflow server), podman and friends (the serving image). `make test` runs this first.
# Idempotent; needs root or sudo, and apt (Debian/Ubuntu).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
packages=(chromium)
missing=()
for pkg in "${packages[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || { echo "error: need root or sudo to install ${missing[*]}" >&2; exit 1; }
        SUDO="sudo"
    fi
    echo "installing system packages: ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
bash install-postgres.sh
bash install-container-tools.sh >/dev/null
