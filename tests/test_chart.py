"""The Helm chart, rendered by Helm's own engine (helm-python-sdk) for every value set in
charts/music-analytics/ci/ plus the kind values, then checked: strict lint, the values schema,
Kubernetes schemas (strict, oldest and newest supported version) and the semantics that make the
system work (probes, addresses, NetworkPolicies, RBAC, Pod Security, monitoring objects).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import re
import zoneinfo
from pathlib import PurePosixPath
from typing import Any

import helm_python as helm
import kubernetes_validate
import numpy as np
import pyarrow as pa
import pytest
import yaml

from music_analytics.client.cli import build_parser, user_stats_path
from music_analytics.client.sources import FORMATS, EventSource
from music_analytics.services.common.contract import (
    ARTIST_ENTRIES_PER_MESSAGE,
    MAX_PERSONALIZED_N,
    PERSONALIZED_N,
    USERS_PER_MESSAGE,
)
from music_analytics.services.recommendation.model import ALGORITHMS, DEFAULT_ALGORITHM
from music_analytics.services.recommendation.personalized import PlaysCollector, UsersPlays
from music_analytics.services.registry import SERVICES
from tests.support.chart import (
    CHART,
    COMPONENTS,
    KUBE_SYSTEM_NS,
    KUBE_VERSIONS,
    MONITORING_APIS,
    MONITORING_NS,
    NAMESPACE,
    OWN_NS,
    RELEASE,
    REVISION,
    ROOT,
    VALUE_SETS,
    allowed,
    assert_restricted,
    by_kind,
    chart,
    container_port,
    deployment_for,
    env_of,
    hooks,
    job_args,
    load_values,
    one,
    pipeline_job,
    pod_specs,
    port_matches,
    render_docs,
    rendered,
    selects,
)
from tests.support.rendered_pods import quantity_bytes

CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}


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
        ({"job": {"data": {"format": "mp3"}}}, "unknown input format"),
        ({"job": {"data": {"format": "ListenBrainz"}}}, "format in the wrong case"),
        ({"job": {"data": {"formats": "csv"}}}, "typo in job.data"),
        ({"job": {"data": {"user": 7}}}, "user name that is not a string"),
        ({"job": {"timeZone": "Europe/Berlin"}}, "case typo of job.timezone"),
        ({"job": {"timezone": "Europe Berlin"}}, "time zone with a space"),
        ({"job": {"resultsVolume": {"claimName": "keep"}}}, "unknown key in job.resultsVolume"),
        ({"job": {"resultsVolume": {"persistentVolumeClaim": "Kept_Results"}}}, "claim name that is no DNS name"),
        ({"job": {"resultsVolume": {"persistentVolumeClaim": {"claimName": "keep"}}}}, "claim as an object"),
        ({"job": {"personalized": {"artistsPerUser": MAX_PERSONALIZED_N + 1}}}, "more artists than the service gives"),
        ({"job": {"personalized": {"artistsPerUser": -1}}}, "negative artists per user"),
        ({"job": {"personalized": {"artistsPerUser": "10"}}}, "artists per user as a string"),
        ({"job": {"personalized": {"algorithm": "magic"}}}, "unknown recommender"),
        ({"job": {"personalized": {"algorithm": "BM25"}}}, "recommender in the wrong case"),
        ({"job": {"personalized": {"seed": -1}}}, "negative seed"),
        ({"job": {"personalized": {"seed": 2**53}}}, "seed a values file cannot carry exactly"),
        ({"job": {"personalized": {"seed": 1.5}}}, "fractional seed"),
        ({"job": {"personalized": {"n": 5}}}, "artists per user under the CLI's name"),
        ({"job": {"personalised": {"artistsPerUser": 5}}}, "typo of job.personalized"),
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


DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")  # Service names
DNS_1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")  # every other name here
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
# Release names Helm accepts (up to 53 characters, dots allowed), the longest first.
LONG_RELEASES = [
    "analytics-production-eu-west-1-blue-green",  # realistic, yet every Service name from it is > 63
    "a" * 53,
    "x" * 52 + "1",
    "music-analytics-" + "b" * 37,  # contains the chart name: used as is
    "1" * 53,  # starts with a digit
    "a.b." + "c" * 49,  # dots
    "analytics-production-eu-west-1-blue-green-canary-001",
    "analytics-production-eu-west-1-blue-green-canary-002",  # differs only at the end
]
EVERYTHING_ON = {
    "monitoring": {
        "serviceMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True},
        "grafanaDashboards": {"enabled": True},
    },
    "job": {"pushgateway": "http://pushgateway.monitoring.svc:9091"},
    "services": {"recommendation": {"autoscaling": {"enabled": True}}},
}


def assert_names_fit(docs: list[dict[str, Any]]) -> None:
    seen = set()
    for doc in docs:
        kind, name = doc["kind"], doc["metadata"]["name"]
        assert len(name) <= 63, (kind, name, len(name))
        pattern = DNS_1035 if kind == "Service" else DNS_1123_LABEL
        assert pattern.match(name), (kind, name)
        assert (kind, name) not in seen, (kind, name)
        seen.add((kind, name))
        templates = [doc["spec"]["template"]] if kind in ("Deployment", "Job") else []
        for meta in [doc["metadata"], *(t["metadata"] for t in templates)]:
            for key, value in meta.get("labels", {}).items():
                assert len(value) <= 63 and LABEL_VALUE.match(value), (kind, name, key, value)
        if kind == "Job":
            # Kubernetes labels the Job's pods with its name (batch.kubernetes.io/job-name).
            assert len(name) <= 63


@pytest.mark.parametrize("release", LONG_RELEASES)
def test_names_fit_for_any_release_name(release: str):
    helm.validate_release_name(release)  # Helm would accept it
    docs = render_docs(EVERYTHING_ON, name=release, revision=123456, api_versions=MONITORING_APIS)
    assert {"Service", "Job", "ServiceMonitor", "HorizontalPodAutoscaler"} <= {d["kind"] for d in docs}
    assert_names_fit(docs)
    # The longest suffix of all, a headless Service of the longest service name, is there.
    assert [d for d in by_kind(docs, "Service") if d["metadata"]["name"].endswith("-recommendation-headless")]
    # References still point at what exists: the Job's targets and the test pods' Services.
    job = pipeline_job(docs)
    for component in COMPONENTS:
        host = job_args(job)[f"--{component}"].removeprefix("dns:///").split(".")[0]
        one(docs, "Service", host)


def test_names_fit_with_overrides():
    for values in ({"fullnameOverride": "f" * 40}, {"nameOverride": "n" * 40}):
        assert_names_fit(render_docs({**EVERYTHING_ON, **values}, name="r" * 53, api_versions=MONITORING_APIS))


def test_long_release_names_get_distinct_names():
    """Cut names carry a hash of the full name: releases that differ only past the cut stay apart."""
    a, b = LONG_RELEASES[-2:]
    names_a = {(d["kind"], d["metadata"]["name"]) for d in render_docs({}, name=a)}
    names_b = {(d["kind"], d["metadata"]["name"]) for d in render_docs({}, name=b)}
    assert not names_a & names_b


def test_short_names_unchanged():
    docs = render_docs({}, name="demo")
    assert one(docs, "Service", "demo-music-analytics-recommendation-headless")
    assert pipeline_job(docs)["metadata"]["name"] == f"demo-music-analytics-run-{REVISION}"
    docs = render_docs({}, name="music-analytics")
    assert one(docs, "Deployment", "music-analytics-mapreduce")
    # The longest name that still fits as it is (39 characters) is kept, the next one is cut.
    kept = "k" * (39 - len("-music-analytics"))
    assert one(render_docs({}, name=kept), "Service", f"{kept}-music-analytics-recommendation-headless")
    cut = [d["metadata"]["name"] for d in by_kind(render_docs({}, name=kept + "k"), "Service")]
    assert not [n for n in cut if n.startswith(kept + "k-music-analytics")]


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


def test_shutdown_delay_before_drain_and_covered_by_the_grace_period():
    """After SIGTERM the service keeps serving (NOT_SERVING) while endpoint removal propagates,
    then drains; SIGKILL (terminationGracePeriodSeconds) comes only after all of it."""
    for values, expected in [
        ({}, {"mapreduce": (5, 10, 20), "recommendation": (5, 10, 20), "userbehavior": (5, 10, 20)}),
        (
            {
                "default": {"shutdownDelaySeconds": 8},
                "services": {"mapreduce": {"shutdownDelaySeconds": 0, "graceSeconds": 3}},
            },
            {"mapreduce": (0, 10, 3), "recommendation": (8, 10, 20), "userbehavior": (8, 10, 20)},
        ),
    ]:
        docs = render_docs(values)
        for component, (delay, drain, grace) in expected.items():
            pod = deployment_for(docs, component)["spec"]["template"]["spec"]
            env = env_of(pod["containers"][0])
            assert env["MUSIC_ANALYTICS_SHUTDOWN_DELAY_SECONDS"] == str(delay)
            assert env["MUSIC_ANALYTICS_DRAIN_SECONDS"] == str(drain)
            assert env["MUSIC_ANALYTICS_GRACE_SECONDS"] == str(grace)
            assert pod["terminationGracePeriodSeconds"] == delay + drain + grace + 5
    assert chart().values["default"]["shutdownDelaySeconds"] == 5
    with pytest.raises(helm.HelmError):
        chart().validate_schema({"default": {"shutdownDelaySeconds": -1}})


def test_streams_and_call_memory_limits_reach_the_services():
    """maxStreams becomes MUSIC_ANALYTICS_MAX_STREAMS; the container's memory limit reaches the
    server through the Downward API (in bytes), and maxCallBytes, when set, overrides the server's
    default of half that limit."""
    values = {
        "default": {"maxStreams": 8},
        "services": {"mapreduce": {"maxStreams": 2, "maxCallBytes": 3 * 2**30}, "userbehavior": {"maxCallBytes": 0}},
    }
    for docs, expected in [
        (render_docs({}), {c: ("16", None) for c in COMPONENTS}),
        (
            render_docs(values),
            {"mapreduce": ("2", str(3 * 2**30)), "userbehavior": ("8", None), "recommendation": ("8", None)},
        ),
    ]:
        for component, (streams, call_bytes) in expected.items():
            (container,) = deployment_for(docs, component)["spec"]["template"]["spec"]["containers"]
            env = env_of(container)
            assert env["MUSIC_ANALYTICS_MAX_STREAMS"] == streams, component
            # A whole number of bytes, never Helm's float rendering (3.221225472e+09).
            assert env.get("MUSIC_ANALYTICS_MAX_CALL_BYTES") == call_bytes, component
            assert "MUSIC_ANALYTICS_WORKERS" not in env
            (memory,) = [e for e in container["env"] if e["name"] == "MUSIC_ANALYTICS_MEMORY_LIMIT_BYTES"]
            assert memory["valueFrom"] == {
                "resourceFieldRef": {"containerName": container["name"], "resource": "limits.memory", "divisor": "1"}
            }
            assert container["resources"]["limits"]["memory"]
    for bad in ({"maxStreams": 0}, {"maxStreams": "16"}, {"maxCallBytes": -1}, {"maxCallBytes": "1Gi"}):
        with pytest.raises(helm.HelmError):
            chart().validate_schema({"default": bad})
        with pytest.raises(helm.HelmError):
            chart().validate_schema({"services": {"recommendation": bad}})


# ---------------------------------------------------------------- the Job


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_job_addresses_match_the_services(name: str):
    docs = rendered(name)
    job = pipeline_job(docs)
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
        # The Job waits for as many replicas as the Deployment runs (the headless name lists
        # only Ready pods, so it could otherwise start with fewer shards than pods).
        expected = dict(item.split("=") for item in args["--expect-replicas"].split(","))
        deployment = deployment_for(docs, component)
        hpas = [h for h in by_kind(docs, "HorizontalPodAutoscaler")
                if h["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]]  # fmt: skip
        runs = hpas[0]["spec"]["minReplicas"] if hpas else deployment["spec"]["replicas"]
        assert int(expected[component]) == runs, (component, expected)
    assert float(args["--wait-ready"]) >= 60


def test_job_expects_the_autoscaler_minimum_when_autoscaling():
    docs = render_docs({"default": {"autoscaling": {"enabled": True, "minReplicas": 3}},
                        "services": {"recommendation": {"autoscaling": {"minReplicas": 2}}}})  # fmt: skip
    args = job_args(pipeline_job(docs))
    assert args["--expect-replicas"] == "mapreduce=3,userbehavior=3,recommendation=2"


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_job_files_live_on_mounted_volumes(name: str):
    docs = rendered(name)
    values = load_values(name)
    job = pipeline_job(docs)
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    args = job_args(job)
    data_mount = next(m for p, m in mounts.items() if args["--data"].startswith(p + "/"))
    out_mount = next(m for p, m in mounts.items() if args["--out"].startswith(p + "/"))
    # Writable although the root filesystem is read-only: an emptyDir, or the claim asked for.
    claim = values.get("job", {}).get("resultsVolume", {}).get("persistentVolumeClaim")
    if claim:
        assert volumes[out_mount["name"]]["persistentVolumeClaim"] == {"claimName": claim}
    else:
        assert "emptyDir" in volumes[out_mount["name"]]
    assert not out_mount.get("readOnly")
    # The per-user statistics go to the same writable volume.
    assert args["--user-stats"].startswith(out_mount["mountPath"] + "/")
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
    job4, job5 = pipeline_job(first), pipeline_job(second)
    assert job4["metadata"]["name"] != job5["metadata"]["name"]
    spec = job4["spec"]
    assert spec["backoffLimit"] >= 0 and spec["activeDeadlineSeconds"] > 0 and spec["ttlSecondsAfterFinished"] >= 0
    assert spec["template"]["spec"]["restartPolicy"] == "Never"


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_job_fails_at_once_when_retrying_cannot_help(name: str):
    """Exit 2 (bad input), 3 (bad row, --strict) and 4 (results not stored) fail the Job without
    retries; anything else (1: a service unreachable; a crash) is retried up to backoffLimit."""
    job = pipeline_job(rendered(name))
    spec = job["spec"]
    assert spec["template"]["spec"]["restartPolicy"] == "Never"  # podFailurePolicy needs it
    rules = spec["podFailurePolicy"]["rules"]
    fail = [r for r in rules if r["action"] == "FailJob"]
    assert fail == [
        {"action": "FailJob", "onExitCodes": {"containerName": "pipeline", "operator": "In", "values": [2, 3, 4]}}
    ]
    assert {c["name"] for c in spec["template"]["spec"]["containers"]} == {"pipeline"}
    # No rule counts exit code 1 out of the retries, or fails on it.
    assert not [r for r in rules if "onExitCodes" in r and 1 in r["onExitCodes"]["values"]]
    assert spec["backoffLimit"] >= 1
    if "--results-configmap" not in job_args(job):
        assert load_values(name)["job"]["results"]["configMap"] is False


@pytest.mark.parametrize(("size", "expected"), [(None, "1Gi"), ("2Gi", "2Gi")])
def test_results_volume_sized_from_values(size: str | None, expected: str):
    values = {} if size is None else {"job": {"resultsVolume": {"sizeLimit": size}}}
    job = pipeline_job(render_docs(values))
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    out = job_args(job)["--out"]
    mount = next(m for m in container["volumeMounts"] if out.startswith(m["mountPath"] + "/"))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["emptyDir"]["sizeLimit"] == expected
    with pytest.raises(helm.HelmError):
        chart().validate_schema({"job": {"resultsVolume": {"sizeLimit": "lots"}}})


def parsed_job_command(job: dict[str, Any]) -> argparse.Namespace:
    """The Job's arguments as the client's own parser reads them."""
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["music-analytics"]
    return build_parser().parse_args(container["args"])


def results_volume(job: dict[str, Any]) -> dict[str, Any]:
    """The volume the Job writes its results JSON to."""
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    out = parsed_job_command(job).out
    mount = next(m for m in container["volumeMounts"] if out.startswith(m["mountPath"] + "/"))
    return next(v for v in pod["volumes"] if v["name"] == mount["name"])


def results_volume_mount_path(job: dict[str, Any]) -> str:
    (container,) = job["spec"]["template"]["spec"]["containers"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == results_volume(job)["name"]]
    return mount["mountPath"]


def test_job_listening_options_default():
    """UTC, the format told from the content, no --user, and the per-user file written beside the
    results JSON, on the same volume."""
    job = pipeline_job(render_docs({}))
    args = parsed_job_command(job)
    assert (args.timezone, args.format, args.user) == ("UTC", None, None)
    assert args.user_stats == "/work/results/run_grpc_metrics.users.jsonl"
    assert PurePosixPath(args.user_stats).parent == PurePosixPath(args.out).parent
    # The path the chart passes is the one the client would choose by itself beside --out.
    assert user_stats_path(args.out, None) == user_stats_path(args.out, args.user_stats)
    assert chart().values["job"]["timezone"] == "UTC"
    assert chart().values["job"]["data"]["format"] == "" and chart().values["job"]["data"]["user"] == ""


@pytest.mark.parametrize(
    ("timezone", "data_format", "user"),
    [
        ("Europe/Berlin", "listenbrainz", "rob"),
        ("America/Argentina/Buenos_Aires", "lastfm-scrobbles", '-dash, "quoted" user: name #1 ünï'),
        ("Etc/GMT+5", "spotify", "123"),
        ("UTC", "csv", "-rob"),
    ],
)
def test_job_listening_options_as_given(timezone: str, data_format: str, user: str):
    """Each value reaches the client as given, whatever its characters: a user name starting with
    "-", holding quotes, a colon or digits only still arrives as the name, as a string."""
    values = {"job": {"timezone": timezone, "data": {"format": data_format, "user": user}}}
    docs = render_docs(values)
    job = pipeline_job(docs)
    args = parsed_job_command(job)
    assert (args.timezone, args.format, args.user) == (timezone, data_format, user)
    assert args.user_stats == "/work/results/run_grpc_metrics.users.jsonl"
    for kube in KUBE_VERSIONS:
        kubernetes_validate.validate(job, kube, strict=True)


def test_format_values_are_the_formats_the_client_reads():
    """Every format of listening events the client reads, and only those: the Job runs `run`, which
    refuses a file of play counts (it has no songs or times to analyse)."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    allowed_formats = schema["properties"]["job"]["properties"]["data"]["properties"]["format"]["enum"]
    events = [f for f in FORMATS if EventSource(format=f, files=[], total_bytes=0).kind == "events"]
    assert events
    assert sorted(allowed_formats) == sorted(["", *events])
    for data_format in events:
        assert parsed_job_command(pipeline_job(render_docs({"job": {"data": {"format": data_format}}}))).format == (
            data_format
        )


