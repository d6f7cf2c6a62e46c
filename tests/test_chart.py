"""The Helm chart, rendered by Helm's own engine (helm-python-sdk) for every value set in
charts/music-analytics/ci/ plus the kind values, then checked: strict lint, the values schema,
Kubernetes schemas (strict, oldest and newest supported version) and the semantics that make the
system work (probes, addresses, NetworkPolicies, RBAC, Pod Security, monitoring objects).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from music_analytics.services.registry import SERVICES

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "music-analytics"
VALUE_SETS = {p.name.removesuffix("-values.yaml"): p for p in sorted((CHART / "ci").glob("*-values.yaml"))}
VALUE_SETS["kind"] = ROOT / "k8s" / "music-analytics-kind-values.yaml"
KUBE_VERSIONS = ("1.29", "1.37")  # Chart.yaml kubeVersion >=1.29; the newest the validator knows
RELEASE, NAMESPACE, REVISION = "demo", "analytics", 3
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
COMPONENTS = sorted(SERVICES)  # the services as the code defines them: mapreduce, recommendation, userbehavior


# ---------------------------------------------------------------- rendering helpers


@functools.cache
def chart() -> helm.Chart:
    return helm.Chart.load(CHART)


def load_values(name: str) -> dict[str, Any]:
    return yaml.safe_load(VALUE_SETS[name].read_text()) or {}


def render_docs(
    values: dict[str, Any], revision: int = REVISION, name: str = RELEASE, namespace: str = NAMESPACE
) -> list[dict[str, Any]]:
    rendered = chart().render(values, name=name, namespace=namespace, revision=revision)
    docs = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


@functools.cache
def _render_set(name: str) -> str:
    return json.dumps(render_docs(load_values(name)))


def rendered(name: str) -> list[dict[str, Any]]:
    """Fresh copy of a value set's render (cached as JSON so tests can't mutate each other's)."""
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
    return {e["name"]: e["value"] for e in container.get("env", [])}


# ---------------------------------------------------------------- lint and schema


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_lint_strict_clean(name: str):
    for kube in KUBE_VERSIONS:
        report = helm.lint(CHART, load_values(name), strict=True, namespace=NAMESPACE, kube_version=f"v{kube}.0")
        problems = [m for m in report["messages"] if m["severity"] >= 2] + report.get("errors", [])
        assert not problems, f"{name} on {kube}: {problems}"


@pytest.mark.parametrize(
    ("overrides", "why"),
    [
        ({"replicas": 2}, "top-level typo (replicas lives under default)"),
        ({"default": {"replica": 2}}, "typo in default"),
        ({"services": {"mapreduse": {"replicas": 2}}}, "unknown service"),
        ({"services": {"mapreduce": {"grpcport": 1}}}, "case typo in a service key"),
        ({"default": {"replicas": "two"}}, "wrong type"),
        ({"job": {"backofflimit": 1}}, "typo in job"),
        ({"job": {"data": {"source": "s3"}}}, "unknown data source"),
        ({"job": {"data": {"source": "configMap"}}}, "configMap source without a name"),
        ({"job": {"data": {"source": "url"}}}, "url source without a url"),
        ({"job": {"data": {"source": "volume"}}}, "volume source without a volume"),
        ({"job": {"data": {"source": "volume", "volume": {"hostPath": {"path": "/"}}}}}, "hostPath volume"),
        ({"monitoring": {"serviceMonitor": {"enable": True}}}, "typo in monitoring"),
        ({"networkPolicy": {"kubernetesApi": {"cidrs": ["10.0.0.1"]}}}, "CIDR without prefix length"),
        ({"image": {"digest": "latest"}}, "malformed digest"),
    ],
)
def test_schema_rejects_bad_values(overrides: dict[str, Any], why: str):
    with pytest.raises(helm.HelmError):
        chart().validate_schema(overrides)
    # And rendering refuses too (helm install/upgrade/template behave the same).
    with pytest.raises(helm.HelmError):
        chart().render(overrides, name=RELEASE, namespace=NAMESPACE)


