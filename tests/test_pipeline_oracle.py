"""End to end: real service processes, the real CLI, results equal to the DuckDB oracle key for key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from music_analytics.client.generate import generate
from tests.conftest import cli, run_pipeline
from tests.oracle import oracle
from tests.support.oracle_match import assert_matches_oracle


@pytest.fixture(scope="module")
def generated_100k(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "events-100k.csv"
    generate(path, 100_000, seed=7)
    return path


def test_100k_generated_events_equal_the_oracle(services, generated_100k, tmp_path):
    results = run_pipeline(services, generated_100k, tmp_path / "results.json")
    assert results["rows_rejected"] == 0
    assert_matches_oracle(results, oracle(generated_100k))


@pytest.mark.parametrize("crlf", [False, True])
def test_unicode_quoted_commas_and_crlf_equal_the_oracle(services, tmp_path, crlf):
    data = tmp_path / "tricky.csv"
    generate(data, 20_000, seed=11, tricky=True, crlf=crlf)
    assert (b"\r\n" in data.read_bytes()) == crlf
    assert_matches_oracle(run_pipeline(services, data, tmp_path / "results.json"), oracle(data))


def test_ties_everywhere_are_broken_as_specified(services, tmp_path):
    # Every song played twice, every user the same total time, each user's artists tied.
    rows = ["user_id,song_id,artist,duration,timestamp"]
    for u in ["u3", "u1", "u2", "u10", "u0", "u5", "u4"]:
        for artist, song in [("Zed", "s9"), ("Abe", "s2"), ("Émile", "s1"), ("abe", "s3")]:
            rows.append(f"{u},{song},{artist},10,2024-01-01T00:00:00Z")
    data = tmp_path / "ties.csv"
    data.write_text("\n".join(rows) + "\n")
    results = run_pipeline(services, data, tmp_path / "results.json")
    assert_matches_oracle(results, oracle(data))


def test_bad_rows_are_reported_and_every_valid_row_still_counts(services, generated_100k, tmp_path):
    lines = generated_100k.read_bytes().splitlines(keepends=True)
    header, body = lines[0], lines[1:20_001]
    bad = [b"broken row\n", b"u,s,a,notanumber,2024-01-01\n", b",s,a,1,2024-01-01\n",
           b"u,s,a,1,not-a-time\n", b"u,s,\xff\xfe,1,2024-01-01\n", b"u,s,a,-3,2024-01-01\n"]  # fmt: skip
    dirty, clean = [header], [header]
    bad_lines = []
    for i, line in enumerate(body):
        if i % 3000 == 1500:
            dirty.append(bad[len(bad_lines) % len(bad)])
            bad_lines.append(len(dirty))
        dirty.append(line)
        clean.append(line)
    (tmp_path / "dirty.csv").write_bytes(b"".join(dirty))
    (tmp_path / "clean.csv").write_bytes(b"".join(clean))
    results = run_pipeline(services, tmp_path / "dirty.csv", tmp_path / "results.json")
    assert results["rows_rejected"] == len(bad_lines)
    assert [e["line"] for e in results["rejected_examples"]] == bad_lines
    assert {e["reason"] for e in results["rejected_examples"]} == {
        "wrong_field_count", "invalid_duration", "empty_field", "invalid_timestamp", "invalid_utf8"}  # fmt: skip
    assert_matches_oracle(results, oracle(tmp_path / "clean.csv"))


def test_results_json_keeps_every_key_of_the_original(services, tmp_path):
    results = run_pipeline(services, Path("data/stream_data.csv").resolve(), tmp_path / "r.json")
    assert results["workflow"] == "Client → MapReduce → UserBehavior → Recommendation → Client"
    assert set(results["performance"]) >= {"mapreduce_time", "userbehavior_time", "recommendation_time",
                                           "total_workflow_time"}  # fmt: skip
    assert isinstance(results["events_processed"], int) and isinstance(results["rows_rejected"], int)
    assert isinstance(results["rejected_examples"], list)
    assert_matches_oracle(results, oracle(Path("data/stream_data.csv")))


def test_demo_runs_the_bundled_data_and_prints_the_analytics(tmp_path):
    out = tmp_path / "demo.json"
    proc = cli("demo", "--out", str(out), timeout=120)
    assert proc.returncode == 0, proc.stderr
    for heading in ("Top songs", "Most active users", "Trending songs", "Sample recommendations", "Timings"):
        assert heading in proc.stdout
    results = json.loads(out.read_text())
    assert_matches_oracle(results, oracle(Path("data/stream_data.csv")))
