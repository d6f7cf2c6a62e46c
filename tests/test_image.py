"""The Dockerfile builds a working image: real podman build and run, health checked with grpcurl.

Built by k8s/build-image.sh, the way anyone without a package index or registry builds it: the
project from the sources of this checkout (the context, filtered by .dockerignore), the pinned
third-party wheels downloaded on the host (k8s/build-wheelhouse.sh) and handed to the build as the
`wheels` build context, the gRPC code generated in the build and every generated module imported
there. The base image (Debian bookworm + python3 + venv) is made with debootstrap once and kept in
podman's image store and a tarball under CACHE_DIR; the wheels are kept too, so later runs skip both.
The container runs the way the chart runs it: read-only root filesystem, a writable /tmp only,
all capabilities dropped, no privilege escalation, the image's own non-root user.

Without podman/debootstrap the test is skipped locally and fails in CI (CI installs them).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from music_analytics.client.demo import free_port
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = Path(os.environ.get("MUSIC_ANALYTICS_PODMAN_CACHE", "/var/tmp/music-analytics-podman"))
BASE_IMAGE = "localhost/music-analytics-base:bookworm-amd64"  # what k8s/build-image.sh makes on amd64
# Unique per run: concurrent runs on one machine must not retag or delete each other's image.
IMAGE = f"localhost/music-analytics:test-{os.getpid()}"
VENV_BIN = Path(sys.executable).parent

pytestmark = pytest.mark.timeout(900)


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        message = f"{tool} not installed (CI installs it: .ci/run apt-get install podman runc debootstrap)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def podman_env() -> dict[str, str]:
    # The sandbox defaults fail (RLIMIT_NOFILE, cgroups hybrid mode): explicit ulimits and runc.
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    conf = CACHE_DIR / "containers.conf"
    conf.write_text(
        '[containers]\ndefault_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]\n[engine]\nruntime = "runc"\n'
    )
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


def podman(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([need("podman"), *args], env=podman_env(), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    need("podman")
    if podman("image", "exists", BASE_IMAGE, check=False).returncode != 0:
        need("debootstrap")  # the script makes the base image with it, once
    build = subprocess.run(
        [str(ROOT / "k8s" / "build-image.sh"), "--python", sys.executable, IMAGE,
         # No per-instruction cache images: each test build starts clean (~700 MB otherwise kept).
         "--", "--layers=false"],
        env=podman_env(), capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert build.returncode == 0, f"image build failed:\n{build.stdout[-3000:]}\n{build.stderr[-3000:]}"
    # The build itself imported every generated module under the pinned grpcio and protobuf.
    imported = re.findall(r"^generated modules import: (.*)$", build.stdout + build.stderr, re.MULTILINE)
    assert imported and "_pb2_grpc" in imported[0], build.stdout[-3000:]
    try:
        yield IMAGE
    finally:
        # ~700 MB per build: don't pile them up (the base image stays cached).
        podman("rmi", "--force", IMAGE, check=False)


def test_image_metadata(image: str):
    (info,) = json.loads(podman("image", "inspect", image).stdout)
    config = info["Config"]
    assert config["User"] == "10001:10001"  # numeric, so runAsNonRoot can verify it
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PATH"].startswith("/opt/music-analytics/bin:")
    assert config["Entrypoint"] == ["music-analytics"]


def grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(VENV_BIN / "grpcurl"), *args], capture_output=True, text=True, timeout=30)


def test_service_container_serves_health_reflection_metrics(image: str):
    grpc_port, metrics_port = free_port(), free_port()
    name = f"music-analytics-test-{os.getpid()}"
    podman(
        "run", "-d", "--name", name,
        # As the chart runs it: read-only root, writable /tmp, no capabilities, no escalation.
        "--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
        "-p", f"127.0.0.1:{grpc_port}:50051", "-p", f"127.0.0.1:{metrics_port}:9051",
        "-e", "MUSIC_ANALYTICS_GRACE_SECONDS=5", "-e", "MUSIC_ANALYTICS_DRAIN_SECONDS=2",
        image, "serve", "mapreduce",
    )  # fmt: skip
    try:
        target = f"127.0.0.1:{grpc_port}"
        request = '{"service":"music.v1.MapReduceService"}'

        def answered() -> subprocess.CompletedProcess[str] | None:
            health = grpcurl("-plaintext", "-d", request, target, "grpc.health.v1.Health/Check")
            if health.returncode == 0:
                return health
            state = podman("inspect", name, "--format", "{{.State.Status}}").stdout.strip()
            assert state == "running", podman("logs", name).stderr[-3000:]
            return None

        health = wait_until("the container's health check to answer", answered, timeout=60, interval=0.5)
        assert json.loads(health.stdout) == {"status": "SERVING"}
        listed = grpcurl("-plaintext", target, "list")
        assert listed.returncode == 0, listed.stderr
        assert {"music.v1.MapReduceService", "grpc.health.v1.Health"} <= set(listed.stdout.split())
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
        assert "grpc_server_handled_total" in metrics
        # Logs are JSON lines on stderr.
        first = podman("logs", name).stderr.strip().splitlines()[0]
        assert json.loads(first)["service"] == "mapreduce"
        # SIGTERM (what the kubelet sends) stops it cleanly, as PID 1, within the grace period.
        started = time.monotonic()
        podman("stop", "--time", "30", name)
        assert time.monotonic() - started < 20
        (info,) = json.loads(podman("inspect", name).stdout)
        assert info["State"]["ExitCode"] == 0, podman("logs", name).stderr[-3000:]
    finally:
        podman("rm", "--force", name, check=False)


def test_pipeline_runs_in_container(image: str, tmp_path: Path):
    """The client side of the image: `run` fails cleanly (exit 2) on a missing file, read-only root."""
    result = podman(
        "run", "--rm", "--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL",
        image, "run", "--data", "/nonexistent.csv", "--wait-ready", "1",
        check=False,
    )  # fmt: skip
    assert result.returncode == 2, (result.stdout, result.stderr)
