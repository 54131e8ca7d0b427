#!/usr/bin/env bash
# Install what the container build/test needs: podman, buildah, runc (the runtime that works on
# cgroup-v1/hybrid hosts) and debootstrap (to build the local stand-in base image when no image
# registry is reachable). Idempotent: does nothing if every tool is already on PATH.
# Debian/Ubuntu only; needs root (or sudo).
set -euo pipefail

tools=(podman buildah runc debootstrap)
missing=()
for t in "${tools[@]}"; do
    command -v "$t" >/dev/null 2>&1 || missing+=("$t")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "container tools present: $(podman --version)"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: missing ${missing[*]} and no apt-get here; install them with your package manager" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "error: need root or sudo to install ${missing[*]}" >&2; exit 1; }
    SUDO="sudo"
fi

echo "installing container tools: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# uidmap/slirp4netns/fuse-overlayfs are podman recommends; pull them in explicitly so a
# --no-install-recommends apt config does not leave podman half-working.
$SUDO apt-get install -y -qq --no-install-recommends \
    podman buildah runc debootstrap uidmap slirp4netns fuse-overlayfs \
    containernetworking-plugins iptables ca-certificates >/dev/null
for t in "${tools[@]}"; do
    command -v "$t" >/dev/null 2>&1 || { echo "error: $t still missing after install" >&2; exit 1; }
done
echo "container tools installed: $(podman --version)"
