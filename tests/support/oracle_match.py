"""Comparing a pipeline's results JSON with the DuckDB oracle (tests/oracle.py), key for key."""

from __future__ import annotations

from typing import Any


def oracle_mismatches(results: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """Every part of ``results`` (the client's results JSON) that differs from ``expected``
    (``tests.oracle.oracle``), named; empty when the results are exact.

    A list rather than an assertion, so that a test running many pipelines can count exact runs
    and name each differing part of each run in one message.
    """
    differences = []

    def differ(what: str, got: object, want: object) -> None:
        if got != want:
            differences.append(f"{what}: got {_short(got)}, expected {_short(want)}")

    differ("top_songs", list(results["mapreduce_results"]["top_songs"].items()),
           [tuple(x) for x in expected["top_songs"]])  # fmt: skip
    listed = results["userbehavior_results"]["users"]
    users = {u["user_id"]: {"total_time": u["total_time"], "top_artist": u["top_artist"]} for u in listed}
    if users != expected["users"]:
        wrong = sorted(u for u in users.keys() | expected["users"].keys() if users.get(u) != expected["users"].get(u))
        differences.append(f"users: {len(wrong)} differ, first {_short(wrong[:3])}")
    differ("user order", [u["user_id"] for u in listed], sorted(expected["users"]))
    differ("top_users", results["userbehavior_results"]["top_users"], expected["top_users"])
    differ("trending_songs", results["recommendation_results"]["trending_songs"], expected["trending"])
    recommendations = results["recommendation_results"]["recommendations"]
    if recommendations != expected["recommendations"]:
        keys = recommendations.keys() | expected["recommendations"].keys()
        wrong = sorted(u for u in keys if recommendations.get(u) != expected["recommendations"].get(u))
        differences.append(f"recommendations: {len(wrong)} users differ, first {_short(wrong[:3])}")
    differ("events_processed", results["events_processed"], sum(expected["song_counts"].values()))
    differ("distinct_songs", results["mapreduce_results"]["distinct_songs"], len(expected["song_counts"]))
    return differences


def assert_matches_oracle(results: dict[str, Any], expected: dict[str, Any]) -> None:
    differences = oracle_mismatches(results, expected)
    assert not differences, "results differ from the oracle: " + "; ".join(differences)


def _short(value: object, limit: int = 300) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
