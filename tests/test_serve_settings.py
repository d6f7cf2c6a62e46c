"""`music-analytics serve` checks every setting before it starts: one clear line, exit code 2.

Each case was once a traceback, a silently wrapped port or a C-core log line.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile

import pytest

from music_analytics.client.demo import free_port, start_service
from tests.conftest import BIN, cli

SERVE_TIMEOUT = 60


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    # Free ports by default, so a case fails for the setting it is about and nothing else.
    return cli("serve", "mapreduce", "--port", str(free_port()), "--metrics-port", str(free_port()), *args,
               env=env, timeout=SERVE_TIMEOUT)  # fmt: skip


@pytest.mark.parametrize(
    ("variable", "value", "fragment"),
    [
        ("MUSIC_ANALYTICS_GRPC_PORT", "abc", "MUSIC_ANALYTICS_GRPC_PORT=abc: 'abc' is not an integer"),
        ("MUSIC_ANALYTICS_METRICS_PORT", "99999", "MUSIC_ANALYTICS_METRICS_PORT=99999: 99999 is not a port number"),
        ("MUSIC_ANALYTICS_GRACE_SECONDS", "soon", "MUSIC_ANALYTICS_GRACE_SECONDS=soon"),
        ("MUSIC_ANALYTICS_SHUTDOWN_DELAY_SECONDS", "-1", "must be a finite number of seconds"),
        ("MUSIC_ANALYTICS_DRAIN_SECONDS", "nan", "MUSIC_ANALYTICS_DRAIN_SECONDS=nan"),
        ("MUSIC_ANALYTICS_MAX_STREAMS", "0", "MUSIC_ANALYTICS_MAX_STREAMS=0: 0 must be at least 1"),
        ("MUSIC_ANALYTICS_MAX_CALL_BYTES", "lots", "is not a byte count"),
        ("MUSIC_ANALYTICS_MEMORY_LIMIT_BYTES", "12", "below the smallest useful limit"),
        ("MUSIC_ANALYTICS_SPILL_AFTER_BYTES", "12", "MUSIC_ANALYTICS_SPILL_AFTER_BYTES=12: '12' is below the smallest"),
        (
            "MUSIC_ANALYTICS_SPILL_DIR",
            "/nonexistent/spill",
            "MUSIC_ANALYTICS_SPILL_DIR=/nonexistent/spill: '/nonexistent/spill' is not a directory",
        ),
        ("MUSIC_ANALYTICS_LOG_LEVEL", "loud", "not one of debug, info, warning, error"),
        ("MUSIC_ANALYTICS_TLS_CERT", "/nonexistent/cert.pem", "cannot read /nonexistent/cert.pem"),
        ("MUSIC_ANALYTICS_WORKERS", "8", "MUSIC_ANALYTICS_WORKERS is no longer read: use MUSIC_ANALYTICS_MAX_STREAMS"),
    ],
)
def test_bad_environment_value_is_one_line(variable, value, fragment):
    # The flags would win over the environment: this case is about the environment alone.
    ports = {"MUSIC_ANALYTICS_GRPC_PORT": str(free_port()), "MUSIC_ANALYTICS_METRICS_PORT": str(free_port())}
    proc = cli("serve", "mapreduce", env=ports | {variable: value}, timeout=SERVE_TIMEOUT)
    assert_one_line_error(proc, fragment)


@pytest.mark.parametrize("port", ["99999", "70000", "-5", "1e3"])
def test_out_of_range_port_is_refused_not_wrapped(port):
    proc = serve("--port", port)
    assert_one_line_error(proc, f"--port={port}")


def test_out_of_range_metrics_port_is_refused():
    assert_one_line_error(serve("--metrics-port", "99999"), "--metrics-port=99999: 99999 is not a port number")


def test_a_flag_wins_over_a_bad_environment_value():
    """The environment is read only for settings no flag gave: a stale variable does not stop a
    service started with the right flag."""
    proc = subprocess.Popen(
        [str(BIN / "music-analytics"), "serve", "mapreduce", "--port", "0", "--metrics-port", "0",
         "--shutdown-delay-seconds", "0"],
        env={**os.environ, "MUSIC_ANALYTICS_GRPC_PORT": "abc"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        line = proc.stdout.readline()
        assert '"message": "serving"' in line, line
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.mark.parametrize("which", ["--port", "--metrics-port", "--health-port"])
def test_port_in_use_is_one_line(which):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ["--host", "127.0.0.1", which, str(port)]
        if which != "--port":
            args += ["--port", str(free_port())]
        if which != "--metrics-port":
            args += ["--metrics-port", str(free_port())]
        proc = cli("serve", "mapreduce", *args, timeout=SERVE_TIMEOUT)
    what = {"--port": "gRPC", "--metrics-port": "metrics", "--health-port": "health"}[which]
    assert_one_line_error(proc, f"cannot bind the {what} port 127.0.0.1:{port}", "in use")


def test_settings_that_go_together(tmp_path):
    cert = tmp_path / "cert.pem"
    cert.write_text("not a certificate")
    assert_one_line_error(serve("--tls-cert", str(cert)), "--tls-cert and --tls-key")
    assert_one_line_error(serve("--tls-cert", str(cert), "--tls-key", str(cert)), f"--tls-cert {cert}", "not a PEM")
    port = free_port()
    assert_one_line_error(serve("--metrics-port", str(port), "--health-port", str(port)), "ports must differ")


def test_the_serving_line_says_what_was_configured(tmp_path):
    service = start_service("userbehavior", tmp_path / "ub.log", extra_env={
        "MUSIC_ANALYTICS_MAX_STREAMS": "3", "MUSIC_ANALYTICS_MEMORY_LIMIT_BYTES": "256Mi",
        "MUSIC_ANALYTICS_HEALTH_PORT": "0"})  # fmt: skip
    try:
        service.wait_serving()
        text = (tmp_path / "ub.log").read_text()
        line = next(line for line in text.splitlines() if '"message": "serving"' in line)
        entry = json.loads(line)
        assert entry["max_streams"] == 3
        assert entry["max_call_bytes"] == 128 << 20  # half the memory limit
        # What a call may hold before setting state aside on disk, and where: a thirty-second of it.
        assert entry["spill_after_bytes"] == 4 << 20
        assert entry["spill_dir"] == tempfile.gettempdir()
        assert entry["health_port"] > 0
        assert entry["tls"] is False
    finally:
        service.stop()


def test_a_service_started_on_an_earlier_log_announces_its_own_ports(tmp_path):
    """A log appended to by an earlier process holds that one's "serving" line: the ports read
    must be the new process's (a reused --work-dir of the bench once connected to dead ports)."""
    log = tmp_path / "ub.log"
    first = start_service("userbehavior", log)
    first.wait_serving()
    first.stop()
    # The first process's port stays busy, so the second cannot get it back by chance.
    with socket.socket() as held:
        held.bind(("127.0.0.1", first.grpc_port))
        second = start_service("userbehavior", log)
        try:
            second.wait_serving()
            lines = [json.loads(x) for x in log.read_text().splitlines() if '"message": "serving"' in x]
            assert len(lines) == 2
            assert second.grpc_port == lines[1]["grpc_port"] != first.grpc_port
        finally:
            second.stop()
