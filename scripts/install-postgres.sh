#!/usr/bin/env bash
# PostgreSQL server binaries (Debian's postgresql package) for scripts/infra.sh and the distributed-tuning
# tests, which start their own server in a data directory of theirs: the system cluster is not used.
# Idempotent; needs root (CI and these machines run as root).
set -euo pipefail
if compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
    exit 0
fi
echo "installing system packages: postgresql"
apt-get update -qq
# policy-rc.d 101: don't let the package start its own cluster (there is no init system here anyway).
policy=/usr/sbin/policy-rc.d
own_policy=0
if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && own_policy=1
fi
trap 'if ((own_policy)); then rm -f "$policy"; fi' EXIT
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
