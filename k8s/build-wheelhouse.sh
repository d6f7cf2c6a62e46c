#!/usr/bin/env bash
# Build the image's wheels on the host (the container build has no package index):
# the project wheel (its build generates the protobuf code) plus exactly the pinned runtime
# wheels of k8s/image-requirements.txt for CPython 3.11 on manylinux x86_64.
# Usage: k8s/build-wheels.sh PYTHON OUTDIR   (used by `make wheels` and tests/test_image.py)
set -euo pipefail
python=${1:?usage: build-wheels.sh PYTHON OUTDIR}
out=${2:?usage: build-wheels.sh PYTHON OUTDIR}
root=$(cd "$(dirname "$0")/.." && pwd)
rm -rf "$out" && mkdir -p "$out"
"$python" -m pip wheel --quiet --no-deps --wheel-dir "$out" "$root"
"$python" -m pip download --quiet --only-binary=:all: --no-deps --dest "$out" \
  --python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_5_x86_64 --platform any \
  --requirement "$root/k8s/image-requirements.txt"
