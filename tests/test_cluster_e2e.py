"""The chart on a real Kubernetes cluster: install, the Job, helm test, upgrades, faults, monitoring.

The cluster is k8s/cluster/: Kubernetes (the version kind's node image has), etcd, CoreDNS and the
Helm CLI built from their pinned Go modules, containerd/runc/CNI from Debian, all as host
processes on a bridge of their own. The project's image is built with podman from this checkout
and imported into the cluster's containerd. Every check below runs against it in order, each
building on the state the previous one left (one release, upgraded step by step), and writes
pass or fail with its evidence to build/cluster-e2e/report.json.

This needs root and, the first time, about half an hour of building: `make test` on a user's
machine skips it with that reason; `make cluster-e2e` runs it, and CI (CI=true) always does.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from music_analytics.client.demo import free_port
from music_analytics.client.generate import generate
from music_analytics.services.registry import SERVICES
from tests.conftest import ROOT, require_binary
from tests.oracle import oracle, oracle_stats
from tests.support.prometheus import Prometheus, dashboard_queries, series_with_data, variable_values
from tests.support.waiting import wait_until

CLUSTER_DIR = ROOT / "k8s" / "cluster"
OUT = ROOT / "build" / "cluster-e2e"
REPORT = OUT / "report.json"
NAMESPACE = "music-analytics-e2e"
RELEASE = "music-analytics"
# The chart uses a release name that already contains the chart name as the whole prefix.
FULLNAME = RELEASE
IMAGE_REPO = "localhost/music-analytics"
IMAGE_TAG = "cluster-e2e"
CHART = ROOT / "charts" / "music-analytics"
STREAMING = ("mapreduce", "userbehavior")

pytestmark = pytest.mark.timeout(3600)


def _enabled() -> bool:
    on = ("1", "true", "yes")
    return os.environ.get("CI", "").lower() in on or os.environ.get("MUSIC_ANALYTICS_CLUSTER_E2E", "") in on


# --- the report -------------------------------------------------------------------------------


@dataclass
class Report:
    checks: list[dict[str, Any]] = field(default_factory=list)
    cluster: dict[str, Any] = field(default_factory=dict)
    job_summaries: dict[str, Any] = field(default_factory=dict)

    def write(self) -> None:
        OUT.mkdir(parents=True, exist_ok=True)
        counts = {o: sum(c["outcome"] == o for c in self.checks) for o in ("passed", "failed", "not applicable")}
        document = {
            "cluster": self.cluster,
            "summary": counts,
            "checks": self.checks,
            "job_summaries": self.job_summaries,
        }
        REPORT.write_text(json.dumps(document, indent=2, sort_keys=False, default=str) + "\n")


REPORT_STATE = Report()


@pytest.fixture(autouse=True)
def evidence(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """What a check saw; recorded with its outcome in the report whatever the outcome."""
    seen: dict[str, Any] = {}
    yield seen
    call = getattr(request.node, "rep_call", None)
    setup = getattr(request.node, "rep_setup", None)
    if call is None and setup is not None and setup.skipped:
        return  # the whole e2e was skipped (not enabled here): nothing to report
    if call is None or call.skipped:
        outcome = "not applicable"
        reason = (call or setup).longrepr[2] if (call or setup) and isinstance((call or setup).longrepr, tuple) else ""
        seen.setdefault("reason", reason)
    else:
        outcome = "passed" if call.passed else "failed"
        if call.failed:
            seen["error"] = str(call.longrepr)[-4000:]
    doc = (request.node.function.__doc__ or "").strip().splitlines()
    REPORT_STATE.checks.append(
        {"check": request.node.name, "what": doc[0] if doc else "", "outcome": outcome, "evidence": seen}
    )
    REPORT_STATE.write()


# --- the cluster ------------------------------------------------------------------------------


def _lib(expression: str) -> str:
    """A value computed by k8s/cluster/lib.sh (paths and addresses the scripts use)."""
    script = f'. "{CLUSTER_DIR / "lib.sh"}" && {expression}'
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout.strip()


def _script(name: str, log: Path, *args: str, timeout: float = 3600) -> None:
    with log.open("ab") as out:
        proc = subprocess.run([str(CLUSTER_DIR / name), *args], stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise AssertionError(f"k8s/cluster/{name} {' '.join(args)} failed ({proc.returncode}):\n{tail}")


@dataclass
class Cluster:
    bin: Path
    kubeconfig: Path
    node_ip: str
    env: dict[str, str]

    def run(self, tool: str, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [str(self.bin / tool), *args], env=self.env, capture_output=True, text=True, timeout=timeout, cwd=ROOT
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"{tool} {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    def kubectl(self, *args: str, **kw: Any) -> subprocess.CompletedProcess:
        return self.run("kubectl", *args, **kw)

    def helm(self, *args: str, **kw: Any) -> subprocess.CompletedProcess:
        return self.run("helm", *args, **kw)

    def get(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", "-n", NAMESPACE, "-o", "json", *args).stdout)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    if not _enabled():
        pytest.skip(
            "the real-cluster e2e builds Kubernetes from source (about 30 min the first time) and runs it "
            "as root: run `make cluster-e2e` (CI always runs it)"
        )
    if os.geteuid() != 0:
        pytest.fail("the real-cluster e2e runs kubelet, containerd and bridges on the host: it needs root")
    for tool in ("podman", "go"):
        require_binary(tool)
    OUT.mkdir(parents=True, exist_ok=True)
    log = OUT / "cluster.log"
    log.write_text("")
    # MUSIC_ANALYTICS_CLUSTER_REUSE=1: run the checks on the cluster `make cluster-up` started, and
    # leave it running (for working on the checks themselves).
    reuse = os.environ.get("MUSIC_ANALYTICS_CLUSTER_REUSE") == "1"
    started = time.monotonic()
    if not reuse:
        _script("build.sh", log)
    built = time.monotonic()
    bin_dir = Path(_lib('echo "$CACHE_DIR/bin/$(cache_key)"'))
    state = Path(_lib('echo "$STATE_DIR"'))
    try:
        if not reuse:
            _script("cluster-up.sh", log, timeout=900)
        up = time.monotonic()
        # The image from this checkout's sources, as a user's `make image` builds it.
        image = f"{IMAGE_REPO}:{IMAGE_TAG}"
        with log.open("ab") as out:
            build = subprocess.run(
                [str(ROOT / "k8s" / "build-image.sh"), "--python", sys.executable, image],
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=1800,
                # podman's defaults fail in this kind of sandbox (ulimits, cgroups): the cluster's config.
                env=os.environ | {"CONTAINERS_CONF": str(CLUSTER_DIR / "templates" / "containers.conf")},
            )
        assert build.returncode == 0, log.read_text(errors="replace")[-3000:]
        _script("load-image.sh", log, image, timeout=600)
        # Helm's own caches inside build/: nothing of the user's ~/.config or ~/.cache is touched.
        helm_homes = {f"HELM_{kind}_HOME": str(OUT / f"helm-{kind.lower()}") for kind in ("CACHE", "CONFIG", "DATA")}
        env = os.environ | {"KUBECONFIG": str(state / "kubeconfig")} | helm_homes
        c = Cluster(bin_dir, state / "kubeconfig", _lib('echo "$NODE_IP"'), env)
        REPORT_STATE.cluster = {
            "versions": json.loads(c.kubectl("version", "-o", "json").stdout),
            "helm": c.helm("version", "--short").stdout.strip(),
            "node": c.kubectl("get", "nodes", "-o", "wide").stdout,
            "seconds": {
                "build": round(built - started),
                "up": round(up - built),
                "image": round(time.monotonic() - up),
            },
        }
        REPORT_STATE.write()
        yield c
    finally:
        if not reuse:
            _script("cluster-down.sh", log, timeout=600)


# --- helpers ----------------------------------------------------------------------------------


def deployment(name: str) -> str:
    return f"{FULLNAME}-{name}"


def base_values(tmp: Path, **extra: Any) -> Path:
    values = {
        "image": {"repository": IMAGE_REPO, "tag": IMAGE_TAG, "pullPolicy": "Never"},
        "default": {"resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "768Mi"}}},
        "job": {"waitReadySeconds": 300, "logLevel": "warning"},
    }
    for key, value in extra.items():
        values[key] = _merge(values.get(key, {}), value) if isinstance(value, dict) else value
    path = tmp / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out.get(k, {}), v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def post_renderer(tmp: Path, name: str, body: str) -> Path:
    """An executable Helm post-renderer (manifests on stdin, out on stdout) running ``body``,
    a Python function ``edit(docs: list[dict]) -> list[dict]``."""
    path = tmp / name
    path.write_text(
        f"#!{sys.executable}\nimport sys, yaml\n{body}\n"
        "docs = [d for d in yaml.safe_load_all(sys.stdin) if d]\n"
        "sys.stdout.write(yaml.safe_dump_all(edit(docs), sort_keys=False))\n"
    )
    path.chmod(0o755)
    return path


def job_named(c: Cluster, revision: int) -> str:
    names = [j["metadata"]["name"] for j in c.get("jobs")["items"]]
    matching = [n for n in names if n.endswith(f"-{revision}")]
    assert matching, f"no Job for revision {revision} among {names}"
    return matching[0]


def revision(c: Cluster) -> int:
    history = json.loads(c.helm("history", RELEASE, "-n", NAMESPACE, "-o", "json").stdout)
    return int(history[-1]["revision"])


def wait_job(c: Cluster, name: str, timeout: float = 900) -> dict:
    def finished() -> dict | None:
        job = c.get("job", name)
        conditions = {x["type"]: x["status"] for x in job["status"].get("conditions", [])}
        return job if conditions.get("Complete") == "True" or conditions.get("Failed") == "True" else None

    return wait_until(f"Job {name} to finish", finished, timeout, 2)


def job_conditions(job: dict) -> dict[str, str]:
    return {
        x["type"]: x.get("reason", x["status"]) for x in job["status"].get("conditions", []) if x["status"] == "True"
    }


def stored_summary(c: Cluster) -> dict:
    data = c.get("configmap", f"{FULLNAME}-results").get("data") or {}
    assert "summary.json" in data, f"results ConfigMap holds no summary: {sorted(data)}"
    return json.loads(data["summary.json"])


def expected_summary(csv: Path) -> dict:
    """The summary the Job stores, as the DuckDB oracle computes it for ``csv``."""
    o = oracle(csv)
    # The chart's default zone (UTC); the summary leaves out the listens per day.
    stats = oracle_stats(csv, "UTC")["listening_stats"]
    stats["listening_activity"].pop("day")
    return {
        "events_processed": sum(o["song_counts"].values()),
        "top_songs": dict((song, plays) for song, plays in o["top_songs"]),
        "top_users": o["top_users"],
        "trending_songs": o["trending"],
        "users": len(o["users"]),
        "listening_stats": stats,
    }


def comparable(summary: dict) -> dict:
    keys = ("events_processed", "top_songs", "top_users", "trending_songs", "users", "listening_stats")
    return {k: summary[k] for k in keys}


def pods(c: Cluster, component: str) -> list[dict]:
    selector = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component={component}"
    return c.get("pods", "-l", selector)["items"]


def batches_received(pod: dict, service: str) -> float:
    port = SERVICES[service].metrics_port
    try:
        body = urllib.request.urlopen(f"http://{pod['status']['podIP']}:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return 0.0
    for line in body.splitlines():
        if line.startswith("music_analytics_batches_received_total{"):
            return float(line.split()[-1])
    return 0.0


class DataServer:
    """A plain HTTP server on the node's address, serving the generated CSV to the Job's
    init container (job.data.source=url), as an object store would."""

    def __init__(self, directory: Path, host: str) -> None:
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
        handler.log_message = lambda *_a, **_k: None  # type: ignore[method-assign]
        self.server = http.server.ThreadingHTTPServer((host, free_port()), handler)
        self.url = f"http://{host}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- the checks, in order ---------------------------------------------------------------------

BUNDLED = ROOT / "data" / "stream_data.csv"
STATE: dict[str, Any] = {}


def test_install_into_restricted_namespace_ready_through_grpc_probes(cluster: Cluster, tmp_path: Path, evidence):
    """helm install --wait into a restricted namespace; Deployments Ready through native gRPC probes;
    one Deployment's readiness delayed on purpose (for the next check)."""
    c = cluster
    c.helm("uninstall", RELEASE, "-n", NAMESPACE, "--wait", check=False)  # what a reused cluster may hold
    c.kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=true", "--timeout=180s")
    c.kubectl("create", "namespace", NAMESPACE)
    c.kubectl("label", "namespace", NAMESPACE, "pod-security.kubernetes.io/enforce=restricted",
              "pod-security.kubernetes.io/enforce-version=latest")  # fmt: skip
    # The services start slowly: userbehavior's pod sleeps 25 s in an init container before its
    # server starts, so the Job (created at once, not a hook) starts long before it is Ready.
    delay = post_renderer(tmp_path, "delay-userbehavior", """
def edit(docs):
    for d in docs:
        if d.get("kind") == "Deployment" and d["metadata"]["name"].endswith("-userbehavior"):
            spec = d["spec"]["template"]["spec"]
            main = spec["containers"][0]
            spec["initContainers"] = [{
                "name": "slow-start", "image": main["image"], "imagePullPolicy": main.get("imagePullPolicy"),
                "command": ["python", "-c", "import time; time.sleep(25)"],
                "securityContext": main["securityContext"]}]
    return docs
""")  # fmt: skip
    started = time.monotonic()
    install = c.helm("install", RELEASE, str(CHART), "-n", NAMESPACE, "-f", str(base_values(tmp_path)),
                     "--post-renderer", str(delay), "--wait", "--timeout", "10m")  # fmt: skip
    evidence["helm_install"] = install.stdout.strip().splitlines()[:8]
    evidence["install_seconds"] = round(time.monotonic() - started, 1)
    ns = json.loads(c.kubectl("get", "namespace", NAMESPACE, "-o", "json").stdout)
    evidence["namespace_labels"] = ns["metadata"]["labels"]
    ready = {}
    for name in SERVICES:
        d = c.get("deployment", deployment(name))
        probe = d["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
        assert "grpc" in probe, probe
        assert d["status"].get("readyReplicas") == d["spec"]["replicas"] == 1, d["status"]
        ready[name] = {"readyReplicas": d["status"]["readyReplicas"], "readinessProbe": probe}
    evidence["deployments"] = ready
    # The kubelet really asked gRPC health: a pod's Ready condition follows the probe.
    for pod in pods(c, "mapreduce") + pods(c, "userbehavior") + pods(c, "recommendation"):
        conditions = {x["type"]: x["status"] for x in pod["status"]["conditions"]}
        assert conditions["Ready"] == "True", pod["metadata"]["name"]
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True


def test_job_completes_on_first_attempt_despite_a_slow_service(cluster: Cluster, evidence):
    """The Job, started with the services, completes on its first attempt; its results ConfigMap
    holds exactly the oracle's summary of the bundled data."""
    c = cluster
    name = job_named(c, 1)
    job = wait_job(c, name)
    evidence["job"] = name
    evidence["status"] = {k: job["status"].get(k) for k in ("succeeded", "failed", "active")}
    evidence["conditions"] = job_conditions(job)
    log = c.kubectl("logs", "-n", NAMESPACE, f"job/{name}", "--tail=60").stdout
    evidence["log_waiting_lines"] = [line for line in log.splitlines() if "waiting for replicas" in line][:3]
    assert job["status"].get("succeeded") == 1 and not job["status"].get("failed"), job["status"]
    job_pods = c.get("pods", "-l", f"job-name={name}")["items"]
    assert len(job_pods) == 1, [p["metadata"]["name"] for p in job_pods]
    summary = stored_summary(c)
    REPORT_STATE.job_summaries[name] = summary
    assert comparable(summary) == expected_summary(BUNDLED)
    STATE["summary_1"] = summary


def test_helm_test_logs_prints_each_services_health_and_reflection(cluster: Cluster, evidence):
    """`helm test --logs` passes and prints every service's health and reflection check."""
    proc = cluster.helm("test", RELEASE, "-n", NAMESPACE, "--logs", "--timeout", "5m", check=False)
    evidence["output"] = (proc.stdout + proc.stderr).strip().splitlines()[-40:]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for service in SERVICES.values():
        assert any(
            line.startswith("OK ") and f"{service.full_name} SERVING" in line for line in proc.stdout.splitlines()
        ), service.full_name
        assert "grpc.reflection.v1alpha.ServerReflection" in proc.stdout


def test_upgrade_to_two_replicas_runs_the_job_again_with_identical_results(cluster: Cluster, tmp_path, evidence):
    """helm upgrade to 2 replicas: Ready through gRPC probes at 2, a new Job, identical results."""
    c = cluster
    values = base_values(tmp_path, default={"replicas": 2})
    c.helm("upgrade", RELEASE, str(CHART), "-n", NAMESPACE, "-f", str(values), "--wait", "--timeout", "10m")
    for name in SERVICES:
        d = c.get("deployment", deployment(name))
        assert d["status"].get("readyReplicas") == 2, (name, d["status"])
    name = job_named(c, revision(c))
    job = wait_job(c, name)
    evidence["job"] = name
    evidence["status"] = {k: job["status"].get(k) for k in ("succeeded", "failed")}
    assert job["status"].get("succeeded") == 1 and not job["status"].get("failed"), job["status"]
    summary = stored_summary(c)
    REPORT_STATE.job_summaries[name] = summary
    evidence["replicas_used"] = summary.get("replicas")
    assert summary["replicas"]["mapreduce"] == summary["replicas"]["userbehavior"] == 2
    assert comparable(summary) == comparable(STATE["summary_1"])


@pytest.fixture(scope="module")
def big_data(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DataServer, Path]]:
    directory = tmp_path_factory.mktemp("cluster-data")
    path = directory / "events.csv"
    # Big enough that the run is still streaming when the fault comes (a few seconds).
    generate(path, 3_000_000, seed=21)
    server = DataServer(directory, cluster.node_ip)
    try:
        yield server, path
    finally:
        server.close()


