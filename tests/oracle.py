"""The independent oracle: the pipeline's analytics as SQL in DuckDB over the CSV file.

Shares no code with the pipeline, on purpose. It assumes a file of valid rows only (tests write clean
files for it). Strings compare byte-wise (DuckDB's default with no collation, made explicit below),
which for UTF-8 is the same order as Python's ``str`` ordering (Unicode code points).

The time statistics (``listening_stats``, the per-user lines) parse the timestamp column here, in
SQL, with a regular expression of their own: ISO 8601 date, optional time and zone offset (none
means UTC), a fraction dropped (the floor, as the fraction only adds), second 60 counted as the next
second. Local time comes from DuckDB's ICU time zones, a second implementation of the IANA rules
besides the pipeline's zoneinfo. The two carry their own copies of the time zone database, which
disagree on a few old changes (DuckDB 2.0.1's ICU against tzdata 2026f: Europe/Dublin in 1925,
America/Sao_Paulo in 1966, Asia/Tehran in 1979); tests/test_oracle_selfcheck.py checks the zones the
tests use, over every year the test data spans.

Also a script, so the benchmark can run it as a separate process (its own wall time and peak RSS)::

    python tests/oracle.py FILE --out RESULTS.json [--threads 2] [--timezone Area/City] [--user-stats PATH]

writes the results in the shape of the client's results JSON (the parts that can be compared);
with ``--timezone`` or ``--user-stats`` also ``listening_stats``, and with ``--user-stats`` the
per-user JSON Lines, one line per user sorted by user_id.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from music_analytics.services.common.contract import PERSONALIZED_N

# Every column VARCHAR and no sniffing: the oracle must see exactly the bytes of the file, with
# RFC 4180 quoting ("" inside quotes is a quote). duration is cast explicitly afterwards.
_READ_CSV = """read_csv(
    $path, header = true, auto_detect = false, delim = ',', quote = '"', escape = '"',
    columns = {'user_id': 'VARCHAR', 'song_id': 'VARCHAR', 'artist': 'VARCHAR',
               'duration': 'VARCHAR', 'timestamp': 'VARCHAR'})"""

# The timestamp's parts by name; absent parts are empty strings. Written from ISO 8601 (date, then
# T or a space, hours, optional minutes, optional seconds with an optional fraction, then Z or a
# +hh, +hhmm, +hh:mm offset), not from the client's pattern.
_TIMESTAMP_REGEX = (
    r"^([0-9]{4})-([0-9]{2})-([0-9]{2})"
    r"(?:[T ]([0-9]{2})(?::([0-9]{2})(?::([0-9]{2})(?:[.,][0-9]+)?)?)?"
    r"(?:Z|([+-])([0-9]{2})(?::?([0-9]{2}))?)?)?$"
)
_PARTS = "['year', 'month', 'day', 'hour', 'minute', 'second', 'sign', 'offset_hours', 'offset_minutes']"


def _part(name: str) -> str:
    return f"coalesce(CAST(nullif(p['{name}'], '') AS BIGINT), 0)"


# Epoch seconds by arithmetic on the parts, no time zone library involved: days since 1970-01-01
# (negative before), the time of day (second 60 is simply one more second), minus the offset.
_EPOCH = (
    f"(make_date(CAST(p['year'] AS INTEGER), CAST(p['month'] AS INTEGER), CAST(p['day'] AS INTEGER))"
    f" - DATE '1970-01-01') * 86400 + {_part('hour')} * 3600 + {_part('minute')} * 60 + {_part('second')}"
    f" - (CASE p['sign'] WHEN '-' THEN -1 ELSE 1 END) * ({_part('offset_hours')} * 3600"
    f" + {_part('offset_minutes')} * 60)"
)

_ROWS = f"""CREATE OR REPLACE TEMP TABLE rows AS
    SELECT user_id, song_id, artist, CAST(duration AS BIGINT) AS duration FROM {_READ_CSV}"""

# With the time statistics: also each event's instant and its local wall time in the zone.
# The common form (seconds, Z) goes through strptime, which refuses second 60 and every other
# form: those rows take the regular expression (about three times slower).
_ROWS_WITH_TIME = f"""CREATE OR REPLACE TEMP TABLE rows AS
    SELECT user_id, song_id, artist, duration, ts, timezone($zone, to_timestamp(ts)) AS local_time
    FROM (SELECT user_id, song_id, artist, duration, coalesce(fast, {_EPOCH}) AS ts
          FROM (SELECT user_id, song_id, artist, CAST(duration AS BIGINT) AS duration, fast,
                       CASE WHEN fast IS NULL THEN regexp_extract(timestamp, '{_TIMESTAMP_REGEX}', {_PARTS}) END AS p
                FROM (SELECT *, CAST(epoch(try_strptime(timestamp, '%Y-%m-%dT%H:%M:%SZ')) AS BIGINT) AS fast
                      FROM {_READ_CSV})))"""

# One scan of the file into the two aggregates everything else derives from: plays per
# (artist, song) and plays and seconds per (user, artist). Both are far smaller than the rows.
_AGGREGATES = [
    """CREATE OR REPLACE TEMP TABLE song_plays AS
        SELECT artist, song_id, count(*) AS plays FROM rows GROUP BY artist, song_id""",
    """CREATE OR REPLACE TEMP TABLE user_artist AS
        SELECT user_id, artist, count(*) AS plays, sum(duration) AS seconds
        FROM rows GROUP BY user_id, artist""",
]

# The time statistics' aggregates, from the same rows: plays per (user, artist, song), per user and
# local (weekday, hour), per user and local month (numbered year * 12 + month - 1), per local day.
_TIME_AGGREGATES = [
    """CREATE OR REPLACE TEMP TABLE user_song AS
        SELECT user_id, artist, song_id, count(*) AS plays FROM rows GROUP BY user_id, artist, song_id""",
    """CREATE OR REPLACE TEMP TABLE user_hour AS
        SELECT user_id, isodow(local_time) AS weekday, hour(local_time) AS hour, count(*) AS listens
        FROM rows GROUP BY ALL""",
    """CREATE OR REPLACE TEMP TABLE user_month AS
        SELECT user_id, year(local_time) * 12 + month(local_time) - 1 AS month_number, count(*) AS listens
        FROM rows GROUP BY ALL""",
    """CREATE OR REPLACE TEMP TABLE day_listens AS
        SELECT CAST(local_time AS DATE) AS day, count(*) AS listens FROM rows GROUP BY ALL""",
    "CREATE OR REPLACE TEMP TABLE bounds AS SELECT min(ts) AS first_ts, max(ts) AS last_ts FROM rows",
    # A period's bounds: the first instant whose local time is its first midnight or later, and
    # the next period's minus one second. ICU reads a wall time that does not exist (Asia/Kathmandu
    # skipped 00:00-00:15 on 1986-01-01) with the offset before the change, which is that first
    # instant; a wall time that happens twice (Berlin's clocks went from 01:00 back to 00:00 on
    # 1916-10-01) as the later one, so the earlier one, read with the offset of a day before, is
    # taken when it exists.
    "CREATE OR REPLACE TEMP MACRO local_wall(t) AS timezone($zone, to_timestamp(t))",
    "CREATE OR REPLACE TEMP MACRO icu_instant(wall) AS CAST(epoch(timezone($zone, wall)) AS BIGINT)",
    """CREATE OR REPLACE TEMP MACRO earlier_instant(wall) AS
        CAST(epoch(wall) AS BIGINT) - (CAST(epoch(local_wall(icu_instant(wall) - 86400)) AS BIGINT)
                                       - (icu_instant(wall) - 86400))""",
    """CREATE OR REPLACE TEMP MACRO first_instant(wall) AS
        CASE WHEN earlier_instant(wall) < icu_instant(wall) AND local_wall(earlier_instant(wall)) >= wall
                  AND local_wall(earlier_instant(wall) - 1) < wall
             THEN earlier_instant(wall) ELSE icu_instant(wall) END""",
    """CREATE OR REPLACE TEMP TABLE months AS
        SELECT m AS month_number, strftime(make_date(m // 12, m % 12 + 1, 1), '%Y-%m') AS time_range,
               first_instant(make_timestamp(m // 12, m % 12 + 1, 1, 0, 0, 0)) AS from_ts,
               first_instant(make_timestamp((m + 1) // 12, (m + 1) % 12 + 1, 1, 0, 0, 0)) - 1 AS to_ts
        FROM (SELECT unnest(range(min(month_number), max(month_number) + 1)) AS m FROM user_month)""",
    """CREATE OR REPLACE TEMP TABLE years AS
        SELECT y AS year, CAST(y AS VARCHAR) AS time_range,
               first_instant(make_timestamp(y, 1, 1, 0, 0, 0)) AS from_ts,
               first_instant(make_timestamp(y + 1, 1, 1, 0, 0, 0)) - 1 AS to_ts
        FROM (SELECT unnest(range(min(month_number) // 12, max(month_number) // 12 + 1)) AS y FROM user_month)""",
    """CREATE OR REPLACE TEMP TABLE days AS
        SELECT d AS day, strftime(d, '%Y-%m-%d') AS time_range,
               first_instant(CAST(d AS TIMESTAMP)) AS from_ts,
               first_instant(CAST(d + 1 AS TIMESTAMP)) - 1 AS to_ts
        FROM (SELECT first_day + CAST(i AS INTEGER) AS d
              FROM (SELECT min(day) AS first_day, unnest(range(0, max(day) - min(day) + 1)) AS i FROM day_listens))""",
    """CREATE OR REPLACE TEMP TABLE user_year AS
        SELECT user_id, month_number // 12 AS year, sum(listens) AS listens FROM user_month GROUP BY ALL""",
]

_KEYED = [
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

_WEEKDAYS = "['Monday', 'Tuesday', 'Wednesday', 'Thursday', 'Friday', 'Saturday', 'Sunday']"


def _periods(periods: str, number: str, counts: str, group: str = "") -> str:
    """Every period of ``periods`` from the first with a listen to the last (per user when
    ``group`` is "user_id"), empty ones at 0, as a list ordered by time."""
    entry = "{'time_range': p.time_range, 'from_ts': p.from_ts, 'to_ts': p.to_ts, " \
        "'listen_count': CAST(coalesce(c.listens, 0) AS BIGINT)}"  # fmt: skip
    if not group:
        return f"""SELECT list({entry} ORDER BY p.{number}) FROM {periods} p
                   LEFT JOIN (SELECT {number}, sum(listens) AS listens FROM {counts} GROUP BY ALL) c
                   USING ({number})"""
    return f"""SELECT s.user_id, list({entry} ORDER BY p.{number}) AS activity
               FROM (SELECT user_id, min({number}) AS lo, max({number}) AS hi FROM {counts} GROUP BY user_id) s
               JOIN {periods} p ON p.{number} BETWEEN s.lo AND s.hi
               LEFT JOIN {counts} c ON c.user_id = s.user_id AND c.{number} = p.{number}
               GROUP BY s.user_id"""


_DAILY_ACTIVITY = f"""
SELECT list({{'day': {_WEEKDAYS}[weekday], 'hour': hour, 'listen_count': listens}} ORDER BY weekday, hour)
FROM (SELECT weekday, hour, CAST(sum(listens) AS BIGINT) AS listens FROM user_hour GROUP BY ALL)"""
_TOP_ARTISTS = """SELECT list({'artist': artist, 'listen_count': listens} ORDER BY listens DESC, artist)
                  FROM (SELECT artist, CAST(sum(plays) AS BIGINT) AS listens FROM user_artist GROUP BY artist
                        ORDER BY listens DESC, artist LIMIT 10)"""

# Each part of a user's line as a table of its own, then one join: DuckDB runs the parts in
# parallel and the join moves finished lists (as one query with CTEs it took twice as long).
_USER_PARTS = [
    """CREATE OR REPLACE TEMP TABLE user_top_artists AS
        SELECT user_id, list({'artist': artist, 'listen_count': plays} ORDER BY plays DESC, artist) AS top_artists
        FROM (SELECT * FROM user_artist
              QUALIFY row_number() OVER (PARTITION BY user_id ORDER BY plays DESC, artist) <= 10)
        GROUP BY user_id""",
    # The user's songs by key; two (artist, song) spelling one key are one song, of the smaller artist.
    """CREATE OR REPLACE TEMP TABLE user_keyed AS
        SELECT user_id, artist || ' - ' || song_id AS song, min(artist) AS artist,
               arg_min(song_id, artist) AS song_id, CAST(sum(plays) AS BIGINT) AS plays
        FROM user_song GROUP BY user_id, song""",
    """CREATE OR REPLACE TEMP TABLE user_top_songs AS
        SELECT user_id, list({'song': song, 'artist': artist, 'song_id': song_id, 'listen_count': plays}
                             ORDER BY plays DESC, song) AS top_songs
        FROM (SELECT * FROM user_keyed
              QUALIFY row_number() OVER (PARTITION BY user_id ORDER BY plays DESC, song) <= 10)
        GROUP BY user_id""",
    "DROP TABLE user_keyed",
    # Sorted after aggregating (list_sort on the cell number, weekday * 24 + hour, then named):
    # twice as fast as list(... ORDER BY ...), which DuckDB aggregates with a sort.
    f"""CREATE OR REPLACE TEMP TABLE user_daily AS
        SELECT user_id,
               list_transform(list_sort(list({{'cell': weekday * 24 + hour, 'listens': listens}})),
                              lambda c: {{'day': {_WEEKDAYS}[c.cell // 24], 'hour': c.cell % 24,
                                         'listen_count': c.listens}}) AS daily_activity
        FROM user_hour GROUP BY user_id""",
    "CREATE OR REPLACE TEMP TABLE user_by_year AS " + _periods("years", "year", "user_year", "user_id"),
    "CREATE OR REPLACE TEMP TABLE user_by_month AS " + _periods("months", "month_number", "user_month", "user_id"),
]
# One row per user in the shape of a line of the per-user JSON Lines, by user_id.
_USER_LINES = """
SELECT u.user_id, CAST(u.total_time AS BIGINT) AS total_time, u.top_artist, a.top_artists, s.top_songs,
       d.daily_activity, {'year': y.activity, 'month': m.activity} AS listening_activity
FROM users u
JOIN user_top_artists a USING (user_id) JOIN user_top_songs s USING (user_id) JOIN user_daily d USING (user_id)
JOIN user_by_year y USING (user_id) JOIN user_by_month m USING (user_id)
ORDER BY u.user_id
"""


class UnknownTimeZoneError(ValueError):
    """The time zone is not an IANA name DuckDB knows."""


def _connect(threads: int | None) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    # No collation: byte-wise string order, the same as Python's str order for UTF-8.
    con.execute("SET default_collation = ''")
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    return con


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _run(con: duckdb.DuckDBPyConnection, statement: str, params: dict[str, str]) -> None:
    # A macro's body cannot take prepared parameters: the zone goes in as a literal (checked first).
    if "MACRO" in statement:
        statement = statement.replace("$zone", _sql_string(params["zone"]))
    con.execute(statement, {k: v for k, v in params.items() if f"${k}" in statement} or None)


def _check_zone(con: duckdb.DuckDBPyConnection, timezone: str) -> None:
    known = con.execute("SELECT count(*) FROM pg_timezone_names() WHERE name = $zone", {"zone": timezone})
    if not known.fetchone()[0]:
        raise UnknownTimeZoneError(f"unknown time zone {timezone!r}: expected an IANA name such as Europe/Berlin")


def _compute(
    path: str | Path,
    threads: int | None,
    all_songs: bool,
    timezone: str | None = None,
    user_stats: Path | None = None,
) -> dict[str, Any]:
    con = _connect(threads)
    try:
        params = {"path": str(path)}
        statements = [_ROWS, *_AGGREGATES, "DROP TABLE rows", *_KEYED]
        if timezone is not None:
            _check_zone(con, timezone)
            params["zone"] = timezone
            statements = [_ROWS_WITH_TIME, *_AGGREGATES, *_TIME_AGGREGATES, "DROP TABLE rows", *_KEYED]
        for statement in statements:
            _run(con, statement, params)
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
        if timezone is not None:
            out["listening_stats"] = _listening_stats(con, timezone)
            for statement in _USER_PARTS:
                con.execute(statement)
            if user_stats is not None:
                con.execute(f"COPY ({_USER_LINES}) TO {_sql_string(str(user_stats))} (FORMAT JSON)")
            else:
                cursor = con.execute(_USER_LINES)
                names = [d[0] for d in cursor.description]
                out["user_lines"] = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        return out
    finally:
        con.close()


def _listening_stats(con: duckdb.DuckDBPyConnection, timezone: str) -> dict[str, Any]:
    first_ts, last_ts = con.execute("SELECT first_ts, last_ts FROM bounds").fetchone()

    def one_list(query: str) -> list[Any]:
        return con.execute(query).fetchone()[0] or []

    return {
        "timezone": timezone,
        "first_ts": first_ts,
        "last_ts": last_ts,
        "top_artists": one_list(_TOP_ARTISTS),
        "daily_activity": one_list(_DAILY_ACTIVITY),
        "listening_activity": {
            "year": one_list(_periods("years", "year", "user_year")),
            "month": one_list(_periods("months", "month_number", "user_month")),
            "day": one_list(_periods("days", "day", "day_listens")),
        },
    }


def first_difference(got: object, want: object, where: str = "") -> str | None:
    """The path to the first entry where two JSON values differ, with both values, or None: a
    mismatch with the oracle named down to one number of one period of one user."""
    if isinstance(want, dict) and isinstance(got, dict):
        if got.keys() != want.keys():
            return f"{where}: keys {sorted(got)}, expected {sorted(want)}"
        return next((d for k in want if (d := first_difference(got[k], want[k], f"{where}.{k}"))), None)
    if isinstance(want, list) and isinstance(got, list):
        pairs = enumerate(zip(got, want, strict=False))
        found = next((d for i, (g, w) in pairs if (d := first_difference(g, w, f"{where}[{i}]"))), None)
        return found or (f"{where}: {len(got)} entries, expected {len(want)}" if len(got) != len(want) else None)
    return None if got == want and type(got) is type(want) else f"{where}: got {got!r}, expected {want!r}"


def oracle(path: str | Path, threads: int | None = None) -> dict[str, Any]:
    """The analytics of ``path``: ``top_songs`` ([key, count] x 10), ``song_counts`` (key -> count),
    ``users`` (user_id -> {total_time, top_artist}), ``top_users``, ``trending``, ``recommendations``."""
    r = _compute(path, threads, all_songs=True)
    return {k: r[k] for k in ("top_songs", "song_counts", "users", "top_users", "trending", "recommendations")}


def oracle_stats(
    path: str | Path, timezone: str = "UTC", threads: int | None = None, personalized_n: int = PERSONALIZED_N
) -> dict[str, Any]:
    """The time statistics of ``path`` in ``timezone``: ``listening_stats`` (the results JSON's
    section) and ``user_lines`` (the per-user JSON Lines as dicts, by user_id), with each user's
    personalized artists (``oracle_recommendations``) unless ``personalized_n`` is 0."""
    r = _compute(path, threads, all_songs=False, timezone=timezone)
    lines = r["user_lines"]
    if personalized_n:
        recommended = oracle_recommendations(path, personalized_n)
        lines = [line | recommended[line["user_id"]] for line in lines]
    return {"listening_stats": r["listening_stats"], "user_lines": lines}


def oracle_recommendations(path: str | Path, n: int = PERSONALIZED_N) -> dict[str, dict[str, Any]]:
    """Each user's ``recommended_artists`` and ``recommended_by`` as the per-user lines say them.

    The plays per (user, artist) are aggregated here, in SQL, and indexed by sorted name; the model
    trained on them is the service's own code with its defaults (its quality is what `evaluate`
    measures): what this checks is everything around the model, from the input to the line.
    """
    from music_analytics.services.recommendation.model import ModelConfig, PlayMatrix, train

    con = _connect(None)
    try:
        rows = con.execute(
            f"SELECT user_id, artist, count(*) FROM {_READ_CSV} GROUP BY user_id, artist", {"path": str(path)}
        ).fetchall()
    finally:
        con.close()
    users = sorted({u for u, _, _ in rows})
    artists = sorted({a for _, a, _ in rows})
    user_code = {u: i for i, u in enumerate(users)}
    artist_code = {a: i for i, a in enumerate(artists)}
    matrix = PlayMatrix.from_codes(
        np.array([user_code[u] for u, _, _ in rows], dtype=np.int64),
        np.array([artist_code[a] for _, a, _ in rows], dtype=np.int64),
        np.array([c for _, _, c in rows], dtype=np.int64),
        len(users),
        len(artists),
    )
    config = ModelConfig()
    recs = train(matrix, config).recommend(np.arange(len(users)), n)
    out = {}
    for i, user in enumerate(users):
        codes, scores = recs.user(i)
        from_model = int(recs.from_model[i])
        if from_model == len(codes):
            by = config.algorithm
        else:
            by = "popularity" if from_model == 0 else f"{config.algorithm}+popularity"
        out[user] = {
            "recommended_artists": [
                {"artist": artists[int(c)], "score": float(np.round(np.float64(s), 4))}
                for c, s in zip(codes, scores, strict=True)
            ],
            "recommended_by": by,
        }
    return out


def oracle_events(path: str | Path) -> int:
    """Number of data rows in ``path``."""
    con = _connect(None)
    try:
        return int(con.execute(f"SELECT count(*) FROM {_READ_CSV}", {"path": str(path)}).fetchone()[0])
    finally:
        con.close()


def results_json(
    path: str | Path,
    threads: int | None = None,
    timezone: str | None = None,
    user_stats: Path | None = None,
) -> dict[str, Any]:
    """The comparable parts of the client's results JSON, computed by the oracle; with a
    ``timezone`` also ``listening_stats``, and with ``user_stats`` the per-user JSON Lines written
    there (and ``user_stats`` in the results)."""
    if user_stats is not None and timezone is None:
        timezone = "UTC"
    r = _compute(path, threads, all_songs=False, timezone=timezone, user_stats=user_stats)
    results = {
        "mapreduce_results": {"top_songs": dict(r["top_songs"]), "distinct_songs": r["distinct_songs"]},
        "userbehavior_results": {
            "users": [{"user_id": u, **v} for u, v in r["users"].items()],  # already by user_id
            "top_users": r["top_users"],
        },
        "recommendation_results": {"trending_songs": r["trending"], "recommendations": r["recommendations"]},
        "events_processed": r["events"],
    }
    if timezone is not None:
        results["listening_stats"] = r["listening_stats"]
    if user_stats is not None:
        results["user_stats"] = {"path": str(user_stats), "users": len(r["users"])}
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="DuckDB oracle for the music-analytics results")
    parser.add_argument("path", help="CSV file of valid events")
    parser.add_argument("--out", required=True, help="where to write the results JSON")
    parser.add_argument("--threads", type=int, default=None, help="DuckDB threads (default: all cores)")
    parser.add_argument("--timezone", default=None, help="IANA zone for the time statistics (UTC with --user-stats)")
    parser.add_argument("--user-stats", type=Path, default=None, help="also write the per-user JSON Lines here")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        results = results_json(args.path, args.threads, args.timezone, args.user_stats)
    except UnknownTimeZoneError as exc:
        parser.error(str(exc))
    results["oracle_seconds"] = time.perf_counter() - start
    Path(args.out).write_text(json.dumps(results, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