def test_timezone_schema_accepts_every_iana_zone():
    """The schema's pattern against the zone database (Python's zoneinfo, the one the client loads
    zones from), then Helm's own validator on names of every shape."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    pattern = re.compile(schema["properties"]["job"]["properties"]["timezone"]["pattern"])
    zones = zoneinfo.available_timezones()
    assert len(zones) > 300 and "Europe/Berlin" in zones
    assert not sorted(z for z in zones if not pattern.search(z))
    for name in ("UTC", "Europe/Berlin", "America/Argentina/Buenos_Aires", "America/Port-au-Prince", "Etc/GMT-14",
                 "EST5EDT", "GMT0"):  # fmt: skip
        chart().validate_schema({"job": {"timezone": name}})


@pytest.mark.parametrize(
    "timezone", ["", "Europe/", "/Europe/Berlin", "Europe//Berlin", "../../etc/passwd", "-UTC", "UTC\n", "Z" * 65]
)
def test_timezone_schema_refuses_what_is_no_zone_name(timezone: str):
    with pytest.raises(helm.HelmError, match="/job/timezone"):
        chart().validate_schema({"job": {"timezone": timezone}})


def test_bad_format_is_named_by_the_schema():
    with pytest.raises(helm.HelmError, match="/job/data/format") as failure:
        chart().render({"job": {"data": {"format": "itunes"}}}, name=RELEASE, namespace=NAMESPACE)
    assert "listenbrainz" in str(failure.value)  # the allowed values are listed


# ---------------------------------------------------------------- personalized artists


def personalized_args(values: dict[str, Any]) -> tuple[int, str, int]:
    """(artists per user, recommender, seed) as the client reads the rendered Job's arguments."""
    job = pipeline_job(render_docs(values))
    for kube in KUBE_VERSIONS:
        kubernetes_validate.validate(job, kube, strict=True)
    args = parsed_job_command(job)
    return args.personalized_n, args.recommender, args.seed