def test_set_string_typo_rejected():
    # What a user's `--set` produces.
    with pytest.raises(helm.HelmError):
        chart().render(helm.parse_set_string("services.mapreduce.replica=3"), name=RELEASE, namespace=NAMESPACE)
    # The spelled-right one works (maps, not lists, so --set can reach every service).
    docs = render_docs(helm.parse_set_string("services.mapreduce.replicas=3"))
    assert deployment_for(docs, "mapreduce")["spec"]["replicas"] == 3


def test_every_value_set_and_values_yaml_pass_schema():
    for name in VALUE_SETS:
        chart().validate_schema(load_values(name))
    text = (CHART / "values.yaml").read_text()
    assert text.startswith("# yaml-language-server: $schema=./values.schema.json\n")


def test_schema_forbids_unknown_keys_everywhere():
    """Every object in the schema that lists properties also sets additionalProperties: false."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    loose = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            if "properties" in node and node.get("additionalProperties") is not False and path.count("allOf") == 0:
                loose.append(path)
            for k, v in node.items():
                walk(v, f"{path}/{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}/{i}")

    walk(schema, "#")
    assert not loose, loose


# ---------------------------------------------------------------- Kubernetes schemas


@pytest.mark.parametrize("kube", KUBE_VERSIONS)
@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_manifests_valid_for_kubernetes(name: str, kube: str):
    docs = rendered(name)
    assert docs
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            continue  # no schema in kubernetes-validate; checked field by field below
        kubernetes_validate.validate(doc, kube, strict=True)


def test_labels_on_every_object():
    for name in VALUE_SETS:
        for doc in rendered(name):
            labels = doc["metadata"].get("labels", {})
            for key in ("name", "instance", "version", "component", "part-of", "managed-by"):
                assert f"app.kubernetes.io/{key}" in labels, (name, doc["kind"], doc["metadata"]["name"], key)
            assert labels["helm.sh/chart"] == "music-analytics-0.1.0"
            assert labels["app.kubernetes.io/managed-by"] == "Helm"
            assert len(doc["metadata"]["name"]) <= 63


def test_long_release_names_stay_within_limits():
    rendered_docs = chart().render(
        {}, name="a-very-long-release-name-for-this-chart-x", namespace=NAMESPACE, revision=123456
    )
    for path, text in rendered_docs.items():
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc and isinstance(doc, dict) and "metadata" in doc:
                assert len(doc["metadata"]["name"]) <= 63, doc["metadata"]["name"]


# ---------------------------------------------------------------- services: probes, ports, Services


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_probes_and_ports_match_what_the_services_serve(name: str):
    docs = rendered(name)
    values = load_values(name)
    assert (
        sorted(
            d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
            for d in by_kind(docs, "Deployment")
        )
        == COMPONENTS
    )
    for component, spec in SERVICES.items():
        dep = deployment_for(docs, component)
        pod = dep["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["command"] == ["music-analytics"]
        assert container["args"] == ["serve", component]
        grpc_port, metrics_port = container_port(container, "grpc"), container_port(container, "metrics")
        # The chart's ports are the code's defaults (the ServiceSpec), not a second truth.
        assert (grpc_port, metrics_port) == (spec.grpc_port, spec.metrics_port)
        env = env_of(container)
        assert env["MUSIC_ANALYTICS_GRPC_PORT"] == str(grpc_port)
        assert env["MUSIC_ANALYTICS_METRICS_PORT"] == str(metrics_port)
        # Kubernetes' own <SERVICE>_PORT variables are off, and ours never look like them.
        assert pod["enableServiceLinks"] is False
        assert all(k.startswith("MUSIC_ANALYTICS_") for k in env if k.endswith("_PORT"))
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"] == {"port": grpc_port, "service": spec.full_name}, (component, probe)
        # SIGKILL only after the service's drain + grace period.
        budget = float(env["MUSIC_ANALYTICS_DRAIN_SECONDS"]) + float(env["MUSIC_ANALYTICS_GRACE_SECONDS"])
        assert pod["terminationGracePeriodSeconds"] > budget
        # Annotation-based scraping points at the metrics port.
        annotations = dep["spec"]["template"]["metadata"].get("annotations", {})
        assert annotations.get("prometheus.io/port") == str(metrics_port)
        assert annotations.get("prometheus.io/path") == "/metrics"
        # Replicas, or an HPA instead of them.
        own = {**values.get("default", {}), **values.get("services", {}).get(component, {})}
        hpas = [
            h
            for h in by_kind(docs, "HorizontalPodAutoscaler")
            if h["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
        ]
        if own.get("autoscaling", {}).get("enabled"):
            assert "replicas" not in dep["spec"] and len(hpas) == 1
            assert hpas[0]["spec"]["scaleTargetRef"]["kind"] == "Deployment"
        else:
            assert dep["spec"]["replicas"] == own.get("replicas", 1) and not hpas
        # A PDB that selects exactly this service's pods.
        pdbs = [
            p
            for p in by_kind(docs, "PodDisruptionBudget")
            if selects(p["spec"]["selector"], dep["spec"]["template"]["metadata"]["labels"])
        ]
        assert len(pdbs) == 1


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_services_route_to_the_right_pods(name: str):
    docs = rendered(name)
    pods = by_kind(docs, "Deployment")
    for component in COMPONENTS:
        dep = deployment_for(docs, component)
        labels = dep["spec"]["template"]["metadata"]["labels"]
        (container,) = dep["spec"]["template"]["spec"]["containers"]
        services = [s for s in by_kind(docs, "Service") if selects({"matchLabels": s["spec"]["selector"]}, labels)]
        # Each Service selects only this Deployment's pods.
        for svc in services:
            assert [
                d["metadata"]["name"]
                for d in pods
                if selects({"matchLabels": svc["spec"]["selector"]}, d["spec"]["template"]["metadata"]["labels"])
            ] == [dep["metadata"]["name"]]
        normal = [s for s in services if s["spec"].get("clusterIP") != "None"]
        headless = [s for s in services if s["spec"].get("clusterIP") == "None"]
        assert len(normal) == 1 and len(headless) == 1, component
        assert {p["name"]: p["targetPort"] for p in normal[0]["spec"]["ports"]} == {
            "grpc": "grpc",
            "metrics": "metrics",
        }
        assert {p["name"]: p["port"] for p in normal[0]["spec"]["ports"]} == {
            "grpc": container_port(container, "grpc"),
            "metrics": container_port(container, "metrics"),
        }
        assert [(p["name"], p["port"]) for p in headless[0]["spec"]["ports"]] == [
            ("grpc", container_port(container, "grpc"))
        ]


# ---------------------------------------------------------------- the Job


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


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_job_addresses_match_the_services(name: str):
    docs = rendered(name)
    (job,) = by_kind(docs, "Job")
    args = job_args(job)
    for component in COMPONENTS:
        target = args[f"--{component}"]
        # dns:/// + the headless Service's FQDN, so the client sees every pod.
        assert target.startswith("dns:///"), target
        host, port = target.removeprefix("dns:///").rsplit(":", 1)
        svc_name, ns, svc, domain = host.split(".", 3)
        assert (ns, svc, domain) == (NAMESPACE, "svc", "cluster.local")
        service = one(docs, "Service", svc_name)
        assert service["spec"]["clusterIP"] == "None"
        labels = deployment_for(docs, component)["spec"]["template"]["metadata"]["labels"]
        assert selects({"matchLabels": service["spec"]["selector"]}, labels)
        assert int(port) == next(p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc")
        assert int(port) == SERVICES[component].grpc_port
    assert float(args["--wait-ready"]) >= 60


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_job_files_live_on_mounted_volumes(name: str):
    docs = rendered(name)
    values = load_values(name)
    (job,) = by_kind(docs, "Job")
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    args = job_args(job)
    data_mount = next(m for p, m in mounts.items() if args["--data"].startswith(p + "/"))
    out_mount = next(m for p, m in mounts.items() if args["--out"].startswith(p + "/"))
    assert "emptyDir" in volumes[out_mount["name"]]  # writable although the root filesystem is read-only
    assert "/tmp" in mounts and "emptyDir" in volumes[mounts["/tmp"]["name"]]
    data_volume = volumes[data_mount["name"]]
    relative = args["--data"].removeprefix(data_mount["mountPath"] + "/")
    source = values.get("job", {}).get("data", {}).get("source", "bundled")
    if source == "bundled":
        cm = one(docs, "ConfigMap", data_volume["configMap"]["name"])
        # The bundled sample is the repository's data file, byte for byte.
        assert cm["data"][relative] == (ROOT / "data" / "stream_data.csv").read_text()
    elif source == "configMap":
        assert data_volume["configMap"]["name"] == values["job"]["data"]["configMap"]["name"]
        assert relative == values["job"]["data"]["configMap"]["key"]
    elif source == "volume":
        assert data_volume["persistentVolumeClaim"] == values["job"]["data"]["volume"]["persistentVolumeClaim"]
        assert relative == values["job"]["data"]["volumePath"]
        assert args.get("--strict") is True
    elif source == "url":
        (init,) = pod["initContainers"]
        assert values["job"]["data"]["url"] in init["args"]
        assert args["--data"] in init["args"]  # downloaded to where the pipeline reads it
        assert any(m["name"] == data_mount["name"] and not m.get("readOnly") for m in init["volumeMounts"])


def test_bundled_data_is_a_copy_of_the_repository_data():
    assert (CHART / "files" / "stream_data.csv").read_bytes() == (ROOT / "data" / "stream_data.csv").read_bytes(), (
        "charts/music-analytics/files/stream_data.csv differs from data/stream_data.csv: copy it again"
    )
    # A ConfigMap holds at most 1 MiB.
    assert (CHART / "files" / "stream_data.csv").stat().st_size < 1_000_000


def test_job_reruns_on_every_revision():
    first, second = render_docs({}, revision=4), render_docs({}, revision=5)
    (job4,), (job5,) = by_kind(first, "Job"), by_kind(second, "Job")
    assert job4["metadata"]["name"] != job5["metadata"]["name"]
    spec = job4["spec"]
    assert spec["backoffLimit"] >= 0 and spec["activeDeadlineSeconds"] > 0 and spec["ttlSecondsAfterFinished"] >= 0
    assert spec["template"]["spec"]["restartPolicy"] == "Never"


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_results_configmap_least_privilege(name: str):
    docs = rendered(name)
    (job,) = by_kind(docs, "Job")
    pod = job["spec"]["template"]["spec"]
    args = job_args(job)
    roles, bindings = by_kind(docs, "Role"), by_kind(docs, "RoleBinding")
    assert not by_kind(docs, "ClusterRole") and not by_kind(docs, "ClusterRoleBinding")
    if "--results-configmap" not in args:
        assert not roles and not bindings and pod["automountServiceAccountToken"] is False
        return
    target = args["--results-configmap"]
    cm = one(docs, "ConfigMap", target)
    assert "data" not in cm  # the chart creates it empty; Helm must not own (and reset) the summary
    (role,) = roles
    (rule,) = role["rules"]
    # get/update/patch on that one ConfigMap: no create/list/watch/delete, no other names.
    assert rule == {
        "apiGroups": [""],
        "resources": ["configmaps"],
        "resourceNames": [target],
        "verbs": ["get", "update", "patch"],
    }
    (binding,) = bindings
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": pod["serviceAccountName"], "namespace": NAMESPACE}
    ]
    assert pod["automountServiceAccountToken"] is True


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


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_every_pod_is_restricted(name: str):
    pods = pod_specs(rendered(name))
    assert len(pods) >= 4  # three Deployments and the Job at least
    for owner, pod, _labels in pods:
        assert_restricted(owner, pod)
        if not owner.startswith("Job/"):
            assert pod["automountServiceAccountToken"] is False, owner


def test_service_accounts_have_no_token():
    for sa in by_kind(rendered("default"), "ServiceAccount"):
        assert sa["automountServiceAccountToken"] is False


# ---------------------------------------------------------------- NetworkPolicies

MONITORING_NS = {"kubernetes.io/metadata.name": "monitoring"}
KUBE_SYSTEM_NS = {"kubernetes.io/metadata.name": "kube-system"}
OWN_NS = {"kubernetes.io/metadata.name": NAMESPACE}


def _port_matches(rule_ports: list[dict[str, Any]] | None, port: int, named: dict[str, int], proto: str) -> bool:
    if not rule_ports:
        return True
    for p in rule_ports:
        if p.get("protocol", "TCP") != proto:
            continue
        value = p.get("port")
        if value is None or value == port or (isinstance(value, str) and named.get(value) == port):
            return True
    return False


def _peer_matches(peer: dict[str, Any], labels: dict[str, str], ns_labels: dict[str, str]) -> bool:
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
            _peer_matches(peer, dst_labels, dst_ns) and _port_matches(rule.get("ports"), port, named, proto)
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
            _peer_matches(peer, src_labels, src_ns) and _port_matches(rule.get("ports"), port, named, proto)
            for p in ingress
            for rule in p["spec"].get("ingress", [])
            for peer in rule.get("from", [])
        ):
            return False
    return True


@pytest.mark.parametrize("name", [n for n in sorted(VALUE_SETS) if n != "no-networkpolicy"])
def test_network_policies_allow_exactly_the_used_paths(name: str):
    docs = rendered(name)
    policies = by_kind(docs, "NetworkPolicy")
    pods = pod_specs(docs)
    # Every pod of the release is under a default-deny for both directions.
    for owner, _spec, labels in pods:
        assert any(
            selects(p["spec"]["podSelector"], labels)
            and not p["spec"].get("ingress")
            and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
            and not p["spec"].get("egress")
            for p in policies
        ), owner
    prometheus = ({"app.kubernetes.io/name": "prometheus"}, MONITORING_NS)
    stranger = ({"app": "something-else"}, OWN_NS)
    sources = {owner: (labels, OWN_NS) for owner, _s, labels in pods} | {"prometheus": prometheus, "stranger": stranger}
    expected, actual = set(), set()
    for owner, spec, labels in pods:
        named = {p["name"]: p["containerPort"] for c in spec["containers"] for p in c.get("ports", [])}
        for src_name, src in sources.items():
            for port_name, port in named.items():
                if allowed(policies, src, (labels, OWN_NS), port, named):
                    actual.add((src_name, owner, port_name))
        if owner.startswith("Deployment/"):
            job = next(o for o, _s, lab in pods if lab["app.kubernetes.io/component"] == "pipeline")
            expected |= {(job, owner, "grpc"), ("prometheus", owner, "metrics")}
            expected |= {(o, owner, "grpc") for o, _s, lab in pods if lab["app.kubernetes.io/component"] == "test"}
    assert actual == expected
    # DNS: the Job (and test pods) may resolve names; the services may not open connections at all.
    dns = ({"k8s-app": "kube-dns"}, KUBE_SYSTEM_NS)
    for owner, _spec, labels in pods:
        can_resolve = allowed(policies, (labels, OWN_NS), dns, 53, {}, "UDP")
        assert can_resolve == (not owner.startswith("Deployment/")), owner


@pytest.mark.parametrize("name", [n for n in sorted(VALUE_SETS) if n != "no-networkpolicy"])
def test_job_egress_to_outside_only_when_used(name: str):
    docs = rendered(name)
    values = load_values(name)
    (job,) = by_kind(docs, "Job")
    args = job_args(job)
    labels = job["spec"]["template"]["metadata"]["labels"]
    ip_ports = set()
    for p in by_kind(docs, "NetworkPolicy"):
        if selects(p["spec"]["podSelector"], labels):
            for rule in p["spec"].get("egress", []):
                if any("ipBlock" in peer for peer in rule["to"]):
                    ip_ports |= {port["port"] for port in rule["ports"]}
    needs_api = "--results-configmap" in args
    needs_external = "--pushgateway" in args or values.get("job", {}).get("data", {}).get("source") == "url"
    expected = set()
    if needs_api:
        expected |= set(values.get("networkPolicy", {}).get("kubernetesApi", {}).get("ports", [443, 6443]))
    if needs_external:
        expected |= set(values.get("networkPolicy", {}).get("external", {}).get("ports", [80, 443, 9091]))
    assert ip_ports == expected
    # Services never get egress to addresses.
    for dep in by_kind(docs, "Deployment"):
        dep_labels = dep["spec"]["template"]["metadata"]["labels"]
        for p in by_kind(docs, "NetworkPolicy"):
            if selects(p["spec"]["podSelector"], dep_labels):
                assert not p["spec"].get("egress"), dep["metadata"]["name"]


def test_no_network_policies_when_disabled():
    assert not by_kind(rendered("no-networkpolicy"), "NetworkPolicy")
    assert not by_kind(rendered("no-networkpolicy"), "Pod")  # tests.enabled=false


# ---------------------------------------------------------------- helm test pods


@pytest.mark.parametrize("name", [n for n in sorted(VALUE_SETS) if n != "no-networkpolicy"])
def test_helm_test_pods_check_each_service(name: str):
    docs = rendered(name)
    tests = [d for d in by_kind(docs, "Pod") if d["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"]
    checked = {}
    for pod in tests:
        (c,) = pod["spec"]["containers"]
        assert c["command"] == ["python", "/scripts/grpc-check.py"]
        target, health_name = c["args"]
        host, port = target.rsplit(":", 1)
        svc = one(docs, "Service", host.split(".")[0])
        assert svc["spec"].get("clusterIP") != "None"
        component = svc["metadata"]["labels"]["app.kubernetes.io/component"]
        assert int(port) == SERVICES[component].grpc_port
        checked[component] = health_name
    assert checked == {n: s.full_name for n, s in SERVICES.items()}
    volumes = {v["name"]: v for pod in tests for v in pod["spec"]["volumes"] if "configMap" in v}
    (script_name,) = {v["configMap"]["name"] for v in volumes.values()}
    script = one(docs, "ConfigMap", script_name)
    assert script["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert script["data"]["grpc-check.py"] == (CHART / "files" / "grpc-check.py").read_text()


# ---------------------------------------------------------------- monitoring objects (CRDs: checked by hand)


def test_monitoring_objects():
    docs = rendered("monitoring")
    (sm,) = by_kind(docs, "ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert set(sm["spec"]) == {"selector", "namespaceSelector", "endpoints"}
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint == {"port": "metrics", "path": "/metrics", "interval": "10s", "scheme": "http", "honorLabels": True}
    scraped = [s for s in by_kind(docs, "Service") if selects(sm["spec"]["selector"], s["metadata"]["labels"])]
    # Exactly the three ClusterIP Services, each with a port named like the endpoint.
    assert sorted(s["metadata"]["labels"]["app.kubernetes.io/component"] for s in scraped) == COMPONENTS
    assert all(any(p["name"] == "metrics" for p in s["spec"]["ports"]) for s in scraped)

    (rule,) = by_kind(docs, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    source = yaml.safe_load((CHART / "files" / "prometheus-rules.yaml").read_text())
    assert rule["spec"] == {"groups": source["groups"]}
    for group in rule["spec"]["groups"]:
        assert group["name"] and group["rules"]
        for r in group["rules"]:
            assert set(r) <= {"alert", "record", "expr", "for", "labels", "annotations", "keep_firing_for"}
            assert ("alert" in r) != ("record" in r) and r["expr"]

    dashboards = sorted((CHART / "files" / "dashboards").glob("*.json"))
    cms = [c for c in by_kind(docs, "ConfigMap") if c["metadata"]["labels"].get("grafana_dashboard") == "1"]
    assert len(cms) == len(dashboards)
    contents = {key: json.loads(value) for c in cms for key, value in c["data"].items()}
    assert contents == {p.name: json.loads(p.read_text()) for p in dashboards}
    assert all(c["metadata"]["annotations"]["grafana_folder"] == "music-analytics" for c in cms)


def test_monitoring_off_by_default():
    kinds = {d["kind"] for d in rendered("default")}
    assert not kinds & CRD_KINDS
    assert not [c for c in by_kind(rendered("default"), "ConfigMap") if "grafana_dashboard" in c["metadata"]["labels"]]


def test_notes_give_next_commands():
    notes = chart().render({}, name=RELEASE, namespace=NAMESPACE, revision=REVISION)[
        "music-analytics/templates/NOTES.txt"
    ]
    for component, spec in SERVICES.items():
        assert f"port-forward svc/{RELEASE}-music-analytics-{component} {spec.grpc_port}:grpc" in notes
    assert "grpcurl -plaintext localhost:50051 list" in notes
    assert "grpc.health.v1.Health/Check" in notes
    assert f"logs job/{RELEASE}-music-analytics-run-{REVISION}" in notes
    assert "summary\\.json" in notes and "helm test" in notes
