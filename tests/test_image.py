"""The Dockerfile builds a working image: real podman build and run, health checked with grpcurl.

No registry is reachable, so the base image (Debian bookworm + python3 + venv) is made with
debootstrap once and kept in podman's image store (and a rootfs tarball under CACHE_DIR), so
later runs skip it. Wheels are built on the host by k8s/build-wheels.sh, as `make image` does.
The container runs the way the chart runs it: read-only root filesystem, a writable /tmp only,
all capabilities dropped, no privilege escalation, the image's own non-root user.

Without podman/debootstrap the test is skipped locally and fails in CI (CI installs them).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = Path(os.environ.get("MUSIC_ANALYTICS_PODMAN_CACHE", "/var/tmp/music-analytics-podman"))
BASE_IMAGE = "localhost/music-analytics-base:bookworm"
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


def debian_mirror() -> str:
    """The Debian mirror apt already uses here (never hard-coded)."""
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        if not path.is_file():
            continue
        text = path.read_text()
        for match in re.finditer(r"^URIs:\s*(\S+)|^deb\s+(?:\[[^\]]*\]\s+)?(\S+)", text, re.MULTILINE):
            uri = match.group(1) or match.group(2)
            if "security" not in uri and "/debian" in uri:
                return uri
    pytest.fail("no Debian mirror found in /etc/apt sources")


def ensure_base_image() -> None:
    if podman("image", "exists", BASE_IMAGE, check=False).returncode == 0:
        return
    tarball = CACHE_DIR / "debian-python-bookworm.tar"
    if not tarball.is_file():
        rootfs = CACHE_DIR / "rootfs"
        shutil.rmtree(rootfs, ignore_errors=True)
        subprocess.run(
            [need("debootstrap"), "--variant=minbase", "--include=python3,python3-venv", "bookworm",
             str(rootfs), debian_mirror()],
            check=True, capture_output=True, timeout=600,
        )  # fmt: skip
        partial = tarball.with_suffix(".partial")
        with tarfile.open(partial, "w") as tar:
            tar.add(rootfs, arcname=".")
        partial.rename(tarball)
        shutil.rmtree(rootfs, ignore_errors=True)
    podman("import", str(tarball), BASE_IMAGE)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    need("podman")
    ensure_base_image()
    # A build context with exactly what .dockerignore lets through, made the way `make image` does.
    context = tmp_path_factory.mktemp("context")
    for name in ("Dockerfile", ".dockerignore", "k8s/image-requirements.txt"):
        (context / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, context / name)
    subprocess.run(
        [str(ROOT / "k8s" / "build-wheels.sh"), sys.executable, str(context / "build" / "wheels")],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    # --layers=false: no per-instruction cache images (the wheels change every build anyway).
    podman("build", "--layers=false", "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", "-t", IMAGE, str(context),
           timeout=600)  # fmt: skip
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
        deadline = time.monotonic() + 60
        while True:
            health = grpcurl("-plaintext", "-d", request, target, "grpc.health.v1.Health/Check")
            if health.returncode == 0:
                break
            state = podman("inspect", name, "--format", "{{.State.Status}}").stdout.strip()
            assert state == "running", podman("logs", name).stderr[-3000:]
            assert time.monotonic() < deadline, health.stderr
            time.sleep(0.5)
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