def test_personalized_defaults_are_the_services():
    """By default the Job asks for the contract's number of artists and leaves the algorithm to the
    service (no --recommender: a newer service's default is taken without a chart change)."""
    (container,) = pipeline_job(render_docs({}))["spec"]["template"]["spec"]["containers"]
    assert "--recommender" not in container["args"]
    assert personalized_args({}) == (PERSONALIZED_N, "", 0)
    defaults = build_parser().parse_args(["run", "--data", "events.csv"])
    assert personalized_args({}) == (defaults.personalized_n, defaults.recommender, defaults.seed)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_personalized_values_reach_the_job(algorithm: str):
    # The largest seed the schema allows, from a values file as Helm reads it (numbers as floats):
    # it must arrive digit for digit, not as 9.007199254740991e+15.
    values = helm.values_from_yaml(
        f"job:\n  personalized:\n    artistsPerUser: {MAX_PERSONALIZED_N}\n"
        f"    algorithm: {algorithm}\n    seed: {2**53 - 1}\n"
    )
    assert personalized_args(values) == (MAX_PERSONALIZED_N, algorithm, 2**53 - 1)
    assert personalized_args({"job": {"personalized": {"seed": 12_345_678}}}) == (PERSONALIZED_N, "", 12_345_678)


def test_personalized_artists_off():
    """0 turns them off: the client then asks UserBehavior for no plays per artist at all."""
    assert personalized_args({"job": {"personalized": {"artistsPerUser": 0}}}) == (0, "", 0)
    assert personalized_args(helm.parse_set_string("job.personalized.artistsPerUser=0")) == (0, "", 0)


