"""The Helm chart as tests see it: Helm's own render (helm-python-sdk) of the chart's value sets,
lookups in the rendered objects, and the Kubernetes semantics the checks need (label selectors,
NetworkPolicy admission, the "restricted" Pod Security Standard).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from typing import Any

import helm_python as helm
import yaml
from helm_python import _native

from music_analytics.services.registry import SERVICES
from tests.conftest import ROOT

CHART = ROOT / "charts" / "music-analytics"
VALUE_SETS = {p.name.removesuffix("-values.yaml"): p for p in sorted((CHART / "ci").glob("*-values.yaml"))}
VALUE_SETS["kind"] = ROOT / "k8s" / "music-analytics-kind-values.yaml"
KUBE_VERSIONS = ("1.29", "1.37")  # Chart.yaml kubeVersion >=1.29; the newest the validator knows
RELEASE, NAMESPACE, REVISION = "demo", "analytics", 3
# What a cluster with the Prometheus Operator serves (`helm template --api-versions ...`).
MONITORING_APIS = (
    "monitoring.coreos.com/v1",
    "monitoring.coreos.com/v1/ServiceMonitor",
    "monitoring.coreos.com/v1/PrometheusRule",
)
COMPONENTS = sorted(SERVICES)  # the services as the code defines them: mapreduce, recommendation, userbehavior

# ---------------------------------------------------------------- rendering and lookups


@functools.cache
def chart() -> helm.Chart:
    return helm.Chart.load(CHART)


def load_values(name: str) -> dict[str, Any]:
    return yaml.safe_load(VALUE_SETS[name].read_text()) or {}


def render_manifests(
    values: dict[str, Any],
    revision: int = REVISION,
    name: str = RELEASE,
    namespace: str = NAMESPACE,
    api_versions: Iterable[str] = (),
) -> dict[str, str]:
    """Helm's own render. With api_versions, .Capabilities.APIVersions also has those (the Go SDK's
    option behind `helm template --api-versions`; helm-python-sdk's Chart.render doesn't expose it)."""
    if not api_versions:
        return chart().render(values, name=name, namespace=namespace, revision=revision)
    opts = {"name": name, "namespace": namespace, "revision": revision, "api_versions": list(api_versions)}
    return json.loads(_native.call_string("helm_render", chart()._raw(), json.dumps(values), json.dumps(opts)))


def render_docs(
    values: dict[str, Any],
    revision: int = REVISION,
    name: str = RELEASE,
    namespace: str = NAMESPACE,
    api_versions: Iterable[str] = (),
) -> list[dict[str, Any]]:
    rendered = render_manifests(values, revision, name, namespace, api_versions)
    docs = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


@functools.cache
def _render_set(name: str) -> str:
    return json.dumps(render_docs(load_values(name), api_versions=MONITORING_APIS))


def rendered(name: str) -> list[dict[str, Any]]:
    """Fresh copy of a value set's render on a cluster with the Prometheus Operator's API (cached
    as JSON so tests can't mutate each other's)."""
    return json.loads(_render_set(name))


def by_kind(docs: Iterable[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: Iterable[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def pod_specs(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any], dict[str, str]]]:
    """(owner name, pod spec, pod labels) for every pod the render can create."""
    out = []
    for d in docs:
        if d["kind"] in ("Deployment", "Job"):
            tpl = d["spec"]["template"]
            out.append((f"{d['kind']}/{d['metadata']['name']}", tpl["spec"], tpl["metadata"]["labels"]))
        elif d["kind"] == "Pod":
            out.append((f"Pod/{d['metadata']['name']}", d["spec"], d["metadata"]["labels"]))
    return out


def selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics (matchLabels + matchExpressions)."""
    if selector is None:
        return False
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, vals = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in vals:
            return False
        if op == "NotIn" and labels.get(key) in vals:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def pipeline_job(docs: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The pipeline Job (the chart also has a pre-delete hook Job that cleans up test pods)."""
    (job,) = [
        d
        for d in by_kind(docs, "Job")
        if d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == "pipeline"
    ]
    return job


def deployment_for(docs: list[dict[str, Any]], component: str) -> dict[str, Any]:
    deps = [
        d
        for d in by_kind(docs, "Deployment")
        if d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == component
    ]
    assert len(deps) == 1, component
    return deps[0]


def container_port(container: dict[str, Any], name: str) -> int:
    return next(p["containerPort"] for p in container["ports"] if p["name"] == name)


def env_of(container: dict[str, Any]) -> dict[str, str]:
    """The container's literal environment (variables set from the Downward API are left out)."""
    return {e["name"]: e["value"] for e in container.get("env", []) if "valueFrom" not in e}


def job_args(job: dict[str, Any]) -> dict[str, str | bool]:
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["music-analytics"] and container["args"][0] == "run"
    args, out, i = container["args"][1:], {}, 0
    while i < len(args):
        if i + 1 < len(args) and not args[i + 1].startswith("--"):
            out[args[i]] = args[i + 1]
            i += 2
        else:
            out[args[i]] = True
            i += 1
    return out


def hooks(docs: list[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    return [d for d in docs if event in d["metadata"].get("annotations", {}).get("helm.sh/hook", "").split(",")]


# ---------------------------------------------------------------- Pod Security "restricted"

ALLOWED_VOLUME_TYPES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def assert_restricted(owner: str, pod: dict[str, Any]) -> None:
    """The checks of the "restricted" Pod Security Standard (plus a read-only root filesystem)."""
    psc = pod.get("securityContext", {})
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        assert not pod.get(flag), (owner, flag)
    for vol in pod.get("volumes", []):
        types = set(vol) - {"name"}
        assert types <= ALLOWED_VOLUME_TYPES, (owner, vol)
    for c in pod.get("initContainers", []) + pod["containers"]:
        sc = c.get("securityContext", {})
        where = (owner, c["name"])
        assert sc.get("privileged") in (None, False), where
        assert sc.get("allowPrivilegeEscalation") is False, where
        assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
        assert set(sc.get("capabilities", {}).get("add", [])) <= {"NET_BIND_SERVICE"}, where
        assert (sc.get("runAsNonRoot") if "runAsNonRoot" in sc else psc.get("runAsNonRoot")) is True, where
        assert (sc.get("runAsUser") if "runAsUser" in sc else psc.get("runAsUser", 1)) != 0, where
        seccomp = sc.get("seccompProfile") or psc.get("seccompProfile")
        assert seccomp and seccomp["type"] in ("RuntimeDefault", "Localhost"), where
        assert sc.get("readOnlyRootFilesystem") is True, where
        assert not c.get("ports") or all("hostPort" not in p for p in c["ports"]), where
        assert "procMount" not in sc and "sysctls" not in psc, where


# ---------------------------------------------------------------- NetworkPolicies

MONITORING_NS = {"kubernetes.io/metadata.name": "monitoring"}
KUBE_SYSTEM_NS = {"kubernetes.io/metadata.name": "kube-system"}
OWN_NS = {"kubernetes.io/metadata.name": NAMESPACE}


def port_matches(rule_ports: list[dict[str, Any]] | None, port: int, named: dict[str, int], proto: str) -> bool:
    if not rule_ports:
        return True
    for p in rule_ports:
        if p.get("protocol", "TCP") != proto:
            continue
        value = p.get("port")
        if value is None or value == port or (isinstance(value, str) and named.get(value) == port):
            return True
    return False


def peer_matches(peer: dict[str, Any], labels: dict[str, str], ns_labels: dict[str, str]) -> bool:
    if "ipBlock" in peer:
        return False  # pods are addressed by selectors; ipBlocks are checked separately
    ns_ok = selects(peer["namespaceSelector"], ns_labels) if "namespaceSelector" in peer else ns_labels == OWN_NS
    pod_ok = selects(peer["podSelector"], labels) if "podSelector" in peer else True
    return ns_ok and pod_ok


def allowed(
    policies: list[dict[str, Any]],
    src: tuple[dict[str, str], dict[str, str]],
    dst: tuple[dict[str, str], dict[str, str]],
    port: int,
    named: dict[str, int],
    proto: str = "TCP",
) -> bool:
    """Would a connection src -> dst:port pass every policy (NetworkPolicy union semantics)?"""
    (src_labels, src_ns), (dst_labels, dst_ns) = src, dst
    if src_ns == OWN_NS:
        egress = [
            p
            for p in policies
            if "Egress" in p["spec"]["policyTypes"] and selects(p["spec"]["podSelector"], src_labels)
        ]
        if egress and not any(
            peer_matches(peer, dst_labels, dst_ns) and port_matches(rule.get("ports"), port, named, proto)
            for p in egress
            for rule in p["spec"].get("egress", [])
            for peer in rule.get("to", [])
        ):
            return False
    if dst_ns == OWN_NS:
        ingress = [
            p
            for p in policies
            if "Ingress" in p["spec"]["policyTypes"] and selects(p["spec"]["podSelector"], dst_labels)
        ]
        if ingress and not any(
            peer_matches(peer, src_labels, src_ns) and port_matches(rule.get("ports"), port, named, proto)
            for p in ingress
            for rule in p["spec"].get("ingress", [])
            for peer in rule.get("from", [])
        ):
            return False
    return True
