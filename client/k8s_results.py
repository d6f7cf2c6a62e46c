"""Publish a run's summary to a Kubernetes ConfigMap, so results outlive the Job's pod and log.

The chart creates the ConfigMap empty and grants the Job only get/update/patch on that one name
(RBAC cannot limit ``create`` by name), so the normal path here is read-then-replace; ``create``
is only tried when the ConfigMap is missing (e.g. running outside the chart with wider rights).

The ``kubernetes`` package is an optional dependency (extra ``kubernetes``): it is imported
only when a ConfigMap is actually written.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
SUMMARY_KEY = "summary.json"
# Flat keys next to summary.json for `kubectl get cm -o jsonpath` one-liners; only scalar
# top-level values are copied, and a ConfigMap value must be a string.
_MAX_FLAT_KEYS = 32


class ResultsPublishError(RuntimeError):
    """The summary could not be written to the ConfigMap; the message says why and what to do."""


def publish_results_configmap(name: str, summary: Mapping[str, Any], namespace: str | None = None) -> None:
    """Create or replace ConfigMap ``name`` with ``summary`` as JSON under key ``summary.json``.

    Uses the in-cluster service-account config when running in a pod, else the local kubeconfig
    (``KUBECONFIG`` or ``~/.kube/config``). ``namespace`` defaults to the pod's own namespace,
    else the kubeconfig context's, else ``default``.

    Raises:
        ResultsPublishError: the client is not installed, no configuration is found, or the
            API server refused the write (message names the ConfigMap, namespace and status).
    """
    try:
        from kubernetes import client, config
        from kubernetes.client.exceptions import ApiException
        from kubernetes.config.config_exception import ConfigException
        from urllib3.exceptions import HTTPError as TransportError
    except ImportError as exc:
        raise ResultsPublishError(
            "writing the results ConfigMap needs the kubernetes client: pip install 'music-analytics[kubernetes]'"
        ) from exc

    try:
        try:
            config.load_incluster_config()
            in_cluster = True
        except ConfigException:
            # Read KUBECONFIG now: the client library captures it once, at import time.
            config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
            in_cluster = False
    except (ConfigException, OSError) as exc:
        raise ResultsPublishError(
            f"cannot write ConfigMap {name!r}: no in-cluster service account and no usable kubeconfig ({exc})"
        ) from exc

    ns = namespace or _default_namespace(in_cluster, config)
    body = client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name=name, namespace=ns),
        data=summary_data(summary),
    )
    api = client.CoreV1Api()
    try:
        try:
            current = api.read_namespaced_config_map(name, ns)
        except ApiException as exc:
            if exc.status != 404:
                raise
            api.create_namespaced_config_map(ns, body)
            return
        # Keep what others put on the object (Helm's labels and annotations); replace the data.
        current.data = body.data
        api.replace_namespaced_config_map(name, ns, current)
    except ApiException as exc:
        hint = ""
        if exc.status == 403:
            hint = " (the Job's Role grants get/update/patch on this ConfigMap only; is the name the chart's?)"
        raise ResultsPublishError(
            f"cannot write ConfigMap {ns}/{name}: API server answered {exc.status} {exc.reason}{hint}"
        ) from exc
    except (TransportError, OSError) as exc:
        raise ResultsPublishError(f"cannot write ConfigMap {ns}/{name}: API server unreachable ({exc})") from exc


def summary_data(summary: Mapping[str, Any]) -> dict[str, str]:
    """The ConfigMap data: the whole summary as JSON plus its scalar top-level fields as strings."""
    data = {SUMMARY_KEY: json.dumps(summary, indent=2, sort_keys=True, default=str)}
    for key, value in list(summary.items())[:_MAX_FLAT_KEYS]:
        # ConfigMap keys allow [-._a-zA-Z0-9]; skip anything else rather than fail the run.
        if isinstance(value, str | int | float | bool) and _valid_key(str(key)) and key != SUMMARY_KEY:
            data[str(key)] = json.dumps(value) if not isinstance(value, str) else value
    return data


def _valid_key(key: str) -> bool:
    return 0 < len(key) <= 253 and all(c.isalnum() or c in "-._" for c in key)


def _default_namespace(in_cluster: bool, config: Any) -> str:
    if in_cluster and SERVICE_ACCOUNT_NAMESPACE.is_file():
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    if env := os.environ.get("POD_NAMESPACE"):
        return env
    try:
        _, active = config.list_kube_config_contexts(config_file=os.environ.get("KUBECONFIG"))
        return active.get("context", {}).get("namespace") or "default"
    except Exception:  # no kubeconfig context: the API's default namespace
        return "default"
