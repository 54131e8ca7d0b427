#!/usr/bin/env bash
# Build the serving image from the Dockerfile and test it in podman (tests/container).
# Installs podman/buildah/runc/debootstrap first if missing (needs root or sudo, apt).
# Extra arguments go to pytest, e.g. scripts/container-test.sh -x
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/install-container-tools.sh
PYTEST="${PYTEST:-.venv/bin/pytest}"
exec "$PYTEST" tests/container -m container -v -s -p no:cacheprovider "$@"
