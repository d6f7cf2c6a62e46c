"""Running the chart's rendered containers as local processes, exactly as rendered.

Only what is cluster-specific is mapped to this machine: the environment the kubelet would set
(Downward API values included), volume mounts to local directories holding the rendered
ConfigMaps' files and the Secrets' keys, and paths inside the pod to those directories.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.chart import NAMESPACE, by_kind, job_args, one
from tests.support.kube_api import FakeKubeApi
from tests.support.waiting import wait_until

VENV_BIN = Path(sys.executable).parent

# Kubernetes resource quantity suffixes (binary and decimal), as the Downward API expands them.
QUANTITY_SUFFIXES = {
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "": 1,
}  # fmt: skip


def base_env() -> dict[str, str]:
    """This process's environment without anything that would change how the services run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBERNETES_", "MUSIC_ANALYTICS_"))}
    # The image puts the venv first on PATH; so do we, so `music-analytics` and `python` resolve alike.
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    for name in ("MAPREDUCE_ADDR", "USERBEHAVIOR_ADDR", "RECOMMENDATION_ADDR"):
        env.pop(name, None)
    return env


def quantity_bytes(quantity: str | int) -> int:
    text = str(quantity)
    number = text.rstrip("KMGTikmgt")
    return int(float(number) * QUANTITY_SUFFIXES[text[len(number) :]])


def downward_value(container: dict[str, Any], source: dict[str, Any]) -> str:
    """What the kubelet puts in a variable set from the Downward API (resourceFieldRef only)."""
    ref = source["resourceFieldRef"]
    assert ref["containerName"] == container["name"], ref
    section, resource = ref["resource"].split(".")
    value = quantity_bytes(container["resources"][section][resource])
    return str(value // quantity_bytes(ref.get("divisor", "1")))


def container_env(container: dict[str, Any], overrides: dict[str, str]) -> dict[str, str]:
    env = base_env()
    for item in container.get("env", []):
        env[item["name"]] = downward_value(container, item["valueFrom"]) if "valueFrom" in item else item["value"]
    env.update(overrides)
    return env


def mount_volumes(
    pod: dict[str, Any],
    container: dict[str, Any],
    docs: list[dict[str, Any]],
    root: Path,
    secrets: dict[str, dict[str, bytes]] | None = None,
) -> dict[str, Path]:
    """Map each volumeMount to a local directory; ConfigMap volumes get the rendered files, Secret
    volumes the keys they project from ``secrets`` (name -> key -> bytes), as the kubelet would."""
    volumes = {v["name"]: v for v in pod["volumes"]}
    mapping = {}
    for mount in container["volumeMounts"]:
        local = root / mount["name"]
        local.mkdir(parents=True, exist_ok=True)
        volume = volumes[mount["name"]]
        if "configMap" in volume:
            for key, value in one(docs, "ConfigMap", volume["configMap"]["name"]).get("data", {}).items():
                (local / key).write_text(value)
        elif "secret" in volume:
            data = (secrets or {})[volume["secret"]["secretName"]]
            items = volume["secret"].get("items") or [{"key": k, "path": k} for k in data]
            for item in items:
                (local / item["path"]).write_bytes(data[item["key"]])  # KeyError: the Secret lacks it
        else:
            assert "emptyDir" in volume, volume
        mapping[mount["mountPath"]] = local
    return mapping


def map_paths(arg: str, mounts: dict[str, Path]) -> str:
    """A path inside the pod (or any other argument, unchanged) as this machine sees it."""
    for mount_path, local in mounts.items():
        if arg == mount_path or arg.startswith(mount_path + "/"):
            return str(local) + arg[len(mount_path) :]
    return arg


def serving_line(log: Path) -> dict[str, Any]:
    """The "serving" JSON log line a service prints once it listens."""
    for line in log.read_text().splitlines():
        record = json.loads(line)
        if record.get("message") == "serving":
            return record
    raise AssertionError(f"no serving line in {log}")


def health_status(port: int, service: str, credentials: grpc.ChannelCredentials | None = None) -> int:
    """grpc.health.v1 Check of ``service`` on a loopback port (plaintext without credentials)."""
    target = f"127.0.0.1:{port}"
    with grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target) as channel:
        request = health_pb2.HealthCheckRequest(service=service)
        return health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status


def wait_probe_serving(name: str, process: subprocess.Popen[bytes], log: Path, port: int, service: str) -> None:
    """Wait as the kubelet's gRPC probe would (plaintext, the probe's port and service name) until
    the process reports SERVING; fail at once, with its log, if it exits first."""

    def serving() -> bool:
        assert process.poll() is None, f"{name} exited with code {process.returncode}"
        return health_status(port, service) == health_pb2.HealthCheckResponse.SERVING

    try:
        wait_until(f"{name} to be SERVING", serving, timeout=60, ignore=(grpc.RpcError,))
    except AssertionError as exc:
        raise AssertionError(f"{exc}; its log ends:\n{log.read_text()[-2000:]}") from None


def run_job_container(
    docs: list[dict[str, Any]],
    job: dict[str, Any],
    container: dict[str, Any],
    args: list[str],
    mounts: dict[str, Path],
    root: Path,
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """Run the Job's container command with ``args`` (already mapped to this machine) against a
    stand-in API server that grants exactly what the chart's Role grants (no create). Asserts it
    exits 0; returns its result and the results ConfigMap it stored."""
    results_name = job_args(job)["--results-configmap"]
    (role,) = [r for r in by_kind(docs, "Role") if r["metadata"]["labels"]["app.kubernetes.io/component"] == "pipeline"]
    with FakeKubeApi(allowed_names=set(role["rules"][0]["resourceNames"]), allow_create=False) as api:
        api.precreate(NAMESPACE, results_name)
        env = container_env(
            container, {"KUBECONFIG": str(api.kubeconfig(root, namespace=NAMESPACE)), "TMPDIR": str(mounts["/tmp"])}
        )
        result = subprocess.run(
            [*container["command"], *args],
            env=env,
            cwd=mounts["/tmp"],
            capture_output=True,
            text=True,
            timeout=job["spec"]["activeDeadlineSeconds"],
        )
        assert result.returncode == 0, f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"
        return result, api.configmaps[(NAMESPACE, results_name)]
