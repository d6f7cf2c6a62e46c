"""`run --wait-ready`: one window for every service at once, and a failure that says why.

The real command against loopback ports where nothing serves: each port is held by a socket that
is bound but not listening (a connection to it is refused, and no other process can take the port
while the test runs), or by one that accepts connections and never answers.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from music_analytics.services.common.contract import SERVICES
from tests.conftest import cli

WAIT = 2


@contextmanager
def held_ports(listen: bool) -> Iterator[dict[str, str]]:
    """An address per service, held by this process until the block ends."""
    with ExitStack() as stack:
        addresses = {}
        for name in SERVICES:
            sock = stack.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            if listen:
                sock.listen(16)  # connections complete in the kernel; nothing reads or answers them
            addresses[name] = f"127.0.0.1:{sock.getsockname()[1]}"
        yield addresses


@pytest.fixture
def refusing() -> Iterator[dict[str, str]]:
    with held_ports(listen=False) as addresses:
        yield addresses


@pytest.fixture
def silent() -> Iterator[dict[str, str]]:
    with held_ports(listen=True) as addresses:
        yield addresses


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "events.csv"
    path.write_text("user_id,song_id,artist,duration,timestamp\nu1,s1,a,10,2024-01-01T00:00:00Z\n")
    return path


def run(data: Path, addresses: dict[str, str], tmp_path: Path) -> tuple[float, str, int]:
    targets = [arg for name, address in addresses.items() for arg in (f"--{name}", address)]
    started = time.monotonic()
    proc = cli("run", "--data", str(data), "--out", str(tmp_path / "r.json"), "--wait-ready", str(WAIT), *targets,
               timeout=60)  # fmt: skip
    assert not (tmp_path / "r.json").exists()
    assert "Traceback" not in proc.stderr
    return time.monotonic() - started, proc.stderr, proc.returncode


def test_nothing_listening_anywhere_fails_after_one_wait_naming_every_service(data, refusing, tmp_path):
    elapsed, stderr, code = run(data, refusing, tmp_path)
    assert code == 1, stderr
    # One window for all three (process start-up included), not one window each.
    assert elapsed < 2 * WAIT, stderr
    (line,) = stderr.strip().splitlines()
    for name, address in refusing.items():
        assert f"{name}: not serving after {WAIT}s: 0 of 1 replica(s) SERVING; {address}: nothing listening " \
               "there (connection refused)" in line  # fmt: skip
    assert "DEADLINE_EXCEEDED" not in line


def test_services_that_accept_but_never_answer_fail_after_about_one_wait(data, silent, tmp_path):
    elapsed, stderr, code = run(data, silent, tmp_path)
    assert code == 1, stderr
    # A health check that hangs is cut off at the window's end (checks time out after 1 s at most).
    assert elapsed < 2 * WAIT + 1, stderr
    for name, address in silent.items():
        # Which of the two the last check saw depends on where gRPC's own connection timeout was.
        assert any(
            f"{name}: not serving after {WAIT}s: 0 of 1 replica(s) SERVING; {address}: {reason}" in stderr
            for reason in (
                "connections are accepted but nothing answers gRPC on them (no HTTP/2 SETTINGS frame)",
                "DEADLINE_EXCEEDED: no answer to a health check within",
            )
        ), stderr


def test_one_service_down_is_named_alone(data, refusing, services, tmp_path):
    addresses = refusing | {name: services.target(name) for name in ("mapreduce", "recommendation")}
    elapsed, stderr, code = run(data, addresses, tmp_path)
    assert code == 1, stderr
    assert elapsed < 2 * WAIT, stderr
    assert stderr.strip() == (
        f"error: userbehavior: not serving after {WAIT}s: 0 of 1 replica(s) SERVING; {refusing['userbehavior']}: "
        "nothing listening there (connection refused)"
    )
