# syntax=docker/dockerfile:1
# One image for the three services, the pipeline Job and the helm test pods.
#
# The project is built from the sources in the build context (pyproject.toml, setup.py,
# proto/, services/, client/), so what skaffold watches is exactly what goes in, and the gRPC
# code is generated here by the pinned grpcio-tools. Third-party packages are exactly the pins of
# k8s/image-requirements.txt (runtime) and k8s/build-requirements.txt (code generator), always as
# wheels (nothing compiled in the build), for the build's platform: linux/amd64 or linux/arm64.
#
# By default pip fetches them from PyPI: `docker build .` just works. Without a package index,
# download them on the host first and hand them over as the named build context `wheels`
# (docker buildx and podman >= 4.3 both support --build-context):
#   k8s/build-wheelhouse.sh --platform linux/amd64 build/wheelhouse
#   docker build --build-context wheels=build/wheelhouse --build-arg PIP_NO_INDEX=1 .
# (k8s/build-image.sh does that with podman.) BASE_IMAGE must provide CPython 3.11 with the venv
# module: the official slim image (pin it by digest in production) or a Debian bookworm base
# with python3 + python3-venv (k8s/build-image.sh makes one with debootstrap, libgomp1 included).
# Python 3.11.18 is the latest 3.11 release (security fixes only since 3.11.9).
ARG BASE_IMAGE=docker.io/library/python:3.11.18-slim-bookworm

# Empty unless replaced by `--build-context wheels=DIR`: a named context overrides this stage.
FROM scratch AS wheels

# The system both stages run on. The recommender's compiled modules (implicit) link the system's
# OpenMP runtime, libgomp.so.1, which its wheels do not bundle and which neither the official slim
# image nor a debootstrap minbase has: installed here unless the base already provides it (the
# base k8s/build-image.sh makes does, so its offline builds never call apt). The build stage
# imports the recommender on this same system, so a base without it fails the build, not a pod.
FROM ${BASE_IMAGE} AS system
RUN ldconfig -p | grep -qF 'libgomp.so.1 ' \
 || (apt-get update -q \
     && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends libgomp1 \
     && rm -rf /var/lib/apt/lists/*) \
 && ldconfig -p | grep -F 'libgomp.so.1 '

FROM system AS build
# PIP_NO_INDEX=1: the wheelhouse only (an offline build); by default PyPI, with the (then empty)
# wheelhouse searched as well.
ARG PIP_NO_INDEX=0
ENV PIP_NO_INDEX=${PIP_NO_INDEX} \
    PIP_FIND_LINKS=/wheels \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=wheels / /wheels/
# The code generator and the build backend, in a venv of their own: they stay out of the image.
COPY k8s/build-requirements.txt /src/k8s/
RUN python3 -m venv /opt/build \
 && /opt/build/bin/pip install --only-binary=:all: --requirement /src/k8s/build-requirements.txt
# The runtime's third-party packages, before the sources: editing code doesn't redo this layer.
COPY k8s/image-requirements.txt /src/k8s/
RUN python3 -m venv /opt/music-analytics \
 && /opt/music-analytics/bin/pip install --only-binary=:all: --requirement /src/k8s/image-requirements.txt
# The project. Building its wheel runs setup.py, which generates proto/gen with the pinned
# grpcio-tools; importing every generated module under the pinned grpcio and protobuf proves the
# generator and the runtime agree (a _pb2_grpc module refuses a grpcio older than its generator).
# Importing the recommender's compiled modules proves the system has the libraries they link.
# pip itself is removed afterwards: not needed at run time, fewer files, less attack surface.
COPY pyproject.toml setup.py README.md /src/
COPY proto/ /src/proto/
COPY services/ /src/services/
COPY client/ /src/client/
RUN /opt/build/bin/pip wheel --no-build-isolation --no-deps --wheel-dir /dist /src \
 && /opt/music-analytics/bin/pip install --no-index --no-deps /dist/music_analytics-*.whl \
 && /opt/music-analytics/bin/pip check \
 && /opt/music-analytics/bin/python -c "import importlib, pkgutil, music_analytics.api as api; \
names = [m.name for m in pkgutil.iter_modules(api.__path__)]; \
assert any(n.endswith('_pb2_grpc') for n in names), names; \
[importlib.import_module('music_analytics.api.' + n) for n in names]; print('generated modules import:', *names)" \
 && /opt/music-analytics/bin/python -c "import implicit, implicit.nearest_neighbours, implicit.als, implicit.bpr, \
music_analytics.services.recommendation.model; print('recommender imports: implicit', implicit.__version__)" \
 && /opt/music-analytics/bin/pip uninstall --yes pip \
 && /opt/music-analytics/bin/music-analytics --help >/dev/null

FROM system
LABEL org.opencontainers.image.title="music-analytics" \
      org.opencontainers.image.description="gRPC analytics services and pipeline for music listening events" \
      org.opencontainers.image.licenses="MIT"
# The venv's interpreter is a symlink to the base's python3, which is why both stages share BASE_IMAGE
# (through the system stage).
COPY --from=build /opt/music-analytics /opt/music-analytics
# No .pyc writes at run time (the root filesystem is read-only in the chart; bytecode was
# compiled by pip at build time); unbuffered so JSON log lines reach the container log at once.
ENV PATH=/opt/music-analytics/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
# A fixed numeric UID/GID so Kubernetes' runAsNonRoot can verify it without /etc/passwd.
USER 10001:10001
WORKDIR /tmp
EXPOSE 50051 50053 50055 9051 9053 9055
ENTRYPOINT ["music-analytics"]
CMD ["--help"]
