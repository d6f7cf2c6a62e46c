"""What the chart and the deploy files repeat of the wire contract equals the contract.

YAML cannot import music_analytics.services.common.contract, so values.yaml, skaffold.yaml and
the monitoring rules restate its ports and names. Each restatement is compared here with the
module, and the rendered chart with both: a port or a name changed in one place only fails here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from music_analytics.services.common import contract
from tests.support.chart import (
    CHART,
    by_kind,
    deployment_for,
    hooks,
    job_args,
    one,
    pipeline_job,
    render_docs,
)

ROOT = Path(__file__).resolve().parent.parent
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
MONITORING_FILES = [
    *(CHART / "files" / "dashboards").glob("*.json"),
    CHART / "files" / "prometheus-rules.yaml",
]


def test_values_list_exactly_the_contract_services():
    assert sorted(VALUES["services"]) == sorted(contract.SERVICES)


@pytest.mark.parametrize("name", sorted(contract.SERVICES))
def test_values_ports_and_health_name_are_the_contract(name: str):
    service, own = contract.SERVICES[name], VALUES["services"][name]
    assert (own["grpcPort"], own["metricsPort"]) == (service.grpc_port, service.metrics_port)
    assert own["healthService"] == service.full_name


def test_health_ports_collide_with_no_contract_port():
    """The plaintext health ports (TLS only) are the chart's own; they must not take a port the
    contract gives any service, or a pod running two services' defaults side by side breaks."""
    contract_ports = {p for s in contract.SERVICES.values() for p in (s.grpc_port, s.metrics_port)}
    health_ports = [VALUES["services"][name]["healthPort"] for name in contract.SERVICES]
    assert len(set(health_ports)) == len(health_ports)
    assert not set(health_ports) & contract_ports


@pytest.mark.parametrize(
    "values", [{}, {"tls": {"enabled": True, "secretName": "analytics-tls"}}], ids=["plain", "tls"]
)
def test_rendered_chart_uses_the_contract_names_and_ports(values: dict[str, Any]):
    docs = render_docs(values)
    job = job_args(pipeline_job(docs))
    tests = {
        one(docs, "Service", p["spec"]["containers"][0]["args"][0].split(".")[0])["metadata"]["labels"][
            "app.kubernetes.io/component"
        ]: p["spec"]["containers"][0]["args"]
        for p in hooks(docs, "test")
    }
    for name, service in contract.SERVICES.items():
        (container,) = deployment_for(docs, name)["spec"]["template"]["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert (ports["grpc"], ports["metrics"]) == (service.grpc_port, service.metrics_port)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["service"] == service.full_name
        # The Job dials the contract's port; the helm test checks the contract's health name there.
        assert int(job[f"--{name}"].rsplit(":", 1)[1]) == service.grpc_port
        target, health_name = tests[name][:2]
        assert (int(target.rsplit(":", 1)[1]), health_name) == (service.grpc_port, service.full_name)
        # The Services publish the contract's ports.
        published = {
            p["port"]
            for s in by_kind(docs, "Service")
            if s["spec"]["selector"]["app.kubernetes.io/component"] == name
            for p in s["spec"]["ports"]
        }
        assert published == {service.grpc_port, service.metrics_port}


def test_helm_test_script_checks_the_contract_health_service():
    script = (CHART / "files" / "grpc-check.py").read_text()
    assert re.findall(r'"(grpc\.health\.[\w.]+)"', script) == [contract.HEALTH_SERVICE]


def test_skaffold_forwards_the_contract_ports():
    config = yaml.safe_load((ROOT / "skaffold.yaml").read_text())
    release = config["deploy"]["helm"]["releases"][0]
    forwarded = {
        (f["resourceName"], f["port"], f["localPort"])
        for f in config["portForward"]
        if f["namespace"] == release["namespace"]
    }
    expected = {
        (f"{release['name']}-{name}", port, port)
        for name, s in contract.SERVICES.items()
        for port in (s.grpc_port, s.metrics_port)
    }
    assert forwarded == expected


def promql_expressions(path: Path) -> list[str]:
    if path.suffix == ".json":
        dashboard = json.loads(path.read_text())
        panels = [q for p in dashboard["panels"] for q in (p, *p.get("panels", []))]
        return [target["expr"] for panel in panels for target in panel.get("targets", [])]
    return [rule["expr"] for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]]


def grpc_service_matchers(expr: str) -> list[tuple[str, str]]:
    """(operator, value) of every grpc_service matcher in a PromQL expression, the value with
    PromQL's string escaping undone (so a regex is as Prometheus compiles it)."""
    found = re.findall(r'grpc_service\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"', expr)
    return [(op, re.sub(r"\\(.)", r"\1", value)) for op, value in found]


@pytest.mark.parametrize("path", MONITORING_FILES, ids=lambda p: p.name)
def test_monitoring_selects_the_contract_services(path: Path):
    """Every grpc_service selector of the dashboards and alerts means what it says: the music.v1
    pattern matches each contract service and not the health service; a health-service literal
    is the contract's."""
    matchers = [m for expr in promql_expressions(path) for m in grpc_service_matchers(expr)]
    assert matchers, path
    names = [s.full_name for s in contract.SERVICES.values()]
    for op, value in matchers:
        if op in ("=~", "!~"):
            pattern = re.compile(value)
            assert all(pattern.fullmatch(n) for n in names), (op, value)
            assert not pattern.fullmatch(contract.HEALTH_SERVICE), (op, value)
            assert not pattern.fullmatch("musicXv1.MapReduceService"), (op, value)  # dots are literal
        else:
            assert value in [*names, contract.HEALTH_SERVICE], (op, value)
