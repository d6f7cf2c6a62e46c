"""The rendered containers really work: run them as local processes, exactly as rendered.

Each Deployment's container (command, args, env) is started once per replica, with only the
cluster-specific parts mapped to this machine: ports to free loopback ports, volume mounts to
temporary directories holding the rendered ConfigMaps' files, Service DNS names to the local
addresses of that Service's pods. Readiness is checked with the rendered gRPC probe; the helm
test pods' command runs against each service; then the Job's command must complete the
pipeline, shard across the replicas and write its summary ConfigMap through a stand-in API
server that enforces the chart's Role, with each user's recommended artists as the chart's values
ask (how many, which recommender, or none). Finally every service must stop cleanly on SIGTERM
within the pod's terminationGracePeriodSeconds.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from music_analytics.client.demo import free_port
from music_analytics.services.recommendation.model import ALGORITHMS, DEFAULT_ALGORITHM
from tests.conftest import ROOT
from tests.oracle import oracle_stats
from tests.support.chart import by_kind, job_args, one, pipeline_job, render_docs
from tests.support.rendered_pods import (
    container_env,
    map_paths,
    mount_volumes,
    quantity_bytes,
    run_job_container,
    serving_line,
    wait_probe_serving,
)

# Not UTC, and with daylight saving time: a zone the Job ignored would show in every statistic.
JOB_TIMEZONE = "Europe/Berlin"
# Not the client's default (10): a Job that dropped the chart's value would recommend 10 artists.
JOB_ARTISTS = 3
CLUSTER_VALUES = {
    "default": {"replicas": 2},
    "job": {"timezone": JOB_TIMEZONE, "personalized": {"artistsPerUser": JOB_ARTISTS}},
}
RECOMMENDATION_KEYS = ("recommended_artists", "recommended_by")


@dataclass
class Replica:
    grpc_port: int
    metrics_port: int
    process: subprocess.Popen[bytes]
    log: Path


@dataclass
class Workload:
    component: str
    deployment: dict[str, Any]
    replicas: list[Replica] = field(default_factory=list)

    @property
    def container(self) -> dict[str, Any]:
        (c,) = self.deployment["spec"]["template"]["spec"]["containers"]
        return c


def wait_ready(workload: Workload) -> None:
    probe = workload.container["readinessProbe"]["grpc"]
    for i, replica in enumerate(workload.replicas):
        name = f"{workload.component} replica {i}"
        wait_probe_serving(name, replica.process, replica.log, replica.grpc_port, probe["service"])


def handled_calls(metrics_port: int) -> float:
    """Non-health gRPC calls this process handled, from its own /metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("grpc_server_handled_total{") and 'grpc_service="grpc.health.v1.Health"' not in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory):
    """The rendered services, two replicas each, running as local processes."""
    docs = render_docs(CLUSTER_VALUES)
    root = tmp_path_factory.mktemp("cluster")
    workloads = []
    for dep in by_kind(docs, "Deployment"):
        component = dep["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
        workload = Workload(component, dep)
        pod = dep["spec"]["template"]["spec"]
        container = workload.container
        for i in range(dep["spec"]["replicas"]):
            grpc_port, metrics_port = free_port(), free_port()
            replica_root = root / f"{component}-{i}"
            mounts = mount_volumes(pod, container, docs, replica_root)
            env = container_env(
                container,
                {
                    # Loopback instead of the pod IP; free ports instead of the pod's own.
                    "MUSIC_ANALYTICS_HOST": "127.0.0.1",
                    "MUSIC_ANALYTICS_GRPC_PORT": str(grpc_port),
                    "MUSIC_ANALYTICS_METRICS_PORT": str(metrics_port),
                    "TMPDIR": str(mounts["/tmp"]),
                },
            )
            log = replica_root / "stderr.log"
            process = subprocess.Popen(
                [*container["command"], *container["args"]],
                env=env,
                cwd=mounts["/tmp"],
                stdout=subprocess.DEVNULL,
                stderr=log.open("wb"),
            )
            workload.replicas.append(Replica(grpc_port, metrics_port, process, log))
        workloads.append(workload)
    try:
        for workload in workloads:
            wait_ready(workload)
        yield docs, {w.component: w for w in workloads}, root
    finally:
        for w in workloads:
            for r in w.replicas:
                if r.process.poll() is None:
                    r.process.kill()
                    r.process.wait()


def local_address(docs: list[dict[str, Any]], workloads: dict[str, Workload], host: str, port: int) -> str:
    """Service DNS name + port -> the loopback addresses of the pods that Service selects."""
    service = one(docs, "Service", host.split(".")[0])
    component = service["spec"]["selector"]["app.kubernetes.io/component"]
    svc_port = next(p for p in service["spec"]["ports"] if p["port"] == port)
    assert svc_port["targetPort"] == "grpc"
    return "ipv4:" + ",".join(f"127.0.0.1:{r.grpc_port}" for r in workloads[component].replicas)


def test_helm_test_commands_pass(deployed):
    docs, workloads, root = deployed
    tests = [p for p in by_kind(docs, "Pod") if p["metadata"]["annotations"].get("helm.sh/hook") == "test"]
    assert len(tests) == len(workloads)
    for pod in tests:
        (container,) = pod["spec"]["containers"]
        mounts = mount_volumes(pod["spec"], container, docs, root / pod["metadata"]["name"])
        target, health_name = container["args"]
        host, port = target.rsplit(":", 1)
        local = local_address(docs, workloads, host, int(port)).removeprefix("ipv4:").split(",")[0]
        command = [map_paths(a, mounts) for a in container["command"]]
        result = subprocess.run(
            [*command, local, health_name],
            env=container_env(container, {}),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("OK "), result.stdout


@dataclass
class JobRun:
    """What one run of the rendered Job's command left: its log, the files on its results volume
    (read back), the summary it stored in the results ConfigMap, and the input it read."""

    result: subprocess.CompletedProcess[str]
    args: dict[str, Any]
    data: str
    user_stats: Path
    results: dict[str, Any]
    lines: list[dict[str, Any]]
    stored: dict[str, Any]

    @property
    def summary(self) -> dict[str, Any]:
        return json.loads(self.stored["data"]["summary.json"])


def run_rendered_job(docs: list[dict[str, Any]], workloads: dict[str, Workload], root: Path) -> JobRun:
    """The rendered Job's command against the local replicas, its paths mapped under ``root``."""
    job = pipeline_job(docs)
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    mounts = mount_volumes(pod, container, docs, root)
    parsed = job_args(job)
    args = []
    for arg in container["args"]:
        if arg.startswith("dns:///"):
            host, port = arg.removeprefix("dns:///").rsplit(":", 1)
            arg = local_address(docs, workloads, host, int(port))
        args.append(map_paths(arg, mounts))
    result, stored = run_job_container(docs, job, container, args, mounts, root)
    out = Path(map_paths(parsed["--out"], mounts))
    user_stats = Path(map_paths(parsed["--user-stats"], mounts))
    lines = [json.loads(line) for line in user_stats.read_text(encoding="utf-8").splitlines()]
    data = map_paths(parsed["--data"], mounts)
    return JobRun(result, parsed, data, user_stats, json.loads(out.read_text()), lines, stored)


def check_results(stored: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """k8s/check-results.py, as `make kind-e2e` runs it, on the summary a Job stored."""
    return subprocess.run(
        [sys.executable, str(ROOT / "k8s" / "check-results.py")],
        input=stored["data"]["summary.json"],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_job_command_completes_the_pipeline(deployed):
    docs, workloads, root = deployed
    run = run_rendered_job(docs, workloads, root / "job")

    assert run.result.stdout.strip(), "the Job's log must carry a readable summary"
    assert run.results
    summary = run.summary
    assert summary, "the summary ConfigMap was written"
    # The time statistics in the chart's time zone, site-wide in the summary and per user in the
    # JSON Lines file where the chart says, both equal to the oracle's; each user's line with the
    # number of recommended artists the chart asks for.
    expected = oracle_stats(run.data, JOB_TIMEZONE, personalized_n=JOB_ARTISTS)
    assert run.results["listening_stats"] == expected["listening_stats"]
    # The summary leaves out the listens per day (one entry a day would outgrow a ConfigMap).
    days = expected["listening_stats"]["listening_activity"].pop("day")
    assert days and summary["listening_stats"] == expected["listening_stats"]
    assert summary["user_stats"] == {"path": str(run.user_stats), "users": len(expected["user_lines"])}
    assert run.lines == expected["user_lines"]
    # No --recommender: the service's own default trained the model.
    model = summary["personalized_recommendations"]
    assert (model["algorithm"], model["n"], model["users"]) == (DEFAULT_ALGORITHM, JOB_ARTISTS, len(run.lines))
    assert check_results(run.stored).returncode == 0
    # Work reached every service; the event streams are sharded across every pod behind the
    # headless Service (recommendation gets one call with the aggregates, so one pod suffices).
    for component, workload in workloads.items():
        per_replica = [handled_calls(r.metrics_port) for r in workload.replicas]
        assert sum(per_replica) > 0, (component, per_replica)
        if component in ("mapreduce", "userbehavior"):
            assert all(n > 0 for n in per_replica), (component, per_replica)


def without_recommendations(line: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in line.items() if k not in RECOMMENDATION_KEYS}


def test_job_without_personalized_artists(deployed):
    """artistsPerUser 0: the per-user lines are the oracle's without artists, the summary says
    null, and the e2e's check accepts it."""
    _docs, workloads, root = deployed
    docs = render_docs(CLUSTER_VALUES | {"job": {"timezone": JOB_TIMEZONE, "personalized": {"artistsPerUser": 0}}})
    run = run_rendered_job(docs, workloads, root / "job-without-artists")
    expected = oracle_stats(run.data, JOB_TIMEZONE, personalized_n=0)
    assert run.lines == expected["user_lines"]
    assert not [line for line in run.lines if set(RECOMMENDATION_KEYS) & set(line)]
    assert run.summary["personalized_recommendations"] is None
    assert run.results["personalized_recommendations"] is None
    checked = check_results(run.stored)
    assert checked.returncode == 0, checked.stderr
    assert "no personalized artists" in checked.stdout


def test_job_with_another_recommender(deployed):
    """The chart's algorithm and seed reach the service: it trains that model and says so, and
    every user's line names it; the rest of each line is the oracle's."""
    _docs, workloads, root = deployed
    algorithm = next(a for a in ALGORITHMS if a != DEFAULT_ALGORITHM)
    personalized = {"artistsPerUser": 5, "algorithm": algorithm, "seed": 11}
    docs = render_docs(CLUSTER_VALUES | {"job": {"timezone": JOB_TIMEZONE, "personalized": personalized}})
    run = run_rendered_job(docs, workloads, root / f"job-{algorithm}")
    model = run.summary["personalized_recommendations"]
    assert (model["algorithm"], model["n"], model["users"]) == (algorithm, 5, len(run.lines))
    labels = {algorithm, f"{algorithm}+popularity", "popularity"}
    assert set(model["users_by"]) == labels and sum(model["users_by"].values()) == len(run.lines)
    expected = oracle_stats(run.data, JOB_TIMEZONE, personalized_n=0)
    assert [without_recommendations(line) for line in run.lines] == expected["user_lines"]
    for line in run.lines:
        assert line["recommended_by"] in labels, line
        assert len(line["recommended_artists"]) <= 5, line
    checked = check_results(run.stored)
    assert checked.returncode == 0, checked.stderr
    assert f"5 artists each by {algorithm}" in checked.stdout


def test_job_with_an_unknown_time_zone_fails_at_once(tmp_path: Path):
    """A name the schema lets through but the zone database lacks: the Job's command exits with a
    code its podFailurePolicy fails the Job on (no retries), before it dials any service."""
    zone = "Mars/Olympus_Mons"
    docs = render_docs({"job": {"timezone": zone}})
    job = pipeline_job(docs)
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    mounts = mount_volumes(pod, container, docs, tmp_path)
    result = subprocess.run(
        [*container["command"], *(map_paths(a, mounts) for a in container["args"])],
        env=container_env(container, {"TMPDIR": str(mounts["/tmp"])}),
        cwd=mounts["/tmp"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    (fail_rule,) = [r for r in job["spec"]["podFailurePolicy"]["rules"] if r["action"] == "FailJob"]
    assert result.returncode in fail_rule["onExitCodes"]["values"], result
    assert f"--timezone: unknown time zone {zone!r}" in result.stderr
    assert not Path(map_paths(job_args(job)["--out"], mounts)).exists()


def test_services_run_with_the_rendered_limits(deployed):
    """The limits as the running server understood them: maxStreams, and half the container's
    memory limit per call, which only arrives through the Downward API variable."""
    _docs, workloads, _root = deployed
    for workload in workloads.values():
        container = workload.container
        limit = quantity_bytes(container["resources"]["limits"]["memory"])
        for replica in workload.replicas:
            record = serving_line(replica.log)
            assert record["max_streams"] == int(container_env(container, {})["MUSIC_ANALYTICS_MAX_STREAMS"])
            assert record["max_call_bytes"] == limit // 2, (workload.component, record)
            assert record["health_port"] is None  # TLS off: the probes use the gRPC port


def test_services_stop_cleanly_on_sigterm(deployed):
    _docs, workloads, _root = deployed
    for workload in workloads.values():
        grace = workload.deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        for replica in workload.replicas:
            replica.process.send_signal(signal.SIGTERM)
        for replica in workload.replicas:
            code = replica.process.wait(timeout=grace)
            assert code == 0, (workload.component, code, replica.log.read_text()[-2000:])
