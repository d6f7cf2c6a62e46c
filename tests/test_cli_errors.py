"""The command line's error paths: one clear line, the right exit code, no traceback."""

from __future__ import annotations

from tests.conftest import cli


def assert_clean_error(proc, code: int, *fragments: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr


def test_missing_file_exits_2(tmp_path):
    assert_clean_error(cli("run", "--data", str(tmp_path / "nope.csv")), 2, "nope.csv: no such file")


def test_header_without_required_columns_exits_2(tmp_path):
    data = tmp_path / "bad.csv"
    data.write_text("user,song,artist\nu,s,a\n")
    proc = cli("run", "--data", str(data))
    assert_clean_error(proc, 2, f"{data}:1: header lacks required column(s) user_id, song_id, duration, timestamp")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_demo_with_missing_file_exits_2(tmp_path):
    assert_clean_error(cli("demo", "--data", str(tmp_path / "nope.csv")), 2, "no such file")


def test_bad_target_exits_2(tmp_path):
    data = tmp_path / "ok.csv"
    data.write_text("user_id,song_id,artist,duration,timestamp\nu,s,a,1,2024-01-01\n")
    proc = cli("run", "--data", str(data), "--mapreduce", "ipv4:nohostport")
    assert_clean_error(proc, 2, "bad service target", "expected HOST:PORT")


def test_strict_bad_row_exits_3_with_file_and_line(tmp_path, services):
    data = tmp_path / "dirty.csv"
    data.write_text("user_id,song_id,artist,duration,timestamp\nu,s,a,1,2024-01-01\nu,s,a,x,2024-01-01\n")
    proc = cli("run", "--data", str(data), "--strict", "--out", str(tmp_path / "r.json"),
               "--mapreduce", services.target("mapreduce"), "--userbehavior", services.target("userbehavior"),
               "--recommendation", services.target("recommendation"))  # fmt: skip
    assert_clean_error(proc, 3, f"{data}:3 field 'duration'")


def test_unwritable_results_path_exits_2(tmp_path, services):
    data = tmp_path / "ok.csv"
    data.write_text("user_id,song_id,artist,duration,timestamp\nu,s,a,1,2024-01-01\n")
    blocker = tmp_path / "file"
    blocker.write_text("")
    proc = cli("run", "--data", str(data), "--out", str(blocker / "r.json"),
               "--mapreduce", services.target("mapreduce"), "--userbehavior", services.target("userbehavior"),
               "--recommendation", services.target("recommendation"))  # fmt: skip
    assert_clean_error(proc, 2, "cannot write results")


def test_demo_needs_at_least_one_replica():
    assert_clean_error(cli("demo", "--replicas", "0"), 2, "must be at least 1")


def test_generate_rejects_negative_counts_and_unwritable_paths(tmp_path):
    assert_clean_error(cli("generate", "--events", "-1", "--out", str(tmp_path / "x.csv")), 2, "--events must be >= 0")
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert_clean_error(cli("generate", "--events", "5", "--out", str(blocker / "x.csv")), 2, "cannot write")


def test_generate_writes_what_run_reads(tmp_path, services):
    data = tmp_path / "g.csv"
    proc = cli("generate", "--events", "500", "--seed", "9", "--tricky", "--crlf", "--out", str(data))
    assert proc.returncode == 0, proc.stderr
    assert data.read_bytes().count(b"\r\n") == 501
    out = tmp_path / "r.json"
    proc = cli("run", "--data", str(data), "--out", str(out), "--quiet",
               "--mapreduce", services.target("mapreduce"), "--userbehavior", services.target("userbehavior"),
               "--recommendation", services.target("recommendation"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
