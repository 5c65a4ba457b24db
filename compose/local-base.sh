#!/usr/bin/env bash
# A local base image for compose/Dockerfile where no registry is reachable (no python:3.11-slim
# to pull): a minimal Debian 12 with python3 and its venv module, made with debootstrap and
# `docker import`. Run as root on a Debian host with debootstrap installed
# (apt-get install debootstrap):
#
#   compose/local-base.sh [TAG] [MIRROR]      # default agent-supervisor-base:bookworm
#   docker build --network host -f compose/Dockerfile \
#       --build-arg BASE_IMAGE=agent-supervisor-base:bookworm -t agent-supervisor:0.1.0 .
#
# The tests build the supervisor's image on exactly this base (tests/dockerutil.py runs this
# script), so the recipe documented here is the one CI proves.
set -euo pipefail

tag="${1:-agent-supervisor-base:bookworm}"
mirror="${2:-${AGENT_SUPERVISOR_DEBIAN_MIRROR:-http://deb.debian.org/debian}}"
command -v debootstrap >/dev/null || { echo "local-base: debootstrap is not installed" >&2; exit 1; }
work="$(mktemp -d /var/tmp/agent-supervisor-rootfs-XXXXXX)"
trap 'rm -rf "$work"' EXIT
root="$work/root"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$root" "$mirror" >"$work/debootstrap.log" 2>&1 \
    || { tail -40 "$work/debootstrap.log" >&2; exit 1; }
# What an image does not need: downloaded packages, documentation, apt lists.
for sub in var/cache/apt/archives var/lib/apt/lists usr/share/doc usr/share/man \
           usr/share/info usr/share/locale; do
    if [ -d "$root/$sub" ]; then rm -rf "${root:?}/$sub" && mkdir "$root/$sub"; fi
done
tar --numeric-owner -C "$root" -cf "$work/rootfs.tar" .
docker import "$work/rootfs.tar" "$tag" >/dev/null
echo "$tag"
