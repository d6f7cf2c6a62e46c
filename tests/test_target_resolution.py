"""The client against names that change, as a headless Service's do, while the Job starts with the pods.

A headless Service's DNS name lists a pod only once it is Ready, so when the Job starts with the
Deployments, the name may resolve to nothing, then to one pod, then to two; a rolling restart
replaces every address during a run. Here the real client runs in a mount namespace of its own
whose /etc/hosts the test rewrites while the client runs, so glibc's real resolver sees the
name appear and change; the services are real processes on distinct loopback addresses
(127.0.0.2, .3, ...) that share one port, as pods behind one Service do. No DNS query leaves the
machine: the namespace's resolv.conf names a loopback address where nothing listens.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from music_analytics.client.demo import ServiceProcess, start_service
from music_analytics.client.generate import generate
from music_analytics.services.common.contract import HEALTH_SERVICE
from tests.conftest import BIN, ROOT
from tests.oracle import oracle
from tests.support.metrics import scrape
from tests.support.oracle_match import assert_matches_oracle
from tests.support.waiting import wait_until

DOMAIN = "music.svc.cluster.local"
NAMES = {name: f"{name}-headless.{DOMAIN}" for name in ("mapreduce", "userbehavior", "recommendation")}


def _unshare() -> list[str]:
    if shutil.which("unshare") is None:
        pytest.skip("needs util-linux unshare for a private /etc/hosts")
    # Root makes a mount namespace directly; anyone else maps themselves to root in a user
    # namespace first (both leave the machine's own /etc/hosts untouched: propagation is private).
    command = ["unshare", "--mount"] if os.geteuid() == 0 else ["unshare", "--map-root-user", "--mount"]
    probe = subprocess.run([*command, "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a mount namespace here: {probe.stderr.strip()}")
    return command


class Names:
    """An /etc/hosts for the client alone: ``publish`` is what the endpoints controller does."""

    def __init__(self, directory: Path) -> None:
        self.hosts = directory / "hosts"
        self.resolv = directory / "resolv.conf"
        self.resolv.write_text("nameserver 127.255.255.254\noptions timeout:1 attempts:1\n")
        self.publish({})

    def publish(self, records: dict[str, list[str]]) -> None:
        lines = ["127.0.0.1 localhost"] + [f"{ip} {name}" for name, ips in records.items() for ip in ips]
        # Rewritten in place: the bind mount holds this inode, a rename would not show through.
        with self.hosts.open("w") as f:
            f.write("\n".join(lines) + "\n")

    def client(self, data: Path, out: Path, ports: dict[str, int], *extra: str) -> subprocess.Popen:
        script = 'mount --bind "$1" /etc/hosts && mount --bind "$2" /etc/resolv.conf && shift 2 && exec "$@"'
        targets = [arg for name, port in ports.items() for arg in (f"--{name}", f"dns:///{NAMES[name]}:{port}")]
        return subprocess.Popen(
            [*_unshare(), "sh", "-c", script, "sh", str(self.hosts), str(self.resolv), str(BIN / "music-analytics"),
             "run", "--data", str(data), "--out", str(out), "--quiet", *targets, *extra],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip


@pytest.fixture
def names(tmp_path: Path) -> Names:
    _unshare()
    return Names(tmp_path)


@pytest.fixture
def started(tmp_path: Path) -> Iterator[list[ServiceProcess]]:
    processes: list[ServiceProcess] = []
    yield processes
    for p in processes:
        p.process.send_signal(signal.SIGTERM)
    for p in processes:
        p.stop()


def batches_received(process: ServiceProcess) -> float:
    """The replica's own count of batches, from its /metrics on its own loopback address."""
    url = f"http://{process.host}:{process.metrics_port}/metrics"
    for line in urllib.request.urlopen(url, timeout=5).read().decode().splitlines():
        if line.startswith("music_analytics_batches_received_total{"):
            return float(line.split()[-1])
    return 0.0


def health_checks(process: ServiceProcess) -> float:
    """Health checks the replica has been asked, by its own count."""
    return sum(
        value
        for (name, labels), value in scrape(process).items()
        if name == "grpc_server_started_total"
        and dict(labels).get("grpc_service") == HEALTH_SERVICE
        and dict(labels).get("grpc_method") == "Check"
    )


class Lines:
    """A pipe's lines as they come, read by a thread, so a test can wait for one."""

    def __init__(self, pipe: IO[str]) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self._thread.start()

    def _read(self, pipe: IO[str]) -> None:
        for line in pipe:
            self.lines.append(line)

    def text(self) -> str:
        self._thread.join(30)
        return "".join(self.lines)


def serve(started: list[ServiceProcess], tmp_path: Path, name: str, host: str, port: int = 0) -> ServiceProcess:
    process = start_service(name, tmp_path / f"{name}-{host}.log", grpc_port=port, host=host)
    started.append(process)
    process.wait_serving()
    return process


