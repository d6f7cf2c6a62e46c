"""The Makefile, run by real make: help, what `make demo`/`make test` install, the kind e2e steps.

The install checks use `make -n` (make's own dry run: the commands it would run, given the
stamps' and inputs' timestamps) against a throwaway venv path, so nothing is installed. The
e2e's Job wait runs k8s/wait-job.sh with a kubectl whose `get` is the real kubectl evaluating the
script's jsonpath on a Job object from a file (`kubectl label --local`): only the API server is
stood in for. k8s/check-results.py runs on summaries made by the client's own summary code.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from music_analytics.client.k8s_results import SUMMARY_KEY, summary_data

ROOT = Path(__file__).resolve().parent.parent
MAKE = shutil.which("make")
pytestmark = pytest.mark.skipif(MAKE is None, reason="make not installed")


def make(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MAKE, "--no-print-directory", *args], cwd=ROOT, capture_output=True, text=True, timeout=60, env=env
    )


def phony_targets() -> set[str]:
    # make's database (-p) after reading every included makefile; -q: run nothing.
    database = make("-pRrq", "help").stdout
    targets = set()
    for line in database.splitlines():
        if line.startswith(".PHONY:"):
            targets |= set(line.split(":", 1)[1].split())
    return targets


def test_help_lists_every_target():
    result = make("help")
    assert result.returncode == 0, result.stderr
    listed = {line.split()[0] for line in result.stdout.splitlines() if line.strip()}
    phony = phony_targets()
    assert {"demo", "test", "image", "kind-up", "kind-e2e", "kind-down", "help"} <= phony
    assert phony - listed == set(), f"targets without a `## description`: {sorted(phony - listed)}"
    assert listed - phony == set(), f"listed but not .PHONY targets: {sorted(listed - phony)}"
    # Every entry has a description, and `make` alone shows the help.
    assert all(len(line.split(None, 1)) == 2 for line in result.stdout.splitlines() if line.strip())
    assert make().stdout == result.stdout


def test_cluster_makefile_is_included():
    # The real-cluster targets (cluster-up, cluster-e2e, ...) come from this file when it exists.
    assert re.search(r"^-include k8s/cluster/cluster\.mk$", (ROOT / "Makefile").read_text(), re.MULTILINE)


def dry_run(target: str, venv: Path) -> str:
    result = make("-n", target, f"VENV={venv}")
    assert result.returncode == 0, result.stderr
    return result.stdout


def installs(commands: str) -> list[str]:
    return [line for line in commands.splitlines() if "pip install" in line and "--upgrade pip" not in line]


def test_demo_installs_the_runtime_only(tmp_path: Path):
    venv = tmp_path / "venv"
    (demo,) = installs(dry_run("demo", venv))
    assert re.search(r"pip install --quiet -e \.$", demo), demo
    (test,) = installs(dry_run("test", venv))
    assert "-e '.[test]'" in test, test


def test_installs_are_idempotent(tmp_path: Path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").touch()
    # Stamps newer than every input: nothing to install.
    (venv / ".runtime-installed").touch()
    (venv / ".test-installed").touch()
    assert installs(dry_run("demo", venv)) == []
    assert installs(dry_run("test", venv)) == []
    # A runtime install doesn't count as a test install...
    (venv / ".test-installed").unlink()
    assert installs(dry_run("demo", venv)) == []
    assert len(installs(dry_run("test", venv))) == 1
    # ...and an edited pyproject.toml re-installs both.
    (venv / ".test-installed").touch()
    old = 946_684_800  # 2000-01-01: older than every input, however long ago they were checked out
    os.utime(venv / ".runtime-installed", (old, old))
    os.utime(venv / ".test-installed", (old, old))
    assert len(installs(dry_run("demo", venv))) == 1
    assert len(installs(dry_run("test", venv))) == 1


KUBECTL = shutil.which("kubectl")

FAKE_API_KUBECTL = """#!/bin/sh
# Stands in for the API server only: `get` is the real kubectl on the Job in $JOB_FILE.
# Called as: -n NAMESPACE get job/NAME -o jsonpath=...  |  -n NAMESPACE logs job/NAME ...
case "$3" in
  get) exec "$REAL_KUBECTL" label --local -f "$JOB_FILE" probe=1 "$5" "$6" ;;
  logs) echo "log of $4" ;;
