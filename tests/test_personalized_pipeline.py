"""Personalized artists through the whole pipeline: the real CLI and services.

Every user's line carries ``recommended_artists`` equal to the oracle's (plays aggregated in SQL,
the service's model) with one or three UserBehavior replicas; rows of many plays count as that
many plays everywhere; play-count files are refused by ``run`` with a pointer to ``evaluate``.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from music_analytics.client.demo import LocalServices
from music_analytics.client.generate import generate
from tests.conftest import cli, run_pipeline
from tests.oracle import first_difference, oracle_recommendations, oracle_stats


@pytest.fixture(scope="module")
def taste_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("taste") / "events.csv"
    generate(path, 30_000, 5)
    return path


@pytest.fixture(scope="module")
def three_replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServices]:
    with LocalServices(replicas=3, log_dir=tmp_path_factory.mktemp("service-logs")) as running:
        yield running


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def recommended(line: dict) -> dict:
    return {k: line[k] for k in ("recommended_artists", "recommended_by")}


@pytest.mark.parametrize("replicas", [1, 3])
def test_every_user_gets_the_oracles_artists(taste_data, services, three_replicas, tmp_path, replicas):
    running = services if replicas == 1 else three_replicas
    results = run_pipeline(running, taste_data, tmp_path / "r.json")
    got = {line["user_id"]: recommended(line) for line in lines(tmp_path / "r.users.jsonl")}
    want = oracle_recommendations(taste_data)
    difference = first_difference(got, want, "recommendations")
    assert difference is None, difference
    model = results["personalized_recommendations"]
    assert model["algorithm"] == "bm25" and model["n"] == 10 and model["users"] == len(want)
    assert sum(model["users_by"].values()) == len(want)
    by = {}
    for r in want.values():
        by[r["recommended_by"]] = by.get(r["recommended_by"], 0) + 1
    assert {k: v for k, v in model["users_by"].items() if v} == by


def test_n_sets_the_length_and_zero_leaves_the_lines_as_they_were(taste_data, services, tmp_path):
    run_pipeline(services, taste_data, tmp_path / "three.json", "--personalized-n", "3")
    three = lines(tmp_path / "three.users.jsonl")
    assert {len(line["recommended_artists"]) for line in three} == {3}
    results = run_pipeline(services, taste_data, tmp_path / "none.json", "--personalized-n", "0")
    none = lines(tmp_path / "none.users.jsonl")
    assert results["personalized_recommendations"] is None
    assert not any("recommended_artists" in line for line in none)
    assert [{k: v for k, v in line.items() if not k.startswith("recommended_")} for line in three] == none


def test_another_algorithm_is_used_and_named(taste_data, services, tmp_path):
    results = run_pipeline(
        services, taste_data, tmp_path / "r.json", "--recommender", "cosine", "--personalized-n", "2"
    )
    assert results["personalized_recommendations"]["algorithm"] == "cosine"
    assert {line["recommended_by"].split("+")[0] for line in lines(tmp_path / "r.users.jsonl")} <= {
        "cosine",
        "popularity",
    }


def test_an_unknown_algorithm_is_refused_before_any_work(taste_data, tmp_path):
    proc = cli("run", "--data", str(taste_data), "--out", str(tmp_path / "r.json"), "--recommender", "magic")
    assert proc.returncode == 2
    assert "--recommender: unknown algorithm 'magic'" in proc.stderr and "bm25" in proc.stderr


def test_rows_of_many_plays_count_as_that_many_plays(services, tmp_path):
    rows = [
        ("u1", "s1", "A", 600, "2024-03-01T10:00:00Z", 3),
        ("u1", "s2", "B", 200, "2024-03-02T10:00:00Z", 1),
        ("u2", "s1", "A", 400, "2024-03-03T23:30:00Z", 2),
        ("u2", "s3", "C", 900, "2024-04-01T08:00:00Z", 5),
        ("u3", "s2", "B", 100, "2024-04-02T08:00:00Z", 1),
    ]
    weighted, expanded = tmp_path / "weighted.csv", tmp_path / "expanded.csv"
    with weighted.open("w", newline="") as w, expanded.open("w", newline="") as e:
        ww, ew = csv.writer(w), csv.writer(e)
        ww.writerow(["user_id", "song_id", "artist", "duration", "timestamp", "plays"])
        ew.writerow(["user_id", "song_id", "artist", "duration", "timestamp"])
        for user, song, artist, seconds, ts, plays in rows:
            ww.writerow([user, song, artist, seconds, ts, plays])
            # One row per play; the row's seconds go with its first play.
            for k in range(plays):
                ew.writerow([user, song, artist, seconds if k == 0 else 0, ts])
    a = run_pipeline(services, weighted, tmp_path / "a.json", "--timezone", "Europe/Berlin")
    b = run_pipeline(services, expanded, tmp_path / "b.json", "--timezone", "Europe/Berlin")
    assert a["events_processed"] == len(rows) and b["events_processed"] == sum(r[5] for r in rows)
    for key in ("mapreduce_results", "userbehavior_results", "recommendation_results", "listening_stats"):
        assert a[key] == b[key], key
    assert a["mapreduce_results"]["top_songs"]["A - s1"] == 5
    assert lines(tmp_path / "a.users.jsonl") == lines(tmp_path / "b.users.jsonl")


def test_a_play_count_file_is_refused_by_run_with_a_pointer_to_evaluate(tmp_path):
    sample = Path(__file__).resolve().parents[1] / "data" / "samples" / "playcounts.tsv"
    proc = cli("run", "--data", str(sample), "--out", str(tmp_path / "r.json"), "--wait-ready", "1")
    assert proc.returncode == 2, proc.stderr
    assert "play counts" in proc.stderr and "music-analytics evaluate" in proc.stderr
    assert not (tmp_path / "r.json").exists()


def test_a_recommender_that_cannot_hold_every_users_plays_costs_the_artists_only(tmp_path):
    """Every user's plays at once past the Recommendation service's per-call limit: the run ends
    with everything else written and exact, no artists in the lines, and says why and what to do."""
    taste_data = tmp_path / "events.csv"
    generate(taste_data, 200_000, 5)  # about 150k (user, artist) pairs: past a 1 MiB limit
    with LocalServices(replicas=1, log_dir=tmp_path) as running:
        small = LocalServices(names=("recommendation",), log_dir=tmp_path / "small")
        (tmp_path / "small").mkdir()
        os.environ["MUSIC_ANALYTICS_MAX_CALL_BYTES"] = "1Mi"
        try:
            small.start()
        finally:
            del os.environ["MUSIC_ANALYTICS_MAX_CALL_BYTES"]
        try:
            out = tmp_path / "r.json"
            proc = cli(
                "run", "--data", str(taste_data), "--out", str(out), "--quiet",
                "--mapreduce", running.target("mapreduce"), "--userbehavior", running.target("userbehavior"),
                "--recommendation", small.target("recommendation"),
            )  # fmt: skip
        finally:
            small.stop()
    assert proc.returncode == 0, proc.stderr
    assert "warning: the per-user statistics have no personalized artists" in proc.stderr
    assert "RESOURCE_EXHAUSTED" in proc.stderr and "--personalized-n 0" in proc.stderr
    results = json.loads(out.read_text())
    assert results["personalized_recommendations"] is None
    assert "per-call limit" in results["personalized_recommendations_skipped"]
    got = lines(tmp_path / "r.users.jsonl")
    want = oracle_stats(taste_data, "UTC", personalized_n=0)["user_lines"]
    assert first_difference(got, want, "user_lines") is None
