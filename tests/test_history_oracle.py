"""The time statistics end to end: real services, the real CLI, on event data whose timestamps sit at
DST changes, leap days, year ends, half- and quarter-hour zones, before 1970 and in every timestamp
form; the results JSON's ``listening_stats`` and every per-user JSON line equal to the DuckDB oracle.

The data back to 1920 makes the daily lists a century long, which costs the pipeline seconds per
run: it is run in the zones whose old rules it exercises (Kathmandu's local mean time, Kolkata's
war-time +06:30, Berlin's pre-1970 changes); the other zones get the same data from 2016 on.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.run import compare_stats, compare_user_lines
from music_analytics.client.demo import LocalServices
from tests.conftest import run_pipeline
from tests.oracle import first_difference, oracle, oracle_stats, results_json
from tests.support.history_data import ZONES, write_history
from tests.support.oracle_match import assert_matches_oracle

FULL_SPAN_ZONES = ("Asia/Kathmandu", "Asia/Kolkata", "Europe/Berlin")
RECENT_SINCE = 2016


@pytest.fixture(scope="module")
def histories(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("history")
    return {
        "full": write_history(folder / "history.csv"),
        "recent": write_history(folder / "recent.csv", since=RECENT_SINCE),
    }


@pytest.fixture(scope="module")
def three_replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServices]:
    with LocalServices(replicas=3, log_dir=tmp_path_factory.mktemp("service-logs")) as running:
        yield running


def assert_time_statistics_match(results: dict, lines_path: Path, data: Path, timezone: str) -> None:
    want = oracle_stats(data, timezone)
    difference = first_difference(results["listening_stats"], want["listening_stats"], "listening_stats")
    assert difference is None, difference
    lines = [json.loads(line) for line in lines_path.read_text(encoding="utf-8").splitlines()]
    assert results["user_stats"] == {"path": str(lines_path), "users": len(want["user_lines"])}
    difference = first_difference(lines, want["user_lines"], "user lines")
    assert difference is None, difference


def test_the_recent_data_still_has_its_edges(histories: dict[str, Path]) -> None:
    """The 2016-on data keeps the cases that are not about old rules."""
    text = histories["recent"].read_text(encoding="utf-8")
    for form in ("2016-12-31T23:59:60Z", "2020-02-29", "2024-02-29", "+05:30", '"carol, jr."', "用户七"):
        assert form in text, form
    years = oracle_stats(histories["recent"], "UTC")["listening_stats"]["listening_activity"]["year"]
    assert int(years[0]["time_range"]) >= RECENT_SINCE


@pytest.mark.parametrize("timezone", ZONES)
def test_one_replica_equals_the_oracle(
    services: LocalServices, histories: dict[str, Path], tmp_path: Path, timezone: str
) -> None:
    history = histories["full" if timezone in FULL_SPAN_ZONES else "recent"]
    lines = tmp_path / "users.jsonl"
    results = run_pipeline(services, history, tmp_path / "results.json", "--timezone", timezone,
                           "--user-stats", str(lines))  # fmt: skip
    assert results["rows_rejected"] == 0, results["rejected_examples"]
    assert_time_statistics_match(results, lines, history, timezone)


@pytest.mark.parametrize("timezone,span", [("Australia/Lord_Howe", "recent"), ("Asia/Kathmandu", "full")])
def test_three_replicas_equal_the_oracle(
    three_replicas: LocalServices, histories: dict[str, Path], tmp_path: Path, timezone: str, span: str
) -> None:
    history = histories[span]
    lines = tmp_path / "users.jsonl"
    results = run_pipeline(three_replicas, history, tmp_path / "results.json", "--timezone", timezone,
                           "--user-stats", str(lines))  # fmt: skip
    assert results["rows_rejected"] == 0, results["rejected_examples"]
    assert_time_statistics_match(results, lines, history, timezone)


def test_crlf_file_default_zone_and_path_equal_the_oracle(services: LocalServices, tmp_path: Path) -> None:
    """No --timezone (UTC) and no --user-stats (next to --out); the other analytics still exact."""
    data = write_history(tmp_path / "history-crlf.csv", rows=1500, seed=29, crlf=True, since=RECENT_SINCE)
    results = run_pipeline(services, data, tmp_path / "run.json")
    assert_time_statistics_match(results, tmp_path / "run.users.jsonl", data, "UTC")
    assert_matches_oracle(results, oracle(data))


def test_the_benchmark_check_names_every_altered_statistic(
    services: LocalServices, histories: dict[str, Path], tmp_path: Path
) -> None:
    """bench/run.py decides "equal" with compare_stats and compare_user_lines: on a real run's
    output against the oracle's they find nothing, and each alteration is named."""
    data = histories["recent"]
    lines = tmp_path / "users.jsonl"
    results = run_pipeline(services, data, tmp_path / "results.json", "--timezone", "Asia/Kolkata",
                           "--user-stats", str(lines))  # fmt: skip
    want = results_json(data, timezone="Asia/Kolkata", user_stats=tmp_path / "oracle.jsonl")
    assert compare_stats(results, want) == []
    assert compare_user_lines(lines, tmp_path / "oracle.jsonl") == (len(want["userbehavior_results"]["users"]), [])

    altered = copy.deepcopy(results)
    stats = altered["listening_stats"]
    stats["top_artists"][0]["listen_count"] += 1
    stats["daily_activity"].pop()
    stats["listening_activity"]["day"][3]["to_ts"] += 1
    stats["listening_activity"]["month"].pop(0)
    problems = "\n".join(compare_stats(altered, want))
    for what in ("listening_stats.top_artists", "listening_stats.daily_activity",
                 "listening_activity.day: first at [3]", "listening_activity.month: first at [0]"):  # fmt: skip
        assert what in problems, problems
    assert compare_stats({}, want) == ["listening_stats: pipeline has null"]

    original = lines.read_text(encoding="utf-8").splitlines()
    user = json.loads(original[2])
    user["listening_activity"]["year"][0]["listen_count"] += 1
    changed = tmp_path / "changed.jsonl"
    changed.write_text("\n".join([*original[:2], json.dumps(user), *original[3:-1]]) + "\n", encoding="utf-8")
    compared, line_problems = compare_user_lines(changed, tmp_path / "oracle.jsonl")
    assert compared == len(original) - 1
    named = json.dumps(user["user_id"], ensure_ascii=False)
    assert f"user line 3 ({named}): ['listening_activity'] differ" in line_problems[0]
    assert line_problems[-1] == f"user lines: pipeline has {len(original) - 1}, duckdb {len(original)}"
