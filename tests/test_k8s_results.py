"""client/k8s_results.py against a small stand-in for the Kubernetes API (no cluster here).

The real `kubernetes` client talks HTTP to a local server that implements the three ConfigMap
calls it makes and enforces the chart's Role (get/update/patch on one name, no create), so the
code under test runs unmodified, from config loading to the wire format.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from music_analytics.client.demo import LocalServices
from music_analytics.client.k8s_results import ResultsPublishError, publish_results_configmap, summary_data
from tests.conftest import cli
from tests.support.kube_api import FakeKubeApi

SUMMARY = {"status": "ok", "events_processed": 1200, "elapsed_seconds": 1.5, "top_songs": [{"song": "a", "plays": 3}]}


@pytest.fixture
def kube_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    # Outside a pod: no KUBERNETES_SERVICE_HOST, so the client falls back to KUBECONFIG.
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    yield tmp_path


def test_replaces_precreated_configmap_with_only_get_and_update(kube_env: Path, monkeypatch: pytest.MonkeyPatch):
    # The chart's Role: this one name, no create. The code must not need more.
    with FakeKubeApi(allowed_names={"demo-results"}, allow_create=False) as api:
        api.precreate("analytics", "demo-results", labels={"app.kubernetes.io/managed-by": "Helm"})
        monkeypatch.setenv("KUBECONFIG", str(api.kubeconfig(kube_env)))
        publish_results_configmap("demo-results", SUMMARY)
        stored = api.configmaps[("analytics", "demo-results")]
    assert json.loads(stored["data"]["summary.json"]) == SUMMARY
    assert stored["data"]["status"] == "ok" and stored["data"]["events_processed"] == "1200"
    assert "top_songs" not in stored["data"]  # only scalars become flat keys
    assert stored["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "Helm"}  # Helm's labels kept
    assert [m for m, _ in api.requests] == ["GET", "PUT"]


def test_creates_when_missing_and_rights_allow(kube_env: Path, monkeypatch: pytest.MonkeyPatch):
    with FakeKubeApi() as api:
        monkeypatch.setenv("KUBECONFIG", str(api.kubeconfig(kube_env)))
        publish_results_configmap("fresh", SUMMARY, namespace="other")
        assert ("other", "fresh") in api.configmaps
        # Second call replaces (idempotent reruns of the Job).
        publish_results_configmap("fresh", {**SUMMARY, "status": "second"}, namespace="other")
        assert json.loads(api.configmaps[("other", "fresh")]["data"]["summary.json"])["status"] == "second"


def test_forbidden_raises_clear_error(kube_env: Path, monkeypatch: pytest.MonkeyPatch):
    with FakeKubeApi(allowed_names={"demo-results"}, allow_create=False) as api:
        monkeypatch.setenv("KUBECONFIG", str(api.kubeconfig(kube_env)))
        with pytest.raises(ResultsPublishError, match=r"analytics/someone-else.*403"):
            publish_results_configmap("someone-else", SUMMARY)


def test_unreachable_api_raises_clear_error(kube_env: Path, monkeypatch: pytest.MonkeyPatch):
    with FakeKubeApi() as api:
        path = api.kubeconfig(kube_env)
    # The server is gone now: connection refused.
    monkeypatch.setenv("KUBECONFIG", str(path))
    with pytest.raises(ResultsPublishError, match="cannot write ConfigMap"):
        publish_results_configmap("x", SUMMARY)


def test_no_config_raises_clear_error(kube_env: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("KUBECONFIG", str(kube_env / "missing"))
    monkeypatch.setenv("HOME", str(kube_env))
    with pytest.raises(ResultsPublishError, match="no in-cluster service account"):
        publish_results_configmap("x", SUMMARY)


def test_summary_data_is_strings_only():
    data = summary_data({"a": 1, "b": True, "c": None, "bad key": "x", "d": {"e": 1}})
    assert all(isinstance(v, str) for v in data.values())
    assert set(data) == {"summary.json", "a", "b"}


def _run_with_configmap(services: LocalServices, api: FakeKubeApi, directory: Path, name: str) -> Any:
    env = {"KUBECONFIG": str(api.kubeconfig(directory)), "KUBERNETES_SERVICE_HOST": "", "POD_NAMESPACE": ""}
    return cli(
        "run", "--data", "data/stream_data.csv", "--out", str(directory / "r.json"), "--quiet",
        "--mapreduce", services.target("mapreduce"),
        "--userbehavior", services.target("userbehavior"),
        "--recommendation", services.target("recommendation"),
        "--results-configmap", name,
        env=env,
    )  # fmt: skip


def test_run_stores_its_summary_in_the_configmap(services: LocalServices, tmp_path: Path):
    with FakeKubeApi(allowed_names={"demo-results"}, allow_create=False) as api:
        api.precreate("analytics", "demo-results")
        proc = _run_with_configmap(services, api, tmp_path, "demo-results")
        stored = api.configmaps[("analytics", "demo-results")]
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(stored["data"]["summary.json"])
    results = json.loads((tmp_path / "r.json").read_text())
    assert summary["events_processed"] == results["events_processed"] > 0
    assert summary["top_songs"] == results["mapreduce_results"]["top_songs"]


def test_run_that_cannot_store_its_results_fails_with_its_own_code(services: LocalServices, tmp_path: Path):
    # The Role was removed (or names another ConfigMap): the API answers 403. The Job must fail.
    with FakeKubeApi(allowed_names={"demo-results"}, allow_create=False) as api:
        proc = _run_with_configmap(services, api, tmp_path, "other-results")
    assert proc.returncode == 4, proc.stderr
    assert "error: results not stored: cannot write ConfigMap analytics/other-results" in proc.stderr
    assert "403" in proc.stderr
    # The analytics themselves were computed and written locally: only the store failed.
    assert json.loads((tmp_path / "r.json").read_text())["events_processed"] > 0
