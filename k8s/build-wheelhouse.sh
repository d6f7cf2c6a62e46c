#!/usr/bin/env bash
# Download the image's third-party wheels on the host, for an image build without a package
# index (`--build-context wheels=OUTDIR --build-arg PIP_NO_INDEX=1`, see the Dockerfile): exactly
# the pins of k8s/image-requirements.txt (runtime) and k8s/build-requirements.txt (the code
# generator), as CPython 3.11 wheels for glibc Linux (manylinux up to bookworm's glibc 2.36) on
# one platform. Never source distributions: the image compiles nothing. The project itself is
# not in it: the image builds it from the sources.
#
# Usage: k8s/build-wheelhouse.sh [--python PYTHON] [--platform linux/amd64|linux/arm64] OUTDIR
#   PYTHON    a Python with pip (default: python3)
#   OUTDIR    created if missing; wheels already there are reused, so a kept OUTDIR is a cache
#             and a second run for the same pins needs no network.
set -euo pipefail
usage() { echo "usage: $0 [--python PYTHON] [--platform linux/amd64|linux/arm64] OUTDIR" >&2; exit 2; }
python=python3
platform=linux/amd64
while [ $# -gt 0 ]; do
  case $1 in
    --python) python=${2:?}; shift 2 ;;
    --platform) platform=${2:?}; shift 2 ;;
    -h|--help) usage ;;
    -*) echo "unknown option $1" >&2; usage ;;
    *) break ;;
  esac
done
[ $# -eq 1 ] || usage
out=$1
case $platform in
  linux/amd64) arch=x86_64 ;;
  linux/arm64|linux/arm64/v8) arch=aarch64 ;;
  *) echo "unsupported platform $platform (linux/amd64 or linux/arm64)" >&2; exit 2 ;;
esac
root=$(cd "$(dirname "$0")/.." && pwd)

# Every manylinux tag a CPython 3.11 on Debian bookworm (glibc 2.36) accepts, newest first.
tags=()
for minor in $(seq 36 -1 17); do tags+=(--platform "manylinux_2_${minor}_${arch}"); done
tags+=(--platform "manylinux2014_${arch}")
if [ "$arch" = x86_64 ]; then
  for minor in $(seq 16 -1 5); do tags+=(--platform "manylinux_2_${minor}_${arch}"); done
  tags+=(--platform manylinux2010_x86_64 --platform manylinux1_x86_64)
fi
args=(download --quiet --disable-pip-version-check --only-binary=:all: --no-deps --dest "$out"
      --python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none "${tags[@]}"
      --requirement "$root/k8s/image-requirements.txt" --requirement "$root/k8s/build-requirements.txt")
mkdir -p "$out"
# What is already there first, without the network; only what is missing is downloaded.
if ! "$python" -m pip "${args[@]}" --no-index --find-links "$out" >/dev/null 2>&1; then
  "$python" -m pip "${args[@]}"
fi
