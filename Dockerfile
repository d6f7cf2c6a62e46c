# syntax=docker/dockerfile:1
# One image for the three services, the pipeline Job and the helm test pods.
#
# The build is offline: wheels are built/downloaded on the host first (make image, see
# k8s/kind.mk), so the build needs no package index and installs exactly the pinned versions in
# k8s/image-requirements.txt. BASE_IMAGE must provide CPython 3.11 with the venv module, e.g.
# the official slim image (pin it by digest in production) or a Debian bookworm base with
# python3 + python3-venv (the podman test builds one with debootstrap).
ARG BASE_IMAGE=docker.io/library/python:3.11.14-slim-bookworm

FROM ${BASE_IMAGE} AS build
ARG WHEELS_DIR=build/wheels
COPY ${WHEELS_DIR}/ /wheels/
COPY k8s/image-requirements.txt /wheels/requirements.txt
# --no-index: only the wheels copied above; the requirements pin every transitive version.
# pip itself is removed afterwards: not needed at run time, fewer files, less attack surface.
RUN python3 -m venv /opt/music-analytics \
 && /opt/music-analytics/bin/python -m pip install --no-cache-dir --no-index --find-links /wheels \
      --requirement /wheels/requirements.txt \
 && /opt/music-analytics/bin/python -m pip install --no-cache-dir --no-index --no-deps /wheels/music_analytics-*.whl \
 && /opt/music-analytics/bin/python -m pip check \
 && /opt/music-analytics/bin/python -m pip uninstall --yes pip \
 && /opt/music-analytics/bin/music-analytics --help >/dev/null

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="music-analytics" \
      org.opencontainers.image.description="gRPC analytics services and pipeline for music listening events" \
      org.opencontainers.image.licenses="MIT"
# The venv's interpreter is a symlink to the base's python3, which is why both stages share BASE_IMAGE.
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