def test_names_that_resolve_late_are_waited_for(names: Names, started, tmp_path: Path):
    # The Job starts before any pod is Ready: every name resolves to nothing for a while.
    services = {name: serve(started, tmp_path, name, f"127.0.0.{i}") for i, name in enumerate(NAMES, start=2)}
    data = ROOT / "data" / "stream_data.csv"
    client = names.client(
        data, tmp_path / "r.json", {n: p.grpc_port for n, p in services.items()}, "--wait-ready", "60"
    )
    stderr_lines = Lines(client.stderr)
    # The names are published once the client has said, in its log, what it is waiting for.
    wait_until("the wait's report", lambda: any('"waiting for replicas"' in line for line in stderr_lines.lines), 30)
    assert client.poll() is None, stderr_lines.text()
    names.publish({NAMES[n]: [p.host] for n, p in services.items()})
    client.wait(timeout=120)
    stderr = stderr_lines.text()
    assert client.returncode == 0, stderr
    # While waiting, the log said what for.
    waits = [json.loads(line) for line in stderr.splitlines() if '"waiting for replicas"' in line]
    assert waits, stderr
    # The services are waited for at once: each says what it waits for, in any order.
    for name in NAMES:
        detail = next(w["detail"] for w in waits if f"dns:///{NAMES[name]}" in w["detail"])
        assert "resolves to no address" in detail
        assert "a headless Service lists a pod only once it is Ready" in detail
    assert_matches_oracle(json.loads((tmp_path / "r.json").read_text()), oracle(data))


def test_names_that_never_resolve_fail_after_the_wait_naming_the_target(names: Names, tmp_path: Path):
    start = time.monotonic()
    client = names.client(ROOT / "data" / "stream_data.csv", tmp_path / "r.json",
                          {"mapreduce": 50051, "userbehavior": 50053, "recommendation": 50055},
                          "--wait-ready", "2")  # fmt: skip
    _, stderr = client.communicate(timeout=60)
    assert client.returncode == 1, stderr
    assert time.monotonic() - start < 30
    assert f"mapreduce: not serving after 2s: 'dns:///{NAMES['mapreduce']}:50051' resolves to no address" in stderr
    assert "Traceback" not in stderr


def test_expected_replicas_that_become_ready_later_are_used(names: Names, started, tmp_path: Path):
    first = serve(started, tmp_path, "userbehavior", "127.0.0.2")
    second = serve(started, tmp_path, "userbehavior", "127.0.0.3", port=first.grpc_port)
    others = {
        name: serve(started, tmp_path, name, f"127.0.0.{i}") for i, name in ((4, "mapreduce"), (5, "recommendation"))
    }
    records = {NAMES[n]: [p.host] for n, p in others.items()}
    names.publish(records | {NAMES["userbehavior"]: [first.host]})  # one pod Ready so far
    data = ROOT / "data" / "stream_data.csv"
    ports = {"userbehavior": first.grpc_port} | {n: p.grpc_port for n, p in others.items()}
    checked_before = health_checks(first)
    client = names.client(data, tmp_path / "r.json", ports, "--wait-ready", "60", "--expect-replicas", "userbehavior=2")
    # Once the client has checked the first replica, it has resolved the name to it alone.
    wait_until("the client's first health check", lambda: health_checks(first) > checked_before, 30)
    assert client.poll() is None, client.communicate()
    names.publish(records | {NAMES["userbehavior"]: [first.host, second.host]})  # the second is Ready
    _, stderr = client.communicate(timeout=120)
    assert client.returncode == 0, stderr
    results = json.loads((tmp_path / "r.json").read_text())
    assert results["replicas"]["userbehavior"] == 2
    for replica in (first, second):
        assert batches_received(replica) > 0
    assert_matches_oracle(results, oracle(data))


def test_rolling_restart_mid_run_moves_the_work_to_the_new_pod(names: Names, started, tmp_path: Path):
    # One replica, replaced during the run: the new pod is Ready and listed, then the old one dies.
    # The client knew only the old address; it must find the new one by resolving the name again.
    data = tmp_path / "events-300k.csv"
    generate(data, 300_000, seed=5)
    old = serve(started, tmp_path, "mapreduce", "127.0.0.2")
    # The new pod starts now but is not listed until the old one is going (maxSurge: 1).
    new = serve(started, tmp_path, "mapreduce", "127.0.0.3", port=old.grpc_port)
    others = {
        name: serve(started, tmp_path, name, f"127.0.0.{i}") for i, name in ((4, "userbehavior"), (5, "recommendation"))
    }
    records = {NAMES[n]: [p.host] for n, p in others.items()}
    names.publish(records | {NAMES["mapreduce"]: [old.host]})
    ports = {"mapreduce": old.grpc_port} | {n: p.grpc_port for n, p in others.items()}
    client = names.client(data, tmp_path / "r.json", ports, "--wait-ready", "30")
    deadline = time.monotonic() + 60
    while batches_received(old) < 1:
        assert client.poll() is None, "the run ended before the restart"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    names.publish(records | {NAMES["mapreduce"]: [new.host]})
    old.process.send_signal(signal.SIGKILL)
    _, stderr = client.communicate(timeout=180)
    assert client.returncode == 0, stderr
    results = json.loads((tmp_path / "r.json").read_text())
    assert results["replica_recoveries"]["mapreduce"] >= 1
    assert batches_received(new) > 0
    assert_matches_oracle(results, oracle(data))
