"""k8s/ (kind config, monitoring values, make targets, the results check) and the kind-e2e workflow
agree with the chart and the client.

No kind or Docker here: these checks keep the pieces consistent (names, labels, files, targets,
the summary the Job stores) so the path a user follows on their machine does not rot.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from music_analytics.client.k8s_results import SUMMARY_KEY, summary_data
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


# ---------------------------------------------------------------- k8s/check-results.py: the recommender's summary


def check_results(summary: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """k8s/check-results.py on ``summary`` stored as the client stores it in the ConfigMap."""
    return subprocess.run(
        [sys.executable, str(K8S / "check-results.py")],
        input=summary_data(summary)[SUMMARY_KEY],
        capture_output=True,
        text=True,
        timeout=60,
    )


MODEL = {
    "algorithm": "bm25",
    "n": 10,
    "users": 2,
    "artists": 7,
    "pairs": 9,
    "train_seconds": 0.012,
    "users_by": {"bm25": 1, "bm25+popularity": 1, "popularity": 0},
}
SUMMARY = {
    "events_processed": 40,
    "rows_rejected": 0,
    "top_songs": {"Abba - s1": 3},
    "top_users": ["u1", "u2"],
    "trending_songs": ["Abba - s1"],
    "users": 2,
    "listening_stats": {
        "timezone": "UTC",
        "daily_activity": [{"day": "Monday", "hour": 8, "listen_count": 40}],
        "listening_activity": {
            "year": [{"time_range": "2024", "from_ts": 1704067200, "to_ts": 1735689599, "listen_count": 40}]
        },
    },
    "user_stats": {"path": "/work/results/run_grpc_metrics.users.jsonl", "users": 2},
    "personalized_recommendations": MODEL,
}


def test_check_results_accepts_the_recommenders_summary():
    result = check_results(SUMMARY)
    assert result.returncode == 0, result.stderr
    assert "2 users, 10 artists each by bm25" in result.stdout


@pytest.mark.parametrize(
    "summary",
    [
        {**SUMMARY, "personalized_recommendations": None},  # job.personalized.artistsPerUser 0
        {k: v for k, v in SUMMARY.items() if k != "personalized_recommendations"},  # a client without them
    ],
)
def test_check_results_accepts_a_summary_without_recommendations(summary: dict[str, Any]):
    result = check_results(summary)
    assert result.returncode == 0, result.stderr
    assert "no personalized artists" in result.stdout


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        ({**MODEL, "algorithm": ""}, "personalized_recommendations.algorithm is ''"),
        ({k: v for k, v in MODEL.items() if k != "algorithm"}, "personalized_recommendations.algorithm is None"),
        (
            {**MODEL, "users": 1, "users_by": {"bm25": 1}},
            "personalized_recommendations.users is 1, expected user_stats.users (2)",
        ),
        ({**MODEL, "users_by": {"bm25": 1, "popularity": 0}}, "personalized_recommendations.users_by"),
        ({**MODEL, "users_by": None}, "personalized_recommendations.users_by"),
        ({**MODEL, "n": 0}, "personalized_recommendations.n is 0"),
        ({**MODEL, "n": True}, "personalized_recommendations.n is True"),
        (["bm25"], "personalized_recommendations is a list, expected an object or null"),
        ("bm25", "personalized_recommendations is a str"),
    ],
)
def test_check_results_rejects_a_broken_recommenders_summary(model: Any, reason: str):
    result = check_results({**SUMMARY, "personalized_recommendations": model})
    assert result.returncode == 1, result.stdout
    assert reason in result.stderr, result.stderr
    assert "stored results are not a real run's" in result.stderr
