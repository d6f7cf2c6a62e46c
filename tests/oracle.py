"""The independent oracle: the pipeline's analytics as SQL in DuckDB over the CSV file.

Shares no code with the pipeline, on purpose. It assumes a file of valid rows only (tests write clean
files for it). Strings compare byte-wise (DuckDB's default with no collation, made explicit below),
which for UTF-8 is the same order as Python's ``str`` ordering (Unicode code points).

Also a script, so the benchmark can run it as a separate process (its own wall time and peak RSS)::

    python tests/oracle.py FILE --out RESULTS.json [--threads 2]

writes the results in the shape of the client's results JSON (the parts that can be compared).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import duckdb

# Every column VARCHAR and no sniffing: the oracle must see exactly the bytes of the file, with
# RFC 4180 quoting ("" inside quotes is a quote). duration is cast explicitly afterwards.
_READ_CSV = """read_csv(
    $path, header = true, auto_detect = false, delim = ',', quote = '"', escape = '"',
    columns = {'user_id': 'VARCHAR', 'song_id': 'VARCHAR', 'artist': 'VARCHAR',
               'duration': 'VARCHAR', 'timestamp': 'VARCHAR'})"""

# One scan of the file into the two aggregates everything else derives from: plays per
# (artist, song) and plays and seconds per (user, artist). Both are far smaller than the rows.
_AGGREGATES = [
    f"""CREATE OR REPLACE TEMP TABLE rows AS
        SELECT user_id, song_id, artist, CAST(duration AS BIGINT) AS duration FROM {_READ_CSV}""",
    """CREATE OR REPLACE TEMP TABLE song_plays AS
        SELECT artist, song_id, count(*) AS plays FROM rows GROUP BY artist, song_id""",
    """CREATE OR REPLACE TEMP TABLE user_artist AS
        SELECT user_id, artist, count(*) AS plays, sum(duration) AS seconds
        FROM rows GROUP BY user_id, artist""",
    "DROP TABLE rows",
    # The key is what the analytics count by. Two (artist, song) pairs could in theory spell the
    # same key, so counts are summed per key, and the key's artist is the smallest one (the rule).
    """CREATE OR REPLACE TEMP TABLE songs AS
        SELECT artist || ' - ' || song_id AS key, sum(plays) AS plays, min(artist) AS artist
        FROM song_plays GROUP BY key""",
    """CREATE OR REPLACE TEMP TABLE trending AS
        SELECT key, plays, artist, row_number() OVER (ORDER BY plays DESC, key ASC) AS rank
        FROM songs ORDER BY plays DESC, key ASC LIMIT 10""",
    """CREATE OR REPLACE TEMP TABLE users AS
        SELECT user_id, sum(seconds) AS total_time,
               first(artist ORDER BY plays DESC, artist ASC) AS top_artist
        FROM user_artist GROUP BY user_id""",
]

_TOP_SONGS = "SELECT key, plays FROM trending ORDER BY rank"
_SONG_COUNTS = "SELECT key, plays FROM songs"
_DISTINCT_SONGS = "SELECT count(*) FROM songs"
_EVENTS = "SELECT sum(plays) FROM songs"
_USERS = "SELECT user_id, total_time, top_artist FROM users ORDER BY user_id"
_TOP_USERS = "SELECT user_id FROM users ORDER BY total_time DESC, user_id ASC LIMIT 5"
# Every user gets a list, empty when all trending songs are by their top artist.
_RECOMMENDATIONS = """
SELECT u.user_id,
       coalesce(list(t.key ORDER BY t.rank) FILTER (WHERE t.artist <> u.top_artist), []) AS recs
FROM users u CROSS JOIN (SELECT * FROM trending WHERE rank <= 5) t
GROUP BY u.user_id
"""


def _connect(threads: int | None) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    # No collation: byte-wise string order, the same as Python's str order for UTF-8.
    con.execute("SET default_collation = ''")
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    return con


def _compute(path: str | Path, threads: int | None, all_songs: bool) -> dict[str, Any]:
    con = _connect(threads)
    try:
        for statement in _AGGREGATES:
            con.execute(statement, {"path": str(path)} if "$path" in statement else None)
        top_songs = [[k, int(c)] for k, c in con.execute(_TOP_SONGS).fetchall()]
        users = {u: {"total_time": int(t), "top_artist": a} for u, t, a in con.execute(_USERS).fetchall()}
        out: dict[str, Any] = {
            "top_songs": top_songs,
            "users": users,
            "top_users": [u for (u,) in con.execute(_TOP_USERS).fetchall()],
            "trending": [k for k, _ in top_songs[:5]],
            "recommendations": {u: list(r) for u, r in con.execute(_RECOMMENDATIONS).fetchall()},
            "distinct_songs": int(con.execute(_DISTINCT_SONGS).fetchone()[0]),
            "events": int(con.execute(_EVENTS).fetchone()[0] or 0),
        }
        if all_songs:
            out["song_counts"] = {k: int(c) for k, c in con.execute(_SONG_COUNTS).fetchall()}
        return out
    finally:
        con.close()


def oracle(path: str | Path, threads: int | None = None) -> dict[str, Any]:
    """The analytics of ``path``: ``top_songs`` ([key, count] x 10), ``song_counts`` (key -> count),
    ``users`` (user_id -> {total_time, top_artist}), ``top_users``, ``trending``, ``recommendations``."""
    r = _compute(path, threads, all_songs=True)
    return {k: r[k] for k in ("top_songs", "song_counts", "users", "top_users", "trending", "recommendations")}


def oracle_events(path: str | Path) -> int:
    """Number of data rows in ``path``."""
    con = _connect(None)
    try:
        return int(con.execute(f"SELECT count(*) FROM {_READ_CSV}", {"path": str(path)}).fetchone()[0])
    finally:
        con.close()


def results_json(path: str | Path, threads: int | None = None) -> dict[str, Any]:
    """The comparable parts of the client's results JSON, computed by the oracle."""
    r = _compute(path, threads, all_songs=False)
    return {
        "mapreduce_results": {"top_songs": dict(r["top_songs"]), "distinct_songs": r["distinct_songs"]},
        "userbehavior_results": {
            "users": [{"user_id": u, **v} for u, v in r["users"].items()],  # already by user_id
            "top_users": r["top_users"],
        },
        "recommendation_results": {"trending_songs": r["trending"], "recommendations": r["recommendations"]},
        "events_processed": r["events"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="DuckDB oracle for the music-analytics results")
    parser.add_argument("path", help="CSV file of valid events")
    parser.add_argument("--out", required=True, help="where to write the results JSON")
    parser.add_argument("--threads", type=int, default=None, help="DuckDB threads (default: all cores)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    results = results_json(args.path, args.threads)
    results["oracle_seconds"] = time.perf_counter() - start
    Path(args.out).write_text(json.dumps(results, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
