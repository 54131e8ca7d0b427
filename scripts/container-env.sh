# shellcheck shell=bash
# Per-project podman configuration, with nothing changed globally.
#
#   source scripts/container-env.sh          # exports CONTAINERS_CONF, CONTAINERS_STORAGE_CONF, ...
#   bash scripts/container-env.sh --print    # prints KEY=VALUE lines (for tools that cannot source)
#
# Writes containers.conf and storage.conf into $CONTAINER_SCRATCH (default: <repo>/.cache/containers,
# which ignores itself in git) and points podman/buildah at them through environment variables.
# The settings are the ones that work on cgroup-v1/hybrid hosts without a Docker engine:
# runc (crun refuses hybrid cgroups), cgroupfs, file events, explicit ulimits (the container
# cannot raise RLIMIT_NOFILE otherwise) and the vfs storage driver (no overlay/fuse needed).

_ce_repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONTAINER_SCRATCH="${CONTAINER_SCRATCH:-$_ce_repo/.cache/containers}"
mkdir -p "$CONTAINER_SCRATCH"
CONTAINER_SCRATCH="$(cd "$CONTAINER_SCRATCH" && pwd)"
# Keep the cache out of git without touching the project's .gitignore.
[ -f "$_ce_repo/.cache/.gitignore" ] || { mkdir -p "$_ce_repo/.cache" && printf '*\n' > "$_ce_repo/.cache/.gitignore"; }

# Runtime state (sockets, locks, pid files) wants a short path on a local fs: keep it under /tmp,
# one directory per scratch dir.
_ce_key="$(printf '%s' "$CONTAINER_SCRATCH" | md5sum | cut -c1-10)"
_ce_run="${TMPDIR:-/tmp}/podman-run-$(id -u)-$_ce_key"
mkdir -p "$CONTAINER_SCRATCH/storage" "$CONTAINER_SCRATCH/networks" "$_ce_run/storage" "$_ce_run/libpod"

cat > "$CONTAINER_SCRATCH/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "$_ce_run/libpod"

[network]
network_config_dir = "$CONTAINER_SCRATCH/networks"
CONF

cat > "$CONTAINER_SCRATCH/storage.conf" <<CONF
[storage]
driver = "vfs"
graphroot = "$CONTAINER_SCRATCH/storage"
runroot = "$_ce_run/storage"
CONF

export CONTAINER_SCRATCH
export CONTAINERS_CONF="$CONTAINER_SCRATCH/containers.conf"
export CONTAINERS_STORAGE_CONF="$CONTAINER_SCRATCH/storage.conf"
# buildah (and `podman build`) honour these too.
export BUILDAH_FORMAT=docker   # keep HEALTHCHECK (the OCI image format drops it)

if [ "${1:-}" = "--print" ]; then
    for _ce_v in CONTAINER_SCRATCH CONTAINERS_CONF CONTAINERS_STORAGE_CONF BUILDAH_FORMAT; do
        printf '%s=%s\n' "$_ce_v" "${!_ce_v}"
    done
fi
unset _ce_repo _ce_key _ce_run _ce_v