def url_values(tmp: Path, server: DataServer) -> Path:
    port = server.server.server_address[1]
    return base_values(
        tmp,
        default={"replicas": 2},
        job={"data": {"source": "url", "url": f"{server.url}/events.csv"}},
        networkPolicy={"external": {"cidrs": [f"{server.server.server_address[0]}/32"], "ports": [port]}},
    )


def run_with_fault(c: Cluster, tmp: Path, server: DataServer, fault: Callable[[str], str], evidence) -> dict:
    """Upgrade (a new Job over the big file); once a streaming replica has data, apply ``fault``."""
    # Counters include earlier Jobs' batches: the new Job's show as an increase over these.
    before = {pod["metadata"]["name"]: batches_received(pod, s) for s in STREAMING for pod in pods(c, s)}
    values = url_values(tmp, server)
    c.helm("upgrade", RELEASE, str(CHART), "-n", NAMESPACE, "-f", str(values), "--wait", "--timeout", "10m")
    name = job_named(c, revision(c))
    # The pods are Ready and stay put until the fault: list them once, then poll only their metrics.
    replicas = [(service, pod) for service in STREAMING for pod in pods(c, service)]

    def victim() -> str | None:
        for service, pod in replicas:
            if batches_received(pod, service) > before.get(pod["metadata"]["name"], 0.0):
                return pod["metadata"]["name"]
        return None

    target = wait_until("a replica to receive the Job's first batches", victim, 600, 0.02)
    evidence["fault"] = fault(target)
    job = wait_job(c, name)
    evidence["job"] = name
    evidence["status"] = {k: job["status"].get(k) for k in ("succeeded", "failed")}
    assert job["status"].get("succeeded") == 1 and not job["status"].get("failed"), (
        job["status"], c.kubectl("logs", "-n", NAMESPACE, f"job/{name}", "--tail=40", check=False).stdout
    )  # fmt: skip
    summary = stored_summary(c)
    REPORT_STATE.job_summaries[name] = summary
    evidence["replica_recoveries"] = summary.get("replica_recoveries")
    return summary


