"""A stand-in for the Kubernetes API server: the three ConfigMap calls the `kubernetes` client
makes for client/k8s_results.py (get, create, replace), served over real HTTP from memory, with
a Role's resourceNames and a missing create right enforced as the API server would (403).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

_PREFIX = "/api/v1/namespaces/"


class FakeKubeApi:
    """ConfigMaps in memory; ``allowed_names`` mimics a Role with resourceNames (None: allow all)."""

    def __init__(self, allowed_names: set[str] | None = None, allow_create: bool = True) -> None:
        self.configmaps: dict[tuple[str, str], dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []
        self.allowed_names = allowed_names
        self.allow_create = allow_create
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: Any) -> None:  # keep pytest output clean
                pass

            def _reply(self, code: int, body: dict[str, Any]) -> None:
                raw = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def _status(self, code: int, reason: str) -> None:
                self._reply(
                    code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code}
                )

            def _route(self) -> tuple[str, str | None] | None:
                path = self.path.split("?")[0]
                if not path.startswith(_PREFIX):
                    return None
                parts = path[len(_PREFIX) :].split("/")
                if len(parts) == 2 and parts[1] == "configmaps":
                    return parts[0], None
                if len(parts) == 3 and parts[1] == "configmaps":
                    return parts[0], parts[2]
                return None

            def _handle(self) -> None:
                api.requests.append((self.command, self.path))
                route = self._route()
                if route is None:
                    return self._status(404, "NotFound")
                ns, name = route
                if self.command == "POST":
                    body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                    name = body["metadata"]["name"]
                    if not api.allow_create:
                        return self._status(403, "Forbidden")
                    if (ns, name) in api.configmaps:
                        return self._status(409, "AlreadyExists")
                    body["metadata"]["resourceVersion"] = "1"
                    api.configmaps[(ns, name)] = body
                    return self._reply(201, body)
                if api.allowed_names is not None and name not in api.allowed_names:
                    return self._status(403, "Forbidden")
                if self.command == "GET":
                    if (ns, name) not in api.configmaps:
                        return self._status(404, "NotFound")
                    return self._reply(200, api.configmaps[(ns, name)])
                if self.command == "PUT":
                    body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                    if (ns, name) not in api.configmaps:
                        return self._status(404, "NotFound")
                    body["metadata"]["resourceVersion"] = str(
                        int(api.configmaps[(ns, name)]["metadata"]["resourceVersion"]) + 1
                    )
                    api.configmaps[(ns, name)] = body
                    return self._reply(200, body)
                return self._status(405, "MethodNotAllowed")

            do_GET = do_PUT = do_POST = _handle  # noqa: N815 - http.server's naming

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def precreate(self, namespace: str, name: str, labels: dict[str, str] | None = None) -> None:
        """What the chart does: an empty ConfigMap with Helm's labels."""
        self.configmaps[(namespace, name)] = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace, "labels": labels or {}, "resourceVersion": "1"},
        }

    def kubeconfig(self, directory: Path, namespace: str = "analytics") -> Path:
        path = directory / "kubeconfig"
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "current-context": "fake",
                    "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
                    "users": [{"name": "fake", "user": {"token": "test-token"}}],
                    "contexts": [
                        {"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": namespace}}
                    ],
                }
            )
        )
        return path

    def __enter__(self) -> FakeKubeApi:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
