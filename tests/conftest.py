"""Shared fixtures: real service processes on loopback and a way to run the real CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from music_analytics.client.demo import LocalServices

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def require_binary(name: str) -> str:
    """The path of a system tool the test needs: under CI its absence fails the test (CI must
    install it), elsewhere it skips."""
    path = shutil.which(name)
    if path:
        return path
    message = f"`{name}` not found: install the Debian package (see .ci/run)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


def cli(*args: str, timeout: float = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the installed `music-analytics` command, as a user would."""
    return subprocess.run(
        [str(BIN / "music-analytics"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=os.environ | (env or {}),
    )


def run_pipeline(services: LocalServices, data: Path, out: Path, *extra: str) -> dict:
    proc = cli(
        "run", "--data", str(data), "--out", str(out), "--quiet",
        "--mapreduce", services.target("mapreduce"),
        "--userbehavior", services.target("userbehavior"),
        "--recommendation", services.target("recommendation"),
        *extra,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return json.loads(out.read_text())


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServices]:
    """One replica of each service for the whole session (stateless between calls)."""
    with LocalServices(replicas=1, log_dir=tmp_path_factory.mktemp("service-logs")) as running:
        yield running


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """Keep each phase's report on the test item, so a fixture can record how the test went."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
