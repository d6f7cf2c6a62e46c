"""The Dockerfile builds a working image: real podman build and run, health checked with grpcurl.

Built by k8s/build-image.sh, the way anyone without a package index or registry builds it: the
project from the sources of this checkout (the context, filtered by .dockerignore), the pinned
third-party wheels downloaded on the host (k8s/build-wheelhouse.sh) and handed to the build as the
`wheels` build context, the gRPC code generated in the build and every generated module imported
there. The base image (Debian bookworm + python3 + venv) is made with debootstrap once and kept in
podman's image store and a tarball under CACHE_DIR; the wheels are kept too, so later runs skip both.
The build runs without a network (--network=none): with that base and the wheelhouse it must
need nothing else, the recommender's OpenMP runtime included. Another build, of the system stage
alone on a base without that runtime, shows the Dockerfile installs it with apt (what a build on
the official slim image does). The container runs the way the chart runs it: read-only root
filesystem, a writable /tmp only, all capabilities dropped, no privilege escalation, the image's
own non-root user. In it, the whole pipeline's per-user lines (recommended artists included) equal
the oracle's, and `evaluate` runs every algorithm of the model.

Without podman/debootstrap the test is skipped locally and fails in CI (CI installs them).
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from music_analytics.client.demo import free_port
from music_analytics.client.generate import generate
from music_analytics.services.recommendation.model import ALGORITHMS
from tests.oracle import first_difference, oracle_stats
from tests.support.requirements_pins import pins
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
BUILD_IMAGE = ROOT / "k8s" / "build-image.sh"
CACHE_DIR = Path(os.environ.get("MUSIC_ANALYTICS_PODMAN_CACHE", "/var/tmp/music-analytics-podman"))
# Unique per run: concurrent runs on one machine must not retag or delete each other's image.
IMAGE = f"localhost/music-analytics:test-{os.getpid()}"
VENV_BIN = Path(sys.executable).parent
PLAYCOUNTS_SAMPLE = ROOT / "data" / "samples" / "playcounts.tsv"
# As the chart runs the container: read-only root, writable /tmp, no capabilities, no escalation.
RESTRICTED = ("--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL", "--security-opt", "no-new-privileges")

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


def base_image() -> str:
    """The base k8s/build-image.sh makes (and caches) for this host: its name names its packages."""
    result = subprocess.run([str(BUILD_IMAGE), "--print-base-image"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    need("podman")
    if podman("image", "exists", base_image(), check=False).returncode != 0:
        need("debootstrap")  # the script makes the base image with it, once
    build = subprocess.run(
        [str(BUILD_IMAGE), "--python", sys.executable, IMAGE,
         # No per-instruction cache images: each test build starts clean (~870 MB otherwise kept).
         # No network: the base and the wheelhouse must be all the build needs.
         "--", "--layers=false", "--network=none"],
        env=podman_env(), capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert build.returncode == 0, f"image build failed:\n{build.stdout[-3000:]}\n{build.stderr[-3000:]}"
    try:
        output = build.stdout + build.stderr
        # The build itself imported every generated module under the pinned grpcio and protobuf.
        imported = re.findall(r"^generated modules import: (.*)$", output, re.MULTILINE)
        assert imported and "_pb2_grpc" in imported[0], build.stdout[-3000:]
        # ...and the recommender's compiled modules, the locked release of them.
        recommender = re.findall(r"^recommender imports: implicit (\S+)$", output, re.MULTILINE)
        assert recommender == [pins(ROOT / "k8s" / "image-requirements.txt")["implicit"]], build.stdout[-3000:]
        yield IMAGE
    finally:
        # ~870 MB per build: don't pile them up (the base image stays cached).
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
        "run", "-d", "--name", name, *RESTRICTED,
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


def test_pipeline_refuses_a_missing_file_in_container(image: str):
    """The client side of the image: `run` fails cleanly (exit 2) on a missing file, read-only root."""
    result = podman(
        "run", "--rm", *RESTRICTED, image, "run", "--data", "/nonexistent.csv", "--wait-ready", "1", check=False
    )
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "/nonexistent.csv" in result.stderr


def mounts(tmp_path: Path) -> tuple[Path, Path]:
    """(input folder, output folder) for bind mounts; the output writable by the container's user
    (10001), who does not own it."""
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    out.mkdir()
    out.chmod(0o777)
    return data, out


def readable(folder: Path) -> None:
    """Let the container's user read what was written into ``folder``, whatever the umask."""
    folder.chmod(0o755)
    for path in folder.iterdir():
        path.chmod(0o644)