esac
"""


def job(*conditions: tuple[str, str]) -> dict:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "music-analytics-run-3", "namespace": "music-analytics"},
        "spec": {"template": {"spec": {"containers": [{"name": "run", "image": "x"}], "restartPolicy": "Never"}}},
        "status": {
            "conditions": [
                {"type": kind, "status": status, "reason": "BackoffLimitExceeded", "message": "backoff limit reached"}
                for kind, status in conditions
            ]
        },
    }


def wait_job(tmp_path: Path, state: dict, timeout: int = 30) -> tuple[subprocess.CompletedProcess[str], float]:
    if KUBECTL is None:
        pytest.skip("kubectl not installed")
    fake = tmp_path / "kubectl"
    fake.write_text(FAKE_API_KUBECTL)
    fake.chmod(0o755)
    (tmp_path / "job.json").write_text(json.dumps(state))
    env = {
        **os.environ,
        "KUBECTL": str(fake),
        "REAL_KUBECTL": KUBECTL,
        "JOB_FILE": str(tmp_path / "job.json"),
        "WAIT_JOB_POLL_SECONDS": "1",
    }
    started = time.monotonic()
    result = subprocess.run(
        [str(ROOT / "k8s" / "wait-job.sh"), "music-analytics", "music-analytics-run-3", str(timeout)],
        capture_output=True, text=True, env=env, timeout=timeout + 30,
    )  # fmt: skip
    return result, time.monotonic() - started


def test_wait_job_stops_at_once_when_the_job_fails(tmp_path: Path):
    result, took = wait_job(tmp_path, job(("FailureTarget", "True"), ("Failed", "True")), timeout=60)
    assert result.returncode == 1, result
    assert took < 10  # not the whole timeout
    assert "backoff limit reached" in result.stderr and "log of job/music-analytics-run-3" in result.stderr


def test_wait_job_succeeds_on_complete(tmp_path: Path):
    result, _ = wait_job(tmp_path, job(("SuccessCriteriaMet", "True"), ("Complete", "True")))
    assert result.returncode == 0, result
    assert "log of job/" in result.stdout


def test_wait_job_times_out_on_a_running_job(tmp_path: Path):
    result, took = wait_job(tmp_path, job(("Failed", "False")), timeout=2)
    assert result.returncode == 2, result
    assert took < 10


def test_kind_e2e_waits_for_complete_or_failed_and_checks_results():
    commands = make("-n", "kind-e2e").stdout
    assert "condition=complete" not in commands, "kubectl wait on complete alone waits out the timeout on failure"
    assert "k8s/wait-job.sh" in commands
    assert re.search(r"summary\\\.json.*\n?.*\| .*k8s/check-results\.py", commands), commands


def check_results(text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "k8s" / "check-results.py")], input=text, capture_output=True, text=True
    )


def stored(summary: dict) -> str:
    """The ConfigMap's summary.json value, as the client writes it."""
    return summary_data(summary)[SUMMARY_KEY]


GOOD = {
    "events_processed": 1200,
    "rows_rejected": 0,
    "performance": {"total_workflow_time": 1.0},
    "top_songs": {"Abba - s1": 3},
    "top_users": ["u1"],
    "trending_songs": ["Abba - s1"],
    "users": 1,
    "rejected_examples": [],
    "listening_stats": {
        "timezone": "UTC",
        "daily_activity": [{"day": "Monday", "hour": 8, "listen_count": 3}],
        "listening_activity": {
            "year": [{"time_range": "2024", "from_ts": 1704067200, "to_ts": 1735689599, "listen_count": 3}]
        },
    },
    "user_stats": {"path": "/work/results/run_grpc_metrics.users.jsonl", "users": 1},
}


def test_check_results_accepts_a_real_summary():
    result = check_results(stored(GOOD))
    assert result.returncode == 0, result.stderr
    assert "1200 events" in result.stdout


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "no summary.json"),
        ("{not json", "not valid JSON"),
        (stored({**GOOD, "events_processed": 0}), "events_processed"),
        (stored({**GOOD, "top_songs": {}}), "top_songs"),
        (stored({k: v for k, v in GOOD.items() if k != "listening_stats"}), "listening_stats is missing"),
        (stored({**GOOD, "user_stats": {"path": None, "users": 0}}), "user_stats"),
        ("[]", "not an object"),
    ],
)
def test_check_results_rejects_missing_or_empty_results(text: str, reason: str):
    result = check_results(text)
    assert result.returncode == 1
    assert reason in result.stderr


def test_workflow_builds_like_users_do():
    # The GitHub workflow builds with `make image` (sources + PyPI), no host wheel step, and
    # waits for Jobs with the same script as `make kind-e2e`.
    workflow = (ROOT / ".github" / "workflows" / "kind-e2e.yml").read_text()
    assert "build-wheels" not in workflow and "build/wheels" not in workflow
    assert "make --no-print-directory image" in workflow
    assert "condition=complete" not in workflow and "k8s/wait-job.sh" in workflow
