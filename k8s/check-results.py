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
    print(f"results OK: {summary['events_processed']} events, {summary['users']} users")
    return 0


if __name__ == "__main__":
    sys.exit(main())