def test_personalized_schema_is_the_services_contract():
    schema = json.loads((CHART / "values.schema.json").read_text())
    own = schema["properties"]["job"]["properties"]["personalized"]["properties"]
    assert own["algorithm"]["enum"] == ["", *ALGORITHMS]
    assert (own["artistsPerUser"]["minimum"], own["artistsPerUser"]["maximum"]) == (0, MAX_PERSONALIZED_N)
    assert chart().values["job"]["personalized"] == {"artistsPerUser": PERSONALIZED_N, "algorithm": "", "seed": 0}
    # What values.yaml says the empty algorithm means is what the service trains.
    assert f"Empty: the service's default, {DEFAULT_ALGORITHM}." in (CHART / "values.yaml").read_text()
    with pytest.raises(helm.HelmError, match="/job/personalized/algorithm") as failure:
        chart().render({"job": {"personalized": {"algorithm": "magic"}}}, name=RELEASE, namespace=NAMESPACE)
    assert "bm25" in str(failure.value)  # the allowed values are listed


def test_values_yaml_keys_read_the_same_in_helm():
    """Helm reads values files as YAML 1.1, where keys such as n, y, on and off are booleans: such a
    key in values.yaml would reach the templates as "false" or "true" and fail the schema."""

    def keys(node: Any, path: str = "") -> set[str]:
        if not isinstance(node, dict):
            return set()
        return {f"{path}/{k}" for k in node} | {p for k, v in node.items() for p in keys(v, f"{path}/{k}")}

    text = (CHART / "values.yaml").read_text()
    assert keys(helm.values_from_yaml(text)) == keys(yaml.safe_load(text))
    assert keys(helm.values_from_yaml("n: 1\n")) == {"/false"}  # the trap this guards against