def test_pipeline_in_container_gives_the_oracles_lines(image: str, tmp_path: Path):
    """The three services and the client, all from the image (`demo`: services as processes in the
    container): every per-user line, recommended artists included, equals the oracle's. The
    Recommendation service trains the model in the container, on the image's compiled libraries."""
    data, out = mounts(tmp_path)
    generate(data / "events.csv", 20_000, 11)
    readable(data)
    result = podman(
        "run", "--rm", *RESTRICTED, "-v", f"{data}:/data:ro", "-v", f"{out}:/out",
        image, "demo", "--data", "/data/events.csv", "--out", "/out/results.json",
        "--user-stats", "/out/users.jsonl", "--quiet",
        check=False, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    lines = [json.loads(line) for line in (out / "users.jsonl").read_text(encoding="utf-8").splitlines()]
    expected = oracle_stats(data / "events.csv")["user_lines"]
    # The pipeline's default: ten artists for every user.
    assert lines and all(len(line["recommended_artists"]) == 10 for line in lines)
    difference = first_difference(lines, expected, "user lines")
    assert difference is None, difference
    results = json.loads((out / "results.json").read_text())
    assert results["personalized_recommendations"]["users"] == len(expected)


def split_playcounts(sample: Path, folder: Path) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """Write ``sample``'s pairs as train.tsv and test.tsv in ``folder``: each user's last pair (of
    users with two or more) held out. Returns (train, test): the artists of each user."""
    with sample.open(newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    header, pairs = rows[0], rows[1:]
    by_user: dict[str, list[list[str]]] = defaultdict(list)
    for row in pairs:
        by_user[row[0]].append(row)
    train: dict[str, set[str]] = defaultdict(set)
    test: dict[str, set[str]] = defaultdict(set)
    with (folder / "train.tsv").open("w", newline="") as tr, (folder / "test.tsv").open("w", newline="") as te:
        train_out, test_out = csv.writer(tr, delimiter="\t"), csv.writer(te, delimiter="\t")
        train_out.writerow(header)
        test_out.writerow(header)
        for user, user_rows in by_user.items():
            held = user_rows[-1:] if len(user_rows) > 1 else []
            for row in user_rows[: len(user_rows) - len(held)]:
                train_out.writerow(row)
                train[user].add(row[1])
            for row in held:
                test_out.writerow(row)
                test[user].add(row[1])
    return dict(train), dict(test)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_evaluate_runs_every_algorithm_in_container(image: str, tmp_path: Path, algorithm: str):
    """Each model (item kNN, ALS, BPR: each its own compiled module) trains and recommends in the
    image: every held-out user gets a full list of artists they did not play, and the hit rate it
    reports is the one those lists give against the held-out file."""
    data, out = mounts(tmp_path)
    train, test = split_playcounts(PLAYCOUNTS_SAMPLE, data)
    readable(data)
    k = 5
    result = podman(
        "run", "--rm", *RESTRICTED, "-v", f"{data}:/data:ro", "-v", f"{out}:/out",
        image, "evaluate", "--train", "/data/train.tsv", "--test", "/data/test.tsv", "--algorithm", algorithm,
        "--k", str(k), "--json", "--out", "/out/lists.jsonl",
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads(result.stdout)
    assert summary["algorithm"] == algorithm
    lists = {}
    for line in (out / "lists.jsonl").read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        lists[entry["user_id"]] = entry["artists"]
    catalog = set().union(*train.values())
    assert set(lists) == set(test), "one list per held-out user"
    for user, artists in lists.items():
        assert len(set(artists)) == len(artists) == min(k, len(catalog - train[user])), (user, artists)
        assert set(artists) <= catalog - train[user], (user, artists)
    hits = sum(1 for user, artists in lists.items() if set(artists) & test[user])
    assert summary["model"]["hit_rate"] == pytest.approx(hits / len(lists))


def test_evaluate_help_in_container(image: str):
    result = podman("run", "--rm", *RESTRICTED, image, "evaluate", "--help", check=False)
    assert result.returncode == 0, result.stderr
    assert "usage: music-analytics evaluate" in result.stdout and "--algorithm" in result.stdout


# The image's build made (or found) the base this test strips.
@pytest.mark.usefixtures("image")
def test_a_base_without_openmp_gets_it_from_apt(tmp_path: Path):
    """The Dockerfile's system stage on a base that lacks libgomp.so.1 (the official slim image
    does): it installs libgomp1 from the base's Debian mirror, and the library loads. The base
    here is the script's own with the package purged; only that stage is built."""
    bare, system = f"localhost/music-analytics-test-no-openmp:{os.getpid()}", f"{IMAGE}-system"
    (tmp_path / "Containerfile").write_text(
        f"FROM {base_image()}\nRUN dpkg --purge libgomp1 && ! ldconfig -p | grep -F 'libgomp.so.1 '\n"
    )
    try:
        podman("build", "--layers=false", "--tag", bare, str(tmp_path), timeout=300)
        built = podman(
            "build", "--layers=false", "--target", "system", "--build-arg", f"BASE_IMAGE={bare}",
            "--tag", system, str(ROOT),
            timeout=600,
        )  # fmt: skip
        assert re.search(r"^Setting up libgomp1\b", built.stdout + built.stderr, re.MULTILINE), built.stdout[-3000:]
        loaded = podman(
            "run", "--rm", *RESTRICTED, system,
            "python3", "-c", "import ctypes; ctypes.CDLL('libgomp.so.1').omp_get_max_threads; print('loaded')",
        )  # fmt: skip
        assert loaded.stdout.strip() == "loaded"
    finally:
        podman("rmi", "--force", system, bare, check=False)