def _pids_in_pod(uid: str) -> list[int]:
    """Host PIDs of a pod's processes: the kubelet's cgroupfs paths carry the pod's UID."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cgroups = (proc / "cgroup").read_text()
        except OSError:
            continue
        if uid in cgroups or uid.replace("-", "_") in cgroups:
            found.append(int(proc.name))
    return found


def test_service_pod_deleted_during_the_job_loses_nothing(cluster: Cluster, big_data, tmp_path, evidence):
    """A service pod is killed and deleted while the Job streams 3M events: its shard is rebuilt on
    another replica and the results are still exact."""
    server, path = big_data
    c = cluster

    def delete(pod: str) -> str:
        # A graceful delete lets the pod finish its stream (shutdown delay, drain): to lose a
        # replica's state for real, its process is killed first (as the OOM killer or a node
        # crash would), then the pod is deleted.
        uid = c.get("pod", pod)["metadata"]["uid"]
        killed = [pid for pid in _pids_in_pod(uid) if "serve" in Path(f"/proc/{pid}/cmdline").read_text()]
        assert killed, f"no service process of pod {pod} found on the node"
        for pid in killed:
            os.kill(pid, 9)
        c.kubectl("delete", "pod", "-n", NAMESPACE, pod, "--grace-period=0", "--force", "--wait=false")
        return f"SIGKILL to {pod}'s service process {killed}, then deleted it with --grace-period=0 --force"

    summary = run_with_fault(c, tmp_path, server, delete, evidence)
    expected = expected_summary(path)
    STATE["big_expected"] = expected
    assert comparable(summary) == expected
    assert sum(summary["replica_recoveries"].values()) >= 1, summary["replica_recoveries"]


def test_rollout_restart_during_the_job_loses_nothing(cluster: Cluster, big_data, tmp_path, evidence):
    """`kubectl rollout restart` of a streaming service while the Job runs: the results are still exact,
    and the old pods kept serving through their shutdown delay."""
    server, _ = big_data
    c = cluster
    restarted: dict[str, str] = {}

    def restart(pod: str) -> str:
        service = next(s for s in STREAMING if f"-{s}-" in pod)
        restarted["service"] = service
        c.kubectl("rollout", "restart", "-n", NAMESPACE, f"deployment/{deployment(service)}")
        return f"rollout restart of deployment/{deployment(service)} while {pod} held a shard"

    summary = run_with_fault(c, tmp_path, server, restart, evidence)
    assert comparable(summary) == STATE["big_expected"]
    c.kubectl("rollout", "status", "-n", NAMESPACE, f"deployment/{deployment(restarted['service'])}", "--timeout=5m")


def test_job_that_cannot_store_its_results_fails(cluster: Cluster, tmp_path, evidence):
    """The Job's Role is removed before it runs: the Job fails, on its first attempt, saying why."""
    c = cluster
    # The Job's Role only: the uninstall hook's own (test-cleanup) stays, so that a later test's
    # uninstall does not depend on another test having put it back.
    no_role = post_renderer(tmp_path, "drop-role", f"""
def edit(docs):
    return [d for d in docs if not (d.get("kind") in ("Role", "RoleBinding")
                                    and d["metadata"]["name"] == "{RELEASE}-pipeline")]
""")  # fmt: skip
    c.helm("upgrade", RELEASE, str(CHART), "-n", NAMESPACE, "-f", str(base_values(tmp_path)),
           "--post-renderer", str(no_role), "--wait", "--timeout", "10m")  # fmt: skip
    roles = [r["metadata"]["name"] for r in c.get("roles")["items"]]
    assert f"{RELEASE}-pipeline" not in roles, "the Job's Role is still there"
    name = job_named(c, revision(c))
    job = wait_job(c, name)
    log = c.kubectl("logs", "-n", NAMESPACE, f"job/{name}", "--tail=20", check=False).stdout
    evidence["job"] = name
    evidence["status"] = {k: job["status"].get(k) for k in ("succeeded", "failed")}
    evidence["conditions"] = job_conditions(job)
    evidence["log"] = [line for line in log.splitlines() if "error" in line.lower()][:5]
    assert job_conditions(job).get("Failed"), job["status"]
    assert not job["status"].get("succeeded")
    assert job["status"].get("failed") == 1, "the Job retried a run that cannot store its results"
    assert "results not stored" in log and "403" in log, log