def test_recommendation_service_gets_its_own_resources():
    """The Recommendation service trains on every user's plays in one call, on as many threads as
    its CPU limit: its own requests and limits, while the other services keep default.resources."""
    docs = render_docs({})
    default = chart().values["default"]["resources"]
    own = chart().values["services"]["recommendation"]["resources"]
    for component in COMPONENTS:
        (container,) = deployment_for(docs, component)["spec"]["template"]["spec"]["containers"]
        assert container["resources"] == (own if component == "recommendation" else default), component
    assert own == {"requests": {"cpu": "500m", "memory": "256Mi"}, "limits": {"cpu": "2", "memory": "1Gi"}}
    assert "cpu" not in default["limits"]


def test_recommendation_budget_admits_every_users_plays():
    """The per-call budget the chart's memory limit gives the Recommendation service by default
    (half the limit) admits twice the plays of some 10M events: 10M (user, artist) pairs, 50 for
    each of 200k users over 20k artists, in messages shaped as UserBehavior sends them (each
    naming every artist, the most a message can cost), by the service's own accounting."""
    (container,) = deployment_for(render_docs({}), "recommendation")["spec"]["template"]["spec"]["containers"]
    assert "MUSIC_ANALYTICS_MAX_CALL_BYTES" not in env_of(container)  # the server's default: half the limit
    budget = quantity_bytes(container["resources"]["limits"]["memory"]) // 2
    users, per_user = 200_000, 50
    artists = pa.array([f"artist-{a:06d}" for a in range(20_000)])
    per_message = min(USERS_PER_MESSAGE, ARTIST_ENTRIES_PER_MESSAGE // per_user)
    rng = np.random.default_rng(0)
    collector = PlaysCollector()
    for lo in range(0, users, per_message):
        count = min(per_message, users - lo)
        collector.add(
            UsersPlays(
                user_ids=pa.array([f"user-{u:08d}" for u in range(lo, lo + count)]),
                ends=(np.arange(1, count + 1) * per_user).astype(np.uint32),
                artists=artists,
                artist_idx=rng.integers(0, len(artists), count * per_user).astype(np.uint32),
                plays=np.ones(count * per_user, dtype=np.uint32),
            )
        )
    assert collector.entries == users * per_user
    assert collector.nbytes * collector.peak_factor <= budget, (collector.nbytes, budget)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        # One key of the service's own: the rest of its resources stay.
        (
            "services.recommendation.resources.limits.memory=2Gi",
            {"requests": {"cpu": "500m", "memory": "256Mi"}, "limits": {"cpu": "2", "memory": "2Gi"}},
        ),
        # null drops a key (no CPU limit: the service then uses every core of the node).
        (
            "services.recommendation.resources.limits.cpu=null",
            {"requests": {"cpu": "500m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
        ),
        # default.resources reaches the keys the service does not set itself, not the ones it does.
        (
            "default.resources.requests.ephemeral-storage=1Gi,default.resources.limits.memory=3Gi",
            {
                "requests": {"cpu": "500m", "memory": "256Mi", "ephemeral-storage": "1Gi"},
                "limits": {"cpu": "2", "memory": "1Gi"},
            },
        ),
    ],
)
def test_recommendation_resources_override(values: str, expected: dict[str, Any]):
    docs = render_docs(helm.parse_set_string(values))
    (container,) = deployment_for(docs, "recommendation")["spec"]["template"]["spec"]["containers"]
    assert container["resources"] == expected
    # The server's per-call budget follows the limit it really gets (the Downward API's value).
    (memory,) = [e for e in container["env"] if e["name"] == "MUSIC_ANALYTICS_MEMORY_LIMIT_BYTES"]
    assert memory["valueFrom"]["resourceFieldRef"]["resource"] == "limits.memory"
    for kube in KUBE_VERSIONS:
        kubernetes_validate.validate(deployment_for(docs, "recommendation"), kube, strict=True)
    # The other services are untouched by a change to the Recommendation service's own resources.
    if values.startswith("services."):
        (other,) = deployment_for(docs, "mapreduce")["spec"]["template"]["spec"]["containers"]
        assert other["resources"] == chart().values["default"]["resources"]


def test_results_volume_on_a_claim():
    """With a claim the results and the per-user file land on it (no emptyDir, no size limit of
    ours), the Job stays restricted and valid, and NOTES says how to copy the file out."""
    values = {"job": {"resultsVolume": {"persistentVolumeClaim": "analytics-results"}}}
    docs = render_docs(values)
    job = pipeline_job(docs)
    args = parsed_job_command(job)
    volume = results_volume(job)
    assert volume == {"name": volume["name"], "persistentVolumeClaim": {"claimName": "analytics-results"}}
    (container,) = job["spec"]["template"]["spec"]["containers"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    assert not mount.get("readOnly")
    for path in (args.out, args.user_stats):
        assert path.startswith(mount["mountPath"] + "/"), path
    assert_restricted("Job", job["spec"]["template"]["spec"])
    for kube in KUBE_VERSIONS:
        kubernetes_validate.validate(job, kube, strict=True)
    # Without the claim: the emptyDir as before.
    assert "emptyDir" in results_volume(pipeline_job(render_docs({})))


def copy_pod_from_notes(notes: str) -> tuple[dict[str, Any], list[str]]:
    """The Pod manifest NOTES gives to kubectl apply, and the kubectl commands after it."""
    _, _, rest = notes.partition(" apply -f - <<'EOF'\n")
    assert rest, "no copy-out pod in NOTES"
    manifest, _, after = rest.partition("\nEOF\n")
    block = after.split("\n\n", 1)[0]  # the commands up to the next section
    return yaml.safe_load(manifest), [line.strip() for line in block.splitlines()]


def test_notes_tell_how_to_copy_the_results_off_the_claim():
    values = {"job": {"resultsVolume": {"persistentVolumeClaim": "analytics-results"}}}
    rendered_files = chart().render(values, name=RELEASE, namespace=NAMESPACE, revision=REVISION)
    notes = rendered_files["music-analytics/templates/NOTES.txt"]
    job = pipeline_job(render_docs(values))
    args = parsed_job_command(job)
    pod, commands = copy_pod_from_notes(notes)
    # A Pod the API server accepts under the "restricted" standard, in the release's namespace,
    # mounting the claim read-only where the Job wrote to it, as the Job's group.
    for kube in KUBE_VERSIONS:
        kubernetes_validate.validate(pod, kube, strict=True)
    assert_restricted("copy pod", pod["spec"])
    assert pod["spec"]["securityContext"]["fsGroup"] == job["spec"]["template"]["spec"]["securityContext"]["fsGroup"]
    (volume,) = pod["spec"]["volumes"]
    assert volume["persistentVolumeClaim"] == {"claimName": "analytics-results", "readOnly": True}
    (container,) = pod["spec"]["containers"]
    assert container["image"] == job["spec"]["template"]["spec"]["containers"][0]["image"]
    (mount,) = container["volumeMounts"]
    assert mount["name"] == volume["name"] and mount["readOnly"] is True
    assert mount["mountPath"] == results_volume_mount_path(job)
    assert len(pod["metadata"]["name"]) <= 63
    name = pod["metadata"]["name"]
    assert f"kubectl -n {NAMESPACE} apply -f - <<'EOF'" in notes
    copied = [c.split()[4].removeprefix(f"{name}:") for c in commands if c.startswith(f"kubectl -n {NAMESPACE} cp ")]
    # Both files the Job writes, from where it writes them.
    assert sorted(copied) == sorted([args.out, args.user_stats])
    assert commands[0] == f"kubectl -n {NAMESPACE} wait --for=condition=Ready pod/{name} --timeout=120s"
    assert commands[-1] == f"kubectl -n {NAMESPACE} delete pod {name}"


def test_notes_say_the_per_user_file_goes_with_the_pod_without_a_claim():
    notes = chart().render({}, name=RELEASE, namespace=NAMESPACE, revision=REVISION)[
        "music-analytics/templates/NOTES.txt"
    ]
    assert "<<'EOF'" not in notes
    assert "run_grpc_metrics.users.jsonl" in notes and "job.resultsVolume.persistentVolumeClaim" in notes


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_results_configmap_least_privilege(name: str):
    docs = rendered(name)
    job = pipeline_job(docs)
    pod = job["spec"]["template"]["spec"]
    args = job_args(job)
    pipeline = {"app.kubernetes.io/component": "pipeline"}
    roles = [r for r in by_kind(docs, "Role") if selects({"matchLabels": pipeline}, r["metadata"]["labels"])]
    bindings = [b for b in by_kind(docs, "RoleBinding") if selects({"matchLabels": pipeline}, b["metadata"]["labels"])]
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
        assert can_resolve == (labels["app.kubernetes.io/component"] in ("pipeline", "test")), owner


def ip_egress(docs: list[dict[str, Any]], labels: dict[str, str]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(ipBlock, rule) for every address-based egress peer that applies to pods with these labels."""
    return [
        (peer["ipBlock"], rule)
        for p in by_kind(docs, "NetworkPolicy")
        if selects(p["spec"]["podSelector"], labels)
        for rule in p["spec"].get("egress", [])
        for peer in rule["to"]
        if "ipBlock" in peer
    ]


def reaches_address(docs: list[dict[str, Any]], labels: dict[str, str], address: str, port: int) -> bool:
    for block, rule in ip_egress(docs, labels):
        net = ipaddress.ip_network(block["cidr"])
        ip = ipaddress.ip_address(address)
        if ip.version != net.version or ip not in net:
            continue
        if any(ip in ipaddress.ip_network(e) for e in block.get("except", [])):
            continue
        if port_matches(rule.get("ports"), port, {}, "TCP"):
            return True
    return False


@pytest.mark.parametrize("name", [n for n in sorted(VALUE_SETS) if n != "no-networkpolicy"])
def test_job_egress_to_outside_only_when_used(name: str):
    docs = rendered(name)
    values = load_values(name)
    job = pipeline_job(docs)
    args = job_args(job)
    labels = job["spec"]["template"]["metadata"]["labels"]
    ip_ports = {port["port"] for _block, rule in ip_egress(docs, labels) for port in rule["ports"]}
    needs_api = "--results-configmap" in args
    needs_external = values.get("job", {}).get("data", {}).get("source") == "url"
    expected = set()
    if needs_api:
        expected |= set(values.get("networkPolicy", {}).get("kubernetesApi", {}).get("ports", [443, 6443]))
    if needs_external:
        expected |= set(values.get("networkPolicy", {}).get("external", {}).get("ports", [80, 443]))
    assert ip_ports == expected
    # Services never get egress to addresses.
    for dep in by_kind(docs, "Deployment"):
        dep_labels = dep["spec"]["template"]["metadata"]["labels"]
        for p in by_kind(docs, "NetworkPolicy"):
            if selects(p["spec"]["podSelector"], dep_labels):
                assert not p["spec"].get("egress"), dep["metadata"]["name"]


# Where an API server can be, as the Job's pod sees it after Service translation: kind's
# control-plane node on Docker's default network, on a Docker network that fell back to 192.168,
# on podman's network, an IPv6 kind network; and a managed API endpoint on 443.
API_SERVER_ADDRESSES = [
    ("172.18.0.2", 6443),
    ("192.168.49.2", 6443),
    ("10.89.0.2", 6443),
    ("fc00:f853:ccd:e793::2", 6443),
    ("10.96.0.1", 443),
    ("34.118.224.1", 443),
]


@pytest.mark.parametrize("name", ["default", "kind", "monitoring"])
def test_job_reaches_the_api_server_whatever_the_node_network(name: str):
    docs = rendered(name)
    job = pipeline_job(docs)
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert "--results-configmap" in job_args(job)
    for address, port in API_SERVER_ADDRESSES:
        assert reaches_address(docs, labels, address, port), (address, port)
    # Only the API ports, not everything: e.g. no plain HTTP, no databases.
    assert not reaches_address(docs, labels, "192.168.49.2", 80)
    assert not reaches_address(docs, labels, "10.89.0.2", 5432)
    # The services get no address-based egress at all.
    for dep in by_kind(docs, "Deployment"):
        assert not reaches_address(docs, dep["spec"]["template"]["metadata"]["labels"], "10.89.0.2", 6443)


@pytest.mark.parametrize("name", ["kind", "monitoring"])
def test_job_reaches_the_pushgateway_by_labels(name: str):
    docs = rendered(name)
    job = pipeline_job(docs)
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert "--pushgateway" in job_args(job)
    policies = by_kind(docs, "NetworkPolicy")
    # The prometheus-community pushgateway chart's pods, in namespace monitoring.
    pushgateway = (
        {"app.kubernetes.io/name": "prometheus-pushgateway", "app.kubernetes.io/instance": "prometheus-pushgateway"},
        MONITORING_NS,
    )
    assert allowed(policies, (labels, OWN_NS), pushgateway, 9091, {})
    assert not allowed(policies, (labels, OWN_NS), pushgateway, 9090, {})
    # Another pod of the monitoring namespace, or a pushgateway-named pod elsewhere: no.
    assert not allowed(policies, (labels, OWN_NS), ({"app.kubernetes.io/name": "grafana"}, MONITORING_NS), 9091, {})
    assert not allowed(policies, (labels, OWN_NS), (pushgateway[0], {"kubernetes.io/metadata.name": "x"}), 9091, {})
    # And not through an address range (that depends on how the CNI sees pod traffic).
    assert 9091 not in {p["port"] for _b, rule in ip_egress(docs, labels) for p in rule["ports"]}


def test_no_network_policies_when_disabled():
    assert not by_kind(rendered("no-networkpolicy"), "NetworkPolicy")
    assert not by_kind(rendered("no-networkpolicy"), "Pod")  # tests.enabled=false


# ---------------------------------------------------------------- helm test pods


@pytest.mark.parametrize("name", [n for n in sorted(VALUE_SETS) if n != "no-networkpolicy"])
def test_helm_test_pods_check_each_service(name: str):
    docs = rendered(name)
    tests = hooks(docs, "test")
    checked = {}
    for pod in tests:
        (c,) = pod["spec"]["containers"]
        # The check script travels inline: no second test hook (a ConfigMap) to carry it.
        assert c["command"] == ["python", "-c", (CHART / "files" / "grpc-check.py").read_text()]
        assert not [v for v in pod["spec"].get("volumes", []) if "configMap" in v]
        target, health_name = c["args"]
        host, port = target.rsplit(":", 1)
        svc = one(docs, "Service", host.split(".")[0])
        assert svc["spec"].get("clusterIP") != "None"
        component = svc["metadata"]["labels"]["app.kubernetes.io/component"]
        assert int(port) == SERVICES[component].grpc_port
        checked[component] = health_name
    assert checked == {n: s.full_name for n, s in SERVICES.items()}


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_only_pods_are_test_hooks_and_kept_for_logs(name: str):
    """`helm test --logs` asks for a pod's log under every test hook's name, after Helm has applied
    hook-succeeded: every test hook must be a Pod, and it must still be there."""
    for hook in hooks(rendered(name), "test"):
        assert hook["kind"] == "Pod", (hook["kind"], hook["metadata"]["name"])
        assert hook["metadata"]["annotations"]["helm.sh/hook-delete-policy"] == "before-hook-creation"
        assert hook["spec"]["restartPolicy"] == "Never"
        assert 0 < hook["spec"]["activeDeadlineSeconds"] <= 600


@pytest.mark.parametrize("name", [n for n in sorted(VALUE_SETS) if n != "no-networkpolicy"])
def test_uninstall_deletes_the_test_pods(name: str):
    """Helm leaves hook resources behind on uninstall; a pre-delete hook Job deletes the test pods,
    with a Role that allows exactly that, and nothing of it stays behind."""
    docs = rendered(name)
    test_pods = sorted(p["metadata"]["name"] for p in hooks(docs, "test"))
    assert test_pods
    (cleanup,) = hooks(docs, "pre-delete")
    assert not [
        d
        for d in docs
        if d["metadata"].get("annotations", {}).get("helm.sh/hook") and d is not cleanup and d["kind"] != "Pod"
    ]
    assert cleanup["kind"] == "Job"
    policy = set(cleanup["metadata"]["annotations"]["helm.sh/hook-delete-policy"].split(","))
    assert policy == {"before-hook-creation", "hook-succeeded"}  # the Job goes once it has run
    pod = cleanup["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["command"] == ["python", "-c", (CHART / "files" / "delete-test-pods.py").read_text()]
    assert c["args"] == [NAMESPACE, *test_pods]
    assert_restricted("cleanup", pod)
    # Its RBAC is part of the release (deleted by the uninstall, after the hook ran).
    sa = one(docs, "ServiceAccount", pod["serviceAccountName"])
    assert "helm.sh/hook" not in sa["metadata"].get("annotations", {})
    (binding,) = [
        b
        for b in by_kind(docs, "RoleBinding")
        if {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": NAMESPACE} in b["subjects"]
    ]
    role = one(docs, "Role", binding["roleRef"]["name"])
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "resourceNames": test_pods, "verbs": ["delete"]}
    ]
    # It may reach the API server and nothing else (no DNS either: it uses KUBERNETES_SERVICE_HOST).
    labels = cleanup["spec"]["template"]["metadata"]["labels"]
    policies = by_kind(docs, "NetworkPolicy")
    assert reaches_address(docs, labels, "10.89.0.2", 6443)
    assert not allowed(policies, (labels, OWN_NS), ({"k8s-app": "kube-dns"}, KUBE_SYSTEM_NS), 53, {}, "UDP")
    for component in COMPONENTS:
        dep_labels = deployment_for(docs, component)["spec"]["template"]["metadata"]["labels"]
        assert not allowed(policies, (labels, OWN_NS), (dep_labels, OWN_NS), SERVICES[component].grpc_port, {})


def test_no_cleanup_hook_without_tests():
    docs = render_docs({"tests": {"enabled": False}})
    assert not hooks(docs, "pre-delete") and not hooks(docs, "test")
    docs = render_docs({"tests": {"cleanupOnUninstall": False}})
    assert not hooks(docs, "pre-delete") and len(hooks(docs, "test")) == 3


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


@pytest.mark.parametrize(
    ("which", "kind", "crd"),
    [
        ("serviceMonitor", "ServiceMonitor", "servicemonitors.monitoring.coreos.com"),
        ("prometheusRule", "PrometheusRule", "prometheusrules.monitoring.coreos.com"),
    ],
)
def test_monitoring_objects_need_the_operator_api(which: str, kind: str, crd: str):
    values = {"monitoring": {which: {"enabled": True}}}
    # Cluster with the Prometheus Operator: rendered.
    assert len(by_kind(render_docs(values, api_versions=MONITORING_APIS), kind)) == 1
    # Without it (e.g. a bare kind cluster): a clear failure instead of "resource mapping not found".
    with pytest.raises(helm.HelmError) as failure:
        render_docs(values)
    message = str(failure.value)
    assert crd in message and "kube-prometheus-stack" in message and "prometheus-operator-crds" in message
    assert "monitoring.requireCRDs=false" in message
    # Only one of the two APIs served: only the other object is affected.
    other = next(a for a in MONITORING_APIS if a.count("/") == 2 and not a.endswith(kind))
    with pytest.raises(helm.HelmError, match=crd):
        render_docs(values, api_versions=("monitoring.coreos.com/v1", other))
    # requireCRDs=false: skipped silently, the rest of the release renders.
    docs = render_docs({"monitoring": {"requireCRDs": False, which: {"enabled": True}}})
    assert not by_kind(docs, kind) and by_kind(docs, "Deployment")


def test_kind_values_deploy_with_and_without_the_operator():
    values = load_values("kind")
    assert len(by_kind(render_docs(values, api_versions=MONITORING_APIS), "ServiceMonitor")) == 1
    docs = render_docs(values)  # a bare kind cluster
    assert not {d["kind"] for d in docs} & CRD_KINDS
    assert [c for c in by_kind(docs, "ConfigMap") if "grafana_dashboard" in c["metadata"]["labels"]]


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


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({}, {"mapreduce": "256Mi", "userbehavior": "8Gi", "recommendation": "256Mi"}),
        (
            {"default": {"scratchSizeLimit": "1Gi"}, "services": {"userbehavior": {"scratchSizeLimit": "40Gi"}}},
            {"mapreduce": "1Gi", "userbehavior": "40Gi", "recommendation": "1Gi"},
        ),
    ],
)
def test_scratch_space_for_spilled_state_is_sized_per_service(values: dict, expected: dict):
    """UserBehavior sets aside what a call holds past its memory budget in /tmp: its emptyDir is
    the one sized for that, and each service's size can be set."""
    docs = render_docs(values, name="music-analytics")
    for name, size in expected.items():
        pod = one(docs, "Deployment", f"music-analytics-{name}")["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/tmp")
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        assert volume["emptyDir"]["sizeLimit"] == size
    with pytest.raises(helm.HelmError):
        chart().validate_schema({"services": {"userbehavior": {"scratchSizeLimit": "lots"}}})
