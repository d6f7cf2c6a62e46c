"""Scale-out: N replicas give identical results; a replica killed mid-run loses nothing."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from music_analytics.client.demo import LocalServices
from music_analytics.client.generate import generate
from tests.conftest import BIN, ROOT, run_pipeline
from tests.oracle import oracle
from tests.support.oracle_match import assert_matches_oracle


@pytest.fixture(scope="module")
def events(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "events-300k.csv"
    generate(path, 300_000, seed=3)
    return path


@pytest.fixture(scope="module")
def expected(events) -> dict:
    return oracle(events)


@pytest.mark.parametrize("replicas", [1, 2, 3])
def test_results_identical_with_n_replicas(events, expected, tmp_path, replicas):
    with LocalServices(replicas=replicas, log_dir=tmp_path) as services:
        results = run_pipeline(services, events, tmp_path / "results.json")
        # Every replica really took part.
        for name in ("mapreduce", "userbehavior"):
            assert len(services.processes[name]) == replicas
            for process in services.processes[name]:
                assert batches_received(process.metrics_port, name) > 0
    assert results["replicas"]["mapreduce"] == replicas
    assert_matches_oracle(results, expected)


def batches_received(metrics_port: int, service: str) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    for line in body.splitlines():
        if line.startswith(f'music_analytics_batches_received_total{{service="{service}"}}'):
            return float(line.split()[-1])
    return 0.0


@pytest.mark.parametrize("victim", ["mapreduce", "userbehavior"])
def test_replica_killed_mid_run_loses_nothing(events, expected, tmp_path, victim):
    with LocalServices(replicas=2, log_dir=tmp_path) as services:
        out = tmp_path / "results.json"
        client = subprocess.Popen(
            [str(BIN / "music-analytics"), "run", "--data", str(events), "--out", str(out), "--quiet",
             "--mapreduce", services.target("mapreduce"), "--userbehavior", services.target("userbehavior"),
             "--recommendation", services.target("recommendation")],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        doomed = services.processes[victim][0]
        deadline = time.monotonic() + 60
        while batches_received(doomed.metrics_port, victim) < 1:
            assert client.poll() is None, "the run ended before the replica could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.005)
        doomed.process.send_signal(signal.SIGKILL)
        _, stderr = client.communicate(timeout=120)
        assert client.returncode == 0, stderr
        results = json.loads(out.read_text())
    assert results["replica_recoveries"][victim] >= 1
    assert "replica lost" in stderr
    assert_matches_oracle(results, expected)