def test_monitoring_objects_apply_and_prometheus_scrapes_every_pod(cluster: Cluster, tmp_path, evidence):
    """Without the Prometheus Operator CRDs, asking for a ServiceMonitor fails saying how to get them;
    with the pinned prometheus-operator CRDs the monitoring objects apply; Prometheus on the
    host discovers the pods through the API and scrapes every one; every dashboard query returns data."""
    c = cluster
    monitoring = {
        "serviceMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True},
        "grafanaDashboards": {"enabled": True},
    }
    # A cluster without the Prometheus Operator (cluster-up.sh installs the CRDs for users: remove them).
    c.kubectl("delete", "crd", "servicemonitors.monitoring.coreos.com", "prometheusrules.monitoring.coreos.com",
              "--ignore-not-found", "--wait=true", "--timeout=60s")  # fmt: skip
    refused = c.helm("upgrade", RELEASE, str(CHART), "-n", NAMESPACE, "-f", str(base_values(tmp_path)),
                     "--set", "monitoring.serviceMonitor.enabled=true", "--dry-run=server", check=False)  # fmt: skip
    evidence["without_crds"] = (refused.stderr or refused.stdout).strip()[-600:]
    assert refused.returncode != 0 and "ServiceMonitor" in refused.stderr and "CRD" in refused.stderr, refused.stderr

    crd_dir = c.bin / "crds"  # build.sh copies them there from the pinned prometheus-operator module
    crds = sorted(crd_dir.glob("monitoring.coreos.com_*.yaml"))
    assert {p.name for p in crds} >= {
        "monitoring.coreos.com_servicemonitors.yaml",
        "monitoring.coreos.com_prometheusrules.yaml",
    }, f"build.sh keeps the pinned prometheus-operator CRDs in {crd_dir}"
    for path in crds:
        c.kubectl("apply", "--server-side", "-f", str(path))
    # Retried: `kubectl wait` fails at once ("status.conditions accessor error") on a CRD whose
    # status the API server has not written yet, rather than waiting for it.
    wait_until("the CRDs established", lambda: c.kubectl(
        "wait", "--for=condition=established", "--timeout=5s", "crd/servicemonitors.monitoring.coreos.com",
        "crd/prometheusrules.monitoring.coreos.com", check=False).returncode == 0, 60, 1)  # fmt: skip
    evidence["crds"] = [p.name for p in crds]

    prometheus_bin, pushgateway_bin = require_binary("prometheus"), require_binary("prometheus-pushgateway")
    pg_port, prom_port = free_port(), free_port()
    processes: list[subprocess.Popen] = []
    try:
        processes.append(subprocess.Popen(
            [pushgateway_bin, f"--web.listen-address={c.node_ip}:{pg_port}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=(tmp_path / "pushgateway.log").open("wb"),
        ))  # fmt: skip
        values = base_values(tmp_path, monitoring=monitoring, job={"pushgateway": f"http://{c.node_ip}:{pg_port}"},
                             networkPolicy={"pushgateway": {"port": pg_port}})  # fmt: skip
        c.helm("upgrade", RELEASE, str(CHART), "-n", NAMESPACE, "-f", str(values), "--wait", "--timeout", "10m")
        applied = {
            kind: [o["metadata"]["name"] for o in c.get(kind)["items"]]
            for kind in ("servicemonitors", "prometheusrules")
        }
        evidence["applied"] = applied
        assert all(applied.values()), applied
        rule_spec = c.get("prometheusrule", applied["prometheusrules"][0])["spec"]
        rules = tmp_path / "rules.yaml"
        rules.write_text(yaml.safe_dump(rule_spec))
        targets = tmp_path / "pods.json"
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules)],
            "scrape_configs": [
                {
                    # Debian's Prometheus is built without Kubernetes service discovery, so the
                    # pods' own prometheus.io annotations, read from the API, become file_sd targets.
                    "job_name": "kubernetes-pods",
                    "file_sd_configs": [{"files": [str(targets)], "refresh_interval": "1s"}],
                },
                {"job_name": "pushgateway", "honor_labels": True,
                 "static_configs": [{"targets": [f"{c.node_ip}:{pg_port}"]}]},
            ],
        }  # fmt: skip
        config_path = tmp_path / "prometheus.yml"
        targets.write_text(json.dumps(annotated_targets(c)))
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        check = subprocess.run([require_binary("promtool"), "check", "config", str(config_path)],
                               capture_output=True, text=True)  # fmt: skip
        assert check.returncode == 0, check.stdout + check.stderr
        started = time.time()
        processes.append(subprocess.Popen(
            [prometheus_bin, f"--config.file={config_path}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=(tmp_path / "prometheus.log").open("wb"),
        ))  # fmt: skip
        prometheus = Prometheus(f"http://127.0.0.1:{prom_port}", started)
        service_pods = sum(len(pods(c, s)) for s in SERVICES)

        def scraped() -> list | None:
            try:
                up = prometheus.query('up{job="kubernetes-pods"} == 1')["data"]["result"]
            except OSError:
                return None
            return up if len(up) == service_pods else None

        up = wait_until(f"Prometheus to scrape all {service_pods} service pods", scraped, 120, 1.0)
        evidence["scraped_pods"] = sorted(s["metric"]["pod"] for s in up)
        wait_job(c, job_named(c, revision(c)))
        # One more run while Prometheus watches (the last one may have ended before its first
        # scrape): rates and latency histograms need the counters to move under its eyes.
        c.helm("upgrade", RELEASE, str(CHART), "-n", NAMESPACE, "-f", str(values), "--wait", "--timeout", "10m")
        targets.write_text(json.dumps(annotated_targets(c)))
        job = wait_job(c, job_named(c, revision(c)))
        assert job["status"].get("succeeded") == 1, job["status"]
        # Rates need two samples after the run's last change: two scrapes of every pod from now.
        prometheus.wait_scraped_since(time.time())
        failures, checked = [], 0
        for path in sorted((CHART / "files" / "dashboards").glob("*.json")):
            dashboard = json.loads(path.read_text())
            for variables in variable_values(prometheus, dashboard):
                for query in dashboard_queries(dashboard, variables):
                    reply = prometheus.query_range(query.expr)
                    checked += 1
                    if reply.get("status") != "success" or not series_with_data(reply):
                        failures.append(f"{path.stem} {query.source}: {query.expr}")
        evidence["dashboard_queries"] = {"checked": checked, "without_data": failures}
        assert checked >= 20 and not failures, failures
        loaded = prometheus.api("rules")["data"]["groups"]
        evidence["alert_rules_loaded"] = sum(len(g["rules"]) for g in loaded)
        assert loaded and all(r.get("health") == "ok" for g in loaded for r in g["rules"]), loaded
    finally:
        for p in processes:
            p.terminate()
        for p in processes:
            p.wait(30)


def annotated_targets(c: Cluster) -> list[dict[str, Any]]:
    """What annotation-based pod discovery finds: every pod with prometheus.io/scrape=true, at
    its IP and prometheus.io/port, labelled with its namespace and name."""
    found = []
    for pod in c.get("pods")["items"]:
        annotations = pod["metadata"].get("annotations", {})
        if annotations.get("prometheus.io/scrape") == "true" and pod["status"].get("podIP"):
            found.append({
                "targets": [f"{pod['status']['podIP']}:{annotations['prometheus.io/port']}"],
                "labels": {"namespace": NAMESPACE, "pod": pod["metadata"]["name"]},
            })  # fmt: skip
    return found


def test_helm_uninstall_leaves_nothing_behind(cluster: Cluster, evidence):
    """`helm uninstall` removes everything the release made, helm test pods included."""
    c = cluster
    c.helm("uninstall", RELEASE, "-n", NAMESPACE, "--wait", "--timeout", "5m")
    kinds = c.kubectl("api-resources", "--verbs=list", "--namespaced", "-o", "name").stdout.split()
    kinds = [k for k in kinds if k not in ("events", "events.events.k8s.io")]
    # Kubernetes' own per-namespace objects, made by its controllers, not by the release.
    own = {("ConfigMap", "kube-root-ca.crt"), ("ServiceAccount", "default")}

    def leftovers() -> list[str]:
        items = json.loads(c.kubectl("get", ",".join(kinds), "-n", NAMESPACE, "-o", "json").stdout)["items"]
        return [f"{i['kind']}/{i['metadata']['name']}" for i in items if (i["kind"], i["metadata"]["name"]) not in own]

    try:
        wait_until("the namespace to be empty", lambda: not leftovers(), 120, 2)
    finally:
        evidence["left_behind"] = leftovers()
    assert evidence["left_behind"] == []


def test_network_policies_are_enforced(cluster: Cluster, evidence):
    """NetworkPolicy: a pod outside the allowed paths is refused while the Job's own paths work."""
    # kind enforces policies with kindnet's kube-network-policies, which queues packets to user
    # space through an nftables `queue` rule. Tried here (k8s/cluster/README.md): v0.8.0 builds
    # from the module proxy and starts, then fails with "syncing nftables rules ... netlink
    # receive: no such file or directory": this kernel has NFQUEUE for iptables but not the
    # nftables queue expression (`nft add rule ... queue num 100` fails the same way). The
    # bridge CNI has no engine of its own, so policies are accepted but not enforced here; the
    # chart's policies are checked path by path without a cluster in tests/test_chart.py.
    evidence["engine"] = "sigs.k8s.io/kube-network-policies v0.8.0"
    pytest.skip(
        "not applicable here: no NetworkPolicy engine can run on this kernel (kube-network-policies needs the "
        "nftables queue expression, which this kernel lacks); see k8s/cluster/README.md"
    )


def test_skaffold_run_and_dev_rebuild(cluster: Cluster, evidence):
    """skaffold run against the cluster, then skaffold dev rebuilding on a change under services/."""
    # skaffold v2.16.1, the newest the Go module proxy serves (v2.17.0 is refused), builds from
    # its module (k8s/cluster/build.sh skaffold), but knows config apiVersions only up to
    # skaffold/v4beta13, and skaffold.yaml is skaffold/v4beta14 (the current schema, vendored in
    # tests/schemas/): it refuses to load it. skaffold.yaml is checked against that schema and the
    # build context (tests/test_skaffold.py, tests/test_build_context.py) instead.
    evidence["skaffold"] = "v2.16.1 builds; loads apiVersion <= skaffold/v4beta13; skaffold.yaml is v4beta14"
    pytest.skip(
        "not applicable here: the newest skaffold the module proxy serves (v2.16.1) cannot read skaffold/v4beta14"
    )
