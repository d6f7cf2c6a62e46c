"""The benchmark end to end on a small input: real services, real client, real DuckDB, all matching."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.run import compare, rss_target_mb
from tests.oracle import results_json

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench" / "run.py"


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("bench")
    out = tmp / "results.json"
    proc = subprocess.run(
        [
            *(sys.executable, str(BENCH), "--quick", "--sizes", "20000", "--replicas", "1,2"),
            *("--data-dir", str(tmp / "data"), "--out", str(out)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "events/s" in proc.stdout  # the table was printed
    # One line of CPU seconds per configuration under it.
    cpu_lines = [line for line in proc.stdout.splitlines() if line.startswith("CPU-s")]
    assert [line.split(":")[0].split()[-1] for line in cpu_lines] == ["x1", "x2"], proc.stdout
    return json.loads(out.read_text(encoding="utf-8"))


def test_quick_bench_matches_duckdb(quick: dict) -> None:
    assert quick["results_match"] is True
    size = quick["sizes"]["20000"]
    assert size["results_match"] is True
    assert size["events"] == 20000 and size["file_bytes"] > 0
    assert set(size["pipeline"]) == {"1", "2"}
    duck = size["duckdb"]
    assert duck["ok"] and duck["threads"] == 2
    assert len(duck["wall_runs"]) == 2 and duck["wall_median"] > 0 and duck["peak_rss_mb"] > 0


@pytest.mark.parametrize("replicas", [1, 2])
def test_quick_bench_fields(quick: dict, replicas: int) -> None:
    entry = quick["sizes"]["20000"]["pipeline"][str(replicas)]
    assert entry["results_match"] is True, entry["mismatches"] + entry["failures"]
    assert entry["mismatches"] == [] and entry["failures"] == []
    assert len(entry["wall_runs"]) == 1 and entry["wall_median"] > 0
    assert entry["ratio_vs_duckdb"] > 0 and entry["duckdb_wall_median"] > 0
    assert len(entry["ratio_runs"]) == 1 and entry["wall_min"] == entry["wall_median"]
    assert entry["events_per_second"] > 0
    assert entry["stage_seconds_median"]["total_workflow_time"] > 0
    peak = entry["peak_rss_mb"]
    expected = {"client", "recommendation-0"} | {
        f"{s}-{k}" for s in ("mapreduce", "userbehavior") for k in range(replicas)
    }
    assert set(peak) == expected
    assert all(v is not None and 20 < v < 2000 for v in peak.values())
    assert entry["targets"]["rss_max_mb"] == rss_target_mb(20000) and entry["targets"]["ratio_max"] is None
    assert entry["targets"]["rss_met"] is (max(peak.values()) <= rss_target_mb(20000))


@pytest.mark.parametrize("replicas", [1, 2])
def test_quick_bench_cpu_seconds(quick: dict, replicas: int) -> None:
    entry = quick["sizes"]["20000"]["pipeline"][str(replicas)]
    plain, with_recs = entry["cpu_seconds_median"], entry["personalized"]["cpu_seconds_median"]
    services = set(entry["peak_rss_mb"]) - {"client"}
    assert set(plain) == {"client", "duckdb"} | services
    assert set(with_recs) == {"client"} | services  # DuckDB has no run with recommendations
    assert plain["client"] > 0 and plain["duckdb"] > 0 and with_recs["client"] > 0
    assert all(v >= 0 for v in (*plain.values(), *with_recs.values()))
    # On 20,000 events a service may do less than a clock tick's work in one of the two runs (the
    # Recommendation service without personalized artists); each works in one of them at least.
    assert all(plain[name] + with_recs[name] > 0 for name in services), (plain, with_recs)
    # CPU seconds of a process are at most its cores' share of the wall time around it.
    cores = quick["machine"]["cpus"]
    assert plain["client"] <= entry["wall_median"] * cores
    assert with_recs["client"] <= entry["personalized"]["wall_median"] * cores
    assert entry["personalized"]["skipped"] == []  # every user got their artists


def test_quick_bench_growth_entries(quick: dict) -> None:
    # One size: no pair to compare, but an entry for each replica count.
    assert quick["growth"] == {"1": [], "2": []}


def test_compare_reports_every_kind_of_difference(quick: dict) -> None:
    """The check that decides "matched" must not be vacuous: feed it altered results."""
    data = Path(quick["sizes"]["20000"]["file"])
    want = results_json(data)
    want_top = list(want["mapreduce_results"]["top_songs"].items())
    pipeline = copy.deepcopy(want) | {"rows_rejected": 0}
    assert compare(pipeline, want) == []

    altered = copy.deepcopy(pipeline)
    # Same counts, two songs swapped: order matters.
    (k0, c0), (k1, c1) = want_top[0], want_top[1]
    altered["mapreduce_results"]["top_songs"] = dict([(k1, c1), (k0, c0), *want_top[2:]])
    altered["userbehavior_results"]["users"][3]["total_time"] += 1
    altered["userbehavior_results"]["top_users"].reverse()
    user = altered["userbehavior_results"]["users"][5]["user_id"]
    altered["recommendation_results"]["recommendations"][user] = ["nope"]
    altered["events_processed"] -= 1
    problems = "\n".join(compare(altered, want))
    for what in ("top_songs", "user:", "top_users", f"recommendations[{user}]", "events_processed"):
        assert what in problems, problems
