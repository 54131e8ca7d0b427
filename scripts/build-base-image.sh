#!/usr/bin/env bash
# Build a local stand-in for python:3.11-slim when no image registry is reachable:
# debootstrap a Debian minbase with python3 (3.11 on bookworm) and `podman import` it.
#
#   scripts/build-base-image.sh [IMAGE]     (default IMAGE: localhost/py311-base:test)
#
# The rootfs tarball is cached in $CONTAINER_SCRATCH/base/ (keyed by suite + package list), so
# debootstrap (~1 min) only runs once; if the image is already in podman's store nothing runs.
# Env: DEBIAN_SUITE (default bookworm), DEBIAN_MIRROR (default: taken from apt's sources),
#      REBUILD_BASE=1 to ignore the caches.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/container-env.sh
source "$here/container-env.sh"

image="${1:-localhost/py311-base:test}"
suite="${DEBIAN_SUITE:-bookworm}"
# passwd: useradd/groupadd (python:3.11-slim has them; minbase does not).
packages="python3-minimal,python3-venv,ca-certificates,passwd"

recipe=2   # bump when the rootfs recipe below changes
key="$(printf '%s %s %s' "$recipe" "$suite" "$packages" | md5sum | cut -c1-10)"

if [ "${REBUILD_BASE:-0}" != 1 ] && podman image exists "$image" \
   && [ "$(podman image inspect --format '{{index .Labels "base-recipe"}}' "$image")" = "$key" ]; then
    echo "base image $image present"
    exit 0
fi
cache_dir="$CONTAINER_SCRATCH/base"
tarball="$cache_dir/rootfs-$suite-$key.tar"
mkdir -p "$cache_dir"

find_mirror() {
    # First Debian archive URI (not -security) that apt on this machine uses for the suite.
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk -v suite="$suite" '
            BEGIN { RS=""; FS="\n" }
            {
                uris=""; suites=""
                for (i=1; i<=NF; i++) {
                    if ($i ~ /^URIs:/)   { uris=$i;   sub(/^URIs:[ \t]*/, "", uris) }
                    if ($i ~ /^Suites:/) { suites=$i; sub(/^Suites:[ \t]*/, "", suites) }
                }
                n=split(suites, s, /[ \t]+/)
                for (j=1; j<=n; j++) if (s[j]==suite) { split(uris, u, /[ \t]+/); print u[1]; exit }
            }' "$f"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        awk -v suite="$suite" '$1=="deb" { i=2; if ($2 ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                                            if ($(i+1)==suite) { print $i; exit } }' "$f"
    done
}

if [ "${REBUILD_BASE:-0}" = 1 ] || [ ! -s "$tarball" ]; then
    command -v debootstrap >/dev/null || { echo "error: debootstrap missing; run scripts/install-container-tools.sh" >&2; exit 1; }
    mirror="${DEBIAN_MIRROR:-$(find_mirror | grep -v -- '-security' | head -n1 || true)}"
    mirror="${mirror:-http://deb.debian.org/debian}"
    rootfs="$(mktemp -d "$cache_dir/rootfs.XXXXXX")"
    trap 'rm -rf "$rootfs" "$tarball.tmp"' EXIT
    echo "debootstrap $suite from $mirror (packages: $packages)"
    start=$SECONDS
    debootstrap --variant=minbase --include="$packages" "$suite" "$rootfs" "$mirror" \
        > "$cache_dir/debootstrap.log" 2>&1 \
        || { tail -n 30 "$cache_dir/debootstrap.log" >&2; exit 1; }
    # Trim what an image does not need (apt caches, docs, man pages).
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
           "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
           "$rootfs"/var/log/*.log "$rootfs"/tmp/* "$rootfs"/dev/*
    chmod 0755 "$rootfs"   # mktemp made it 0700; it becomes the image's /
    tar --numeric-owner -C "$rootfs" -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    find "$cache_dir" -maxdepth 1 -name 'rootfs-*.tar' ! -path "$tarball" -delete   # stale recipes
    rm -rf "$rootfs"
    trap - EXIT
    echo "debootstrap took $((SECONDS - start)) s; cached rootfs at $tarball"
else
    echo "using cached rootfs $tarball"
fi

podman import --quiet --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' \
    --change "LABEL base-recipe=$key" "$tarball" "$image" >/dev/null
echo "base image $image: $(podman image inspect --format '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1e6}')"
