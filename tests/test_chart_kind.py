"""k8s/ (kind config, monitoring values, make targets) and the kind-e2e workflow agree with the chart.

No kind or Docker here: these checks keep the pieces consistent (names, labels, files, targets)
so the path a user follows on their machine does not rot.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from tests.support.chart import MONITORING_APIS, by_kind, chart, load_values, render_docs

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"


def test_kind_cluster_config():
    config = yaml.safe_load((K8S / "kind-cluster.yaml").read_text())
    assert config["kind"] == "Cluster" and config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    roles = [n["role"] for n in config["nodes"]]
    assert roles.count("control-plane") == 1 and roles.count("worker") >= 1


def test_monitoring_stack_selects_our_objects():
    kps = yaml.safe_load((K8S / "kube-prometheus-stack-values.yaml").read_text())
    release = kps["fullnameOverride"]
    docs = render_docs(load_values("kind"), api_versions=MONITORING_APIS)  # make kind-up installs the operator
    # The operator's default selectors want release=<its release name> on ServiceMonitor/PrometheusRule.
    for kind in ("ServiceMonitor", "PrometheusRule"):
        (obj,) = by_kind(docs, kind)
        assert obj["metadata"]["labels"]["release"] == release
    assert kps["prometheus"]["prometheusSpec"]["serviceMonitorNamespaceSelector"] == {}
    assert kps["prometheus"]["prometheusSpec"]["ruleNamespaceSelector"] == {}
    # Grafana's sidecar picks up the chart's dashboard ConfigMaps in any namespace.
    sidecar = kps["grafana"]["sidecar"]["dashboards"]
    values = chart().values["monitoring"]["grafanaDashboards"]
    assert (sidecar["label"], sidecar["labelValue"]) == (values["label"], values["labelValue"])
    assert sidecar["searchNamespace"] == "ALL" and sidecar["folderAnnotation"] == "grafana_folder"
    # The chart's NetworkPolicy lets the monitoring namespace scrape.
    np = chart().values["networkPolicy"]["monitoring"]["namespaceSelector"]["matchLabels"]
    assert np == {"kubernetes.io/metadata.name": "monitoring"}
    mk = (K8S / "kind.mk").read_text()
    assert "MONITORING_NAMESPACE ?= monitoring" in mk and "kube-prometheus-stack-values.yaml" in mk


def test_make_targets_dry_run():
    result = subprocess.run(
        ["make", "-n", "image", "kind-up", "kind-e2e", "kind-down", "CONTAINER_TOOL=podman"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "--build-arg BASE_IMAGE" in result.stdout
    assert "podman build" in result.stdout
    assert "charts/music-analytics" in result.stdout and "helm test" in result.stdout


def test_workflow_uses_existing_files_and_targets():
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "kind-e2e.yml").read_text())
    steps = workflow["jobs"]["kind-e2e"]["steps"]
    kind_step = next(s for s in steps if s.get("uses", "").startswith("helm/kind-action"))
    assert (ROOT / kind_step["with"]["config"]).is_file()
    script = "\n".join(s.get("run", "") for s in steps)
    assert "make --no-print-directory image" in script and "kind load docker-image" in script
    mk = (K8S / "kind.mk").read_text()
    for target in ("kind-monitoring", "kind-e2e"):
        assert f"make --no-print-directory {target}" in script
        assert f"\n{target}:" in mk
