#!/usr/bin/env bash
# Build the project image with podman, without a package index or a registry: the project from
# the sources of this checkout, its third-party dependencies from a wheelhouse of the pinned wheels
# (k8s/build-wheelhouse.sh), on a base image made here with debootstrap (Debian bookworm +
# python3 + python3-venv + libgomp1) unless one is given. Used by tests/test_image.py and the
# real-cluster set-up; with internet access, `docker build .` / `make image` is all a user needs.
#
# Usage: k8s/build-image.sh [--platform linux/amd64|linux/arm64] [--base-image IMAGE]
#                           [--wheelhouse DIR] [--python PYTHON] TAG [-- PODMAN_BUILD_ARGS...]
#        k8s/build-image.sh [--platform ...] --print-base-image
#   TAG           the image to create, e.g. localhost/music-analytics:dev
#   --platform    default: the host's. Another platform needs --base-image of that platform
#                 and qemu binfmt support (debootstrap here makes the host's only).
#   --base-image  default: localhost/music-analytics-base:bookworm-PACKAGES-ARCH, made once with
#                 debootstrap from the Debian mirror apt uses (override: DEBIAN_MIRROR), kept in
#                 podman's store and as a tarball in the cache (~1 min the first time).
#   --print-base-image  print that default base image's name and exit (nothing is built).
#   --wheelhouse  default: $MUSIC_ANALYTICS_WHEEL_CACHE/linux-ARCH (/var/tmp/music-analytics-wheels),
#                 filled by k8s/build-wheelhouse.sh with PYTHON (default python3, needs pip).
#   after --      passed to `podman build`, e.g. --layers=false.
# Environment: PODMAN (default podman); CONTAINERS_CONF as podman reads it;
#   MUSIC_ANALYTICS_PODMAN_CACHE (default /var/tmp/music-analytics-podman) for the base tarball.
set -euo pipefail
usage() {
  echo "usage: $0 [--platform linux/amd64|linux/arm64] [--base-image IMAGE] [--wheelhouse DIR] [--python PYTHON] TAG [-- PODMAN_BUILD_ARGS...]" >&2
  echo "       $0 [--platform linux/amd64|linux/arm64] --print-base-image" >&2
  exit 2
}
root=$(cd "$(dirname "$0")/.." && pwd)
podman=${PODMAN:-podman}
cache=${MUSIC_ANALYTICS_PODMAN_CACHE:-/var/tmp/music-analytics-podman}
wheel_cache=${MUSIC_ANALYTICS_WHEEL_CACHE:-/var/tmp/music-analytics-wheels}
case $(uname -m) in
  x86_64) host_platform=linux/amd64 ;;
  aarch64|arm64) host_platform=linux/arm64 ;;
  *) host_platform=unsupported ;;
esac
platform=$host_platform base= wheelhouse= python=python3 tag= print_base=
while [ $# -gt 0 ]; do
  case $1 in
    --platform) platform=${2:?}; shift 2 ;;
    --base-image) base=${2:?}; shift 2 ;;
    --print-base-image) print_base=1; shift ;;
    --wheelhouse) wheelhouse=${2:?}; shift 2 ;;
    --python) python=${2:?}; shift 2 ;;
    --) shift; break ;;
    -h|--help) usage ;;
    -*) echo "unknown option $1" >&2; usage ;;
    *) [ -z "$tag" ] || usage; tag=$1; shift ;;
  esac
done
case $platform in
  linux/amd64) arch=amd64 ;;
  linux/arm64) arch=arm64 ;;
  *) echo "unsupported platform $platform (linux/amd64 or linux/arm64)" >&2; exit 2 ;;
esac
# What the debootstrap base holds besides minbase: the interpreter, its venv module, and the
# OpenMP runtime that the recommender's compiled modules (implicit) link. The packages are part of
# the base's name and of its tarball's, so a base cached before a package was added is never reused.
base_packages=(python3 python3-venv libgomp1)
base_name=bookworm-$(IFS=-; echo "${base_packages[*]}")-$arch
default_base=localhost/music-analytics-base:$base_name
if [ -n "$print_base" ]; then
  echo "$default_base"
  exit 0
fi
[ -n "$tag" ] || usage

debian_mirror() {
  # The mirror apt already uses here, never a hard-coded one.
  cat /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null \
    | sed -nE 's/^URIs:[[:space:]]*([^[:space:]]+).*/\1/p; s/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+).*/\2/p' \
    | grep -v security | grep /debian | head -n 1
}

ensure_base_image() {
  local image=$1 tarball="$cache/debian-$base_name.tar"
  "$podman" image exists "$image" && return 0
  if [ "$platform" != "$host_platform" ]; then
    echo "no base image for $platform: pass --base-image (debootstrap here makes $host_platform only)" >&2
    exit 2
  fi
  mkdir -p "$cache"
  # One builder at a time: concurrent test runs share the cache.
  exec 9>"$cache/base.lock"
  flock 9
  if [ ! -f "$tarball" ]; then
    local mirror=${DEBIAN_MIRROR:-$(debian_mirror)} rootfs="$cache/rootfs-$arch"
    [ -n "$mirror" ] || { echo "no Debian mirror in /etc/apt sources; set DEBIAN_MIRROR" >&2; exit 1; }
    command -v debootstrap >/dev/null || { echo "debootstrap not installed (apt-get install debootstrap)" >&2; exit 1; }
    rm -rf "$rootfs"
    debootstrap --variant=minbase --arch="$arch" --include="$(IFS=,; echo "${base_packages[*]}")" bookworm "$rootfs" "$mirror" >"$cache/debootstrap.log" 2>&1 \
      || { tail -n 20 "$cache/debootstrap.log" >&2; exit 1; }
    tar -C "$rootfs" -cf "$tarball.partial" .
    mv "$tarball.partial" "$tarball"
    rm -rf "$rootfs"
  fi
  "$podman" image exists "$image" || "$podman" import "$tarball" "$image" >/dev/null
  flock -u 9
}

if [ -z "$base" ]; then
  base=$default_base
  ensure_base_image "$base"
fi
if [ -z "$wheelhouse" ]; then
  wheelhouse=$wheel_cache/linux-$arch
  "$root/k8s/build-wheelhouse.sh" --python "$python" --platform "$platform" "$wheelhouse"
fi
[ -d "$wheelhouse" ] || { echo "wheelhouse $wheelhouse is not a directory" >&2; exit 2; }

# The build context is the checkout itself (filtered by .dockerignore), as for skaffold and docker.
"$podman" build --platform "$platform" --build-arg "BASE_IMAGE=$base" \
  --build-context "wheels=$wheelhouse" --build-arg PIP_NO_INDEX=1 \
  --tag "$tag" "$@" "$root"
