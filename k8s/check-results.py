#!/usr/bin/env python3
"""Check the pipeline's stored summary (the results ConfigMap's summary.json) read from stdin.

`make kind-e2e` pipes the ConfigMap value here: a Job that "succeeded" without storing real
results must fail the e2e, so an empty value, invalid JSON or a run that processed nothing
exits 1 with the reason. Prints the summary when it is good. Standard library only: runs with any
python3, no venv needed.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def problems(summary: Any) -> list[str]:
    """What is wrong with a stored summary; empty when it is a real run's results."""
    if not isinstance(summary, dict):
        return [f"summary is a {type(summary).__name__}, not an object"]
    found = []
    events = summary.get("events_processed")
    if not isinstance(events, int) or isinstance(events, bool) or events <= 0:
        found.append(f"events_processed is {events!r}, expected a positive count")
    for key in ("top_songs", "top_users", "trending_songs"):
        if not summary.get(key):
            found.append(f"{key} is missing or empty")
    users = summary.get("users")
    if not isinstance(users, int) or users <= 0:
        found.append(f"users is {users!r}, expected a positive count")
    # The time statistics: site-wide here, per user in the file on the results volume.
    stats = summary.get("listening_stats")
    if not isinstance(stats, dict):
        found.append("listening_stats is missing")
    else:
        if not stats.get("daily_activity"):
            found.append("listening_stats.daily_activity is missing or empty")
        if not (stats.get("listening_activity") or {}).get("year"):
            found.append("listening_stats.listening_activity.year is missing or empty")
    user_stats = summary.get("user_stats")
    if not isinstance(user_stats, dict) or not user_stats.get("path") or user_stats.get("users") != users:
        found.append(f"user_stats is {user_stats!r}, expected the per-user file's path and {users!r} users")
    lines = user_stats.get("users") if isinstance(user_stats, dict) else None
    found += model_problems(summary.get("personalized_recommendations"), lines)
    return found


def model_problems(model: Any, lines: Any) -> list[str]:
    """What is wrong with the recommender's summary, given the per-user file's line count; null
    (personalized artists off, or a client from before them, which leaves the key out) is fine."""
    if model is None:
        return []
    where = "personalized_recommendations"
    if not isinstance(model, dict):
        return [f"{where} is a {type(model).__name__}, expected an object or null"]
    found = []
    algorithm = model.get("algorithm")
    if not isinstance(algorithm, str) or not algorithm:
        found.append(f"{where}.algorithm is {algorithm!r}, expected the recommender's name")
    n = model.get("n")
    if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
        found.append(f"{where}.n is {n!r}, expected the artists asked for per user (a model is only trained for n > 0)")
    # The model is trained on every user's plays: a user missing from it got no artists.
    if model.get("users") != lines:
        found.append(f"{where}.users is {model.get('users')!r}, expected user_stats.users ({lines!r})")
    users_by = model.get("users_by")
    counts = list(users_by.values()) if isinstance(users_by, dict) else None
    if counts is None or not all(isinstance(c, int) for c in counts) or sum(counts) != lines:
        found.append(f"{where}.users_by is {users_by!r}, expected how each of the {lines!r} users got their artists")
    return found


def main() -> int:
    text = sys.stdin.read()
    if not text.strip():
        print("error: the results ConfigMap has no summary.json (nothing was stored)", file=sys.stderr)
        return 1
    try:
        summary = json.loads(text)
    except json.JSONDecodeError as exc:
        print(f"error: summary.json is not valid JSON: {exc}", file=sys.stderr)
        return 1
    found = problems(summary)
    if found:
        print("error: stored results are not a real run's: " + "; ".join(found), file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2, sort_keys=True))
    model = summary.get("personalized_recommendations")
    artists = f", {model['n']} artists each by {model['algorithm']}" if model else ", no personalized artists"
    print(f"results OK: {summary['events_processed']} events, {summary['users']} users{artists}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
