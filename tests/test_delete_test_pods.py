"""The chart's pre-delete hook script (files/delete-test-pods.py), run as the Job runs it, against
a real HTTPS server standing in for the API server: what it deletes, what it tries again, what it
gives up on, and that it always exits 0."""

from __future__ import annotations

import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT
from tests.support.pki import CertificateAuthority

SCRIPT = ROOT / "charts" / "music-analytics" / "files" / "delete-test-pods.py"
TOKEN = "test-token"


class ApiServer:
    """DELETE /api/v1/namespaces/NS/pods/NAME: answers each pod's calls with the codes queued
    for it (then 200), and records every call."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.answers: dict[str, list[int]] = {}
        self.calls: list[tuple[str, str]] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: Any) -> None:
                pass

            def do_DELETE(self) -> None:
                pod = self.path.rsplit("/", 1)[-1]
                api.calls.append((pod, self.headers.get("Authorization", "")))
                queued = api.answers.get(pod, [])
                code = queued.pop(0) if queued else 200
                body = b"{}"
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[ApiServer, Path]]:
    ca = CertificateAuthority(tmp_path, "cluster-ca")
    issued = ca.issue("kube-apiserver", ips=("127.0.0.1",), server=True)
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text(TOKEN + "\n")
    (account / "ca.crt").write_bytes(ca.cert.read_bytes())
    server = ApiServer(issued.cert, issued.key)
    yield server, account
    server.server.shutdown()


def run_script(account: Path, port: int, *pods: str, retry_seconds: float = 10) -> subprocess.CompletedProcess:
    env = {"SERVICE_ACCOUNT_DIR": str(account), "KUBERNETES_SERVICE_HOST": "127.0.0.1",
           "KUBERNETES_SERVICE_PORT": str(port), "RETRY_SECONDS": str(retry_seconds)}  # fmt: skip
    return subprocess.run([sys.executable, str(SCRIPT), "music-analytics", *pods],
                          env=env, capture_output=True, text=True, timeout=60)  # fmt: skip


def test_deletes_every_pod_with_the_account_token(api):
    server, account = api
    done = run_script(account, server.port, "mapreduce-test", "userbehavior-test")
    assert done.returncode == 0, done.stderr
    assert server.calls == [("mapreduce-test", f"Bearer {TOKEN}"), ("userbehavior-test", f"Bearer {TOKEN}")]
    assert "deleted pod mapreduce-test" in done.stdout and "deleted pod userbehavior-test" in done.stdout


def test_an_api_server_that_is_briefly_unavailable_is_tried_again(api):
    server, account = api
    server.answers["mapreduce-test"] = [503, 429]
    done = run_script(account, server.port, "mapreduce-test")
    assert done.returncode == 0
    assert [pod for pod, _ in server.calls] == ["mapreduce-test"] * 3
    assert "HTTP 503" in done.stderr and "HTTP 429" in done.stderr and "trying again" in done.stderr
    assert "deleted pod mapreduce-test" in done.stdout


def test_a_refusal_is_not_tried_again_and_a_missing_pod_is_fine(api):
    server, account = api
    server.answers["mapreduce-test"] = [403]
    server.answers["userbehavior-test"] = [404]
    done = run_script(account, server.port, "mapreduce-test", "userbehavior-test")
    assert done.returncode == 0
    assert [pod for pod, _ in server.calls] == ["mapreduce-test", "userbehavior-test"]
    assert "warning: could not delete pod mapreduce-test: HTTP 403" in done.stderr
    assert "pod userbehavior-test not found" in done.stdout


def test_an_api_server_that_stays_away_is_given_up_on_in_time(api):
    server, account = api
    port = server.port
    server.server.shutdown()
    server.server.server_close()  # nothing listens: every connection is refused
    done = run_script(account, port, "mapreduce-test", retry_seconds=2)
    assert done.returncode == 0
    assert "trying again" in done.stderr
    assert "warning: could not delete pod mapreduce-test" in done.stderr


def test_a_certificate_the_cluster_ca_did_not_sign_is_not_tried_again(api, tmp_path):
    server, account = api
    other = CertificateAuthority(tmp_path, "other-ca")
    (account / "ca.crt").write_bytes(other.cert.read_bytes())
    done = run_script(account, server.port, "mapreduce-test", retry_seconds=30)
    assert done.returncode == 0
    assert "trying again" not in done.stderr
    assert "warning: could not delete pod mapreduce-test" in done.stderr and "certificate verify failed" in done.stderr
    assert server.calls == []


def test_no_credentials_leaves_the_pods_and_says_so(tmp_path):
    done = run_script(tmp_path / "missing", 1, "mapreduce-test")
    assert done.returncode == 0
    assert "no service-account credentials" in done.stderr and "mapreduce-test" in done.stderr
