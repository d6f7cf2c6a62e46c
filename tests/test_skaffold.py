"""skaffold.yaml: valid against the v4beta14 schema, and consistent with the chart it deploys.

No skaffold binary can run here; the schema is skaffold's own published JSON schema (vendored in
tests/schemas/ with its licence, so a fresh clone has it), and the cross-checks render the chart
with the names skaffold would use.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from music_analytics.services.registry import SERVICES
from tests.support.chart import by_kind, chart, render_docs

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "tests" / "schemas" / "skaffold-v4beta14.json"


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "skaffold.yaml").read_text())


def test_valid_against_schema(config: dict[str, Any]):
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(config), key=str)
    assert not errors, [f"{list(e.absolute_path)}: {e.message}" for e in errors]
    assert config["apiVersion"] == "skaffold/v4beta14"


def test_schema_catches_typos(config: dict[str, Any]):
    # The schema is strict enough to matter: a misspelt key fails.
    schema = json.loads(SCHEMA.read_text())
    broken = json.loads(json.dumps(config))
    broken["deploy"]["helm"]["releases"][0]["chartpath"] = broken["deploy"]["helm"]["releases"][0].pop("chartPath")
    assert list(jsonschema.Draft7Validator(schema).iter_errors(broken))


def _releases(config: dict[str, Any]) -> list[dict[str, Any]]:
    releases = list(config["deploy"]["helm"]["releases"])
    for profile in config.get("profiles", []):
        releases += profile.get("deploy", {}).get("helm", {}).get("releases", [])
    return releases


def test_deploys_the_chart_with_the_built_image(config: dict[str, Any]):
    (artifact,) = config["build"]["artifacts"]
    assert artifact["image"] == "music-analytics"
    assert (ROOT / artifact["docker"]["dockerfile"]).is_file()
    key = re.sub(r"[^A-Za-z0-9]", "_", artifact["image"])
    for release in _releases(config):
        # One source of truth: the repository's chart, no copied manifests.
        assert (ROOT / release["chartPath"]).resolve() == (ROOT / "charts" / "music-analytics").resolve()
        templates = release["setValueTemplates"]
        assert templates["image.repository"] == f"{{{{.IMAGE_REPO_{key}}}}}"
        assert templates["image.tag"] == f"{{{{.IMAGE_TAG_{key}}}}}"
        for values_file in release.get("valuesFiles", []):
            values = yaml.safe_load((ROOT / values_file).read_text())
            chart().validate_schema(values)
        # The chart accepts what skaffold sets.
        chart().validate_schema(
            {"image": {"repository": "music-analytics", "tag": "abc123", "pullPolicy": "IfNotPresent"}}
        )


def test_kind_profile(config: dict[str, Any]):
    (profile,) = [p for p in config["profiles"] if p["name"] == "kind"]
    assert {"kubeContext": "kind-.*"} in profile["activation"]
    assert re.fullmatch(profile["activation"][0]["kubeContext"], "kind-music-analytics")


def test_port_forwards_match_rendered_services(config: dict[str, Any]):
    release = config["deploy"]["helm"]["releases"][0]
    docs = render_docs({}, name=release["name"], namespace=release["namespace"])
    services = {s["metadata"]["name"]: {p["port"] for p in s["spec"]["ports"]} for s in by_kind(docs, "Service")}
    ours = [f for f in config["portForward"] if f["namespace"] == release["namespace"]]
    forwarded = {(f["resourceName"], f["port"]) for f in ours}
    for f in ours:
        assert f["resourceType"] == "service"
        assert f["port"] in services[f["resourceName"]], f
    for name, spec in SERVICES.items():
        svc = f"{release['name']}-{name}"
        assert {(svc, spec.grpc_port), (svc, spec.metrics_port)} <= forwarded
    grafana = [f for f in config["portForward"] if "grafana" in f["resourceName"]]
    assert grafana and grafana[0]["namespace"] == "monitoring"


def test_pushes_by_default_and_not_on_kind(config: dict[str, Any]):
    # `push: false` at the top breaks every remote cluster (its nodes can't pull the image):
    # only the kind profile, active on kind-* contexts, keeps images local.
    assert "push" not in config["build"].get("local", {}), "push decided by skaffold's default (push to remote)"
    (profile,) = [p for p in config["profiles"] if p["name"] == "kind"]
    assert profile["build"]["local"]["push"] is False
    # A profile's build replaces the build type but keeps the artifacts: it must not drop them.
    assert "artifacts" not in profile["build"]
