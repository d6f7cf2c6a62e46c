"""The progress bar: drawn when stderr is a terminal, absent otherwise."""

from __future__ import annotations

import os
import pty
import subprocess

from tests.conftest import BIN, ROOT


def run_with_stderr(services, data, out, stderr) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "music-analytics"), "run", "--data", str(data), "--out", str(out), "--quiet",
         "--mapreduce", services.target("mapreduce"), "--userbehavior", services.target("userbehavior"),
         "--recommendation", services.target("recommendation")],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr, timeout=120,
    )  # fmt: skip


def test_progress_bar_only_on_a_terminal(services, tmp_path):
    data = ROOT / "data" / "stream_data.csv"
    piped = run_with_stderr(services, data, tmp_path / "a.json", subprocess.PIPE)
    assert piped.returncode == 0 and piped.stderr == b""

    leader, follower = pty.openpty()
    try:
        proc = run_with_stderr(services, data, tmp_path / "b.json", follower)
        os.close(follower)
        follower = -1
        seen = b""
        while True:
            try:
                block = os.read(leader, 4096)
            except OSError:  # the terminal's other end is gone
                break
            if not block:
                break
            seen += block
    finally:
        if follower >= 0:
            os.close(follower)
        os.close(leader)
    assert proc.returncode == 0
    assert b"100.0%" in seen and b"[##############################]" in seen
