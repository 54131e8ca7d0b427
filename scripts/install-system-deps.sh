#!/usr/bin/env bash
# System packages the test suite drives for real: Chromium (MLflow UI test).
# Idempotent; needs root (CI and these machines run as root).
set -euo pipefail
packages=(chromium)
missing=()
for pkg in "${packages[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "installing system packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
