"""Deterministic event CSVs whose timestamps sit where time statistics go wrong.

Every row is valid. The instants cluster around the moments where a local hour, day, month or year
depends on the time zone's rules: both DST changes of Europe/Berlin, America/New_York,
Australia/Sydney (southern: summer over new year) and Australia/Lord_Howe (a 30-minute DST) in
2020-2024; the local midnights of year ends and of the leap days 2020-02-29 and 2024-02-29 in
those zones and in Asia/Kolkata (+05:30) and Asia/Kathmandu (+05:45, whose 1986-01-01 began at
00:15); and instants before 1970, down to Kathmandu's change from local mean time (an offset
with seconds) in 1920. Nothing before 1900, the earliest time the services accept. Each
instant is written in one of the forms the CSV rule allows (Z, numeric offsets such as +05:30,
-0400 or +01, no zone, date only, a fraction, the leap second ``:60``). User and artist names have
commas, quotes and non-ASCII letters; some users listen only in a few far-apart months.

The transitions are found by probing ``zoneinfo`` here: that only chooses where to put rows. What
the statistics of the rows are is left to the oracle and its brute-force check.
"""

from __future__ import annotations

import csv
import datetime as dt
import random
from pathlib import Path
from zoneinfo import ZoneInfo

HEADER = ("user_id", "song_id", "artist", "duration", "timestamp")

DST_ZONES = ("Europe/Berlin", "America/New_York", "Australia/Sydney", "Australia/Lord_Howe")
FRACTIONAL_ZONES = ("Asia/Kolkata", "Asia/Kathmandu")
ZONES = (*DST_ZONES, *FRACTIONAL_ZONES, "UTC")

USERS = ("alice", "bob", "carol, jr.", 'dave "the ear"', "émile", "ßara", "用户七", "zoë")
# Listen in a handful of months years apart: their monthly activity is mostly empty months.
SPARSE_USERS = ("gap-user", "Ωmega")
ARTISTS = (
    "Crosby, Stills & Nash",
    'The "Band"',
    "Sigur Rós",
    "坂本龍一",
    "🎸 Emoji Band",
    "Zed",
    "alpha",
    "Beta",
    # With "a" below, two (artist, song) pairs spelling one key: "a - b - c".
    "a - b",
    "a",
)
_SONGS = {artist: [f"s{i}" for i in range(1, 5)] for artist in ARTISTS}
_SONGS["a - b"] = ["c"]
_SONGS["a"] = ["b - c", "x"]

_OFFSETS = ("+05:30", "-04:00", "+0545", "+01", "-0930", "+14:00", "-12:00", "+00:00")
_YEARS = range(2020, 2025)


def transitions(zone: str, start: dt.datetime, end: dt.datetime) -> list[int]:
    """Epoch seconds at which ``zone``'s UTC offset changes between ``start`` and ``end`` (UTC)."""
    tz = ZoneInfo(zone)
    step = 6 * 3600
    found = []
    t = int(start.timestamp())
    stop = int(end.timestamp())

    def offset(x: int) -> dt.timedelta | None:
        return dt.datetime.fromtimestamp(x, tz).utcoffset()

    while t < stop:
        if offset(t) != offset(t + step):
            lo, hi = t, t + step  # offset(lo) differs from offset(hi): bisect to the first second
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if offset(mid) == offset(lo) else (lo, mid)
            found.append(hi)
        t += step
    return found


def _local_midnight(zone: str, day: dt.date) -> int:
    # fold=0: a skipped midnight reads with the offset before the change, the instant the day began.
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=ZoneInfo(zone)).timestamp())


def interesting_instants() -> list[int]:
    """The instants rows are placed at and near (each gets neighbours a second to an hour away)."""
    centres: set[int] = set()
    for zone in DST_ZONES:
        centres.update(transitions(zone, dt.datetime(2020, 1, 1, tzinfo=dt.UTC),
                                   dt.datetime(2025, 1, 1, tzinfo=dt.UTC)))  # fmt: skip
    centres.update(transitions("Asia/Kathmandu", dt.datetime(1985, 12, 1, tzinfo=dt.UTC),
                               dt.datetime(1986, 2, 1, tzinfo=dt.UTC)))  # fmt: skip
    # Kathmandu left local mean time (+05:41:16) in 1920; Kolkata had +06:30 in the war years.
    centres.update(transitions("Asia/Kathmandu", dt.datetime(1919, 12, 1, tzinfo=dt.UTC),
                               dt.datetime(1920, 2, 1, tzinfo=dt.UTC)))  # fmt: skip
    centres.update(transitions("Asia/Kolkata", dt.datetime(1941, 1, 1, tzinfo=dt.UTC),
                               dt.datetime(1946, 1, 1, tzinfo=dt.UTC)))  # fmt: skip
    days = [dt.date(y, 1, 1) for y in (*_YEARS, 2025)]
    days += [dt.date(2020, 2, 29), dt.date(2020, 3, 1), dt.date(2024, 2, 29), dt.date(2024, 3, 1)]
    days += [dt.date(2021, 4, 1), dt.date(2022, 11, 1), dt.date(1986, 1, 1), dt.date(1970, 1, 1)]
    for zone in ZONES:
        centres.update(_local_midnight(zone, day) for day in days)
    # Before 1970: the epoch's last second before zero, mid-century, a pre-war year end.
    centres.update([-1, -86400, int(dt.datetime(1965, 7, 4, 12, tzinfo=dt.UTC).timestamp()),
                    int(dt.datetime(1938, 12, 31, 23, 30, tzinfo=dt.UTC).timestamp())])  # fmt: skip
    return sorted(centres)


def _render(ts: int, form: str, rng: random.Random) -> str:
    """``ts`` written in ``form``; every form denotes exactly ``ts`` (after flooring a fraction)."""
    utc = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=ts)
    if form == "offset":
        text = rng.choice(_OFFSETS)
        sign = -1 if text[0] == "-" else 1
        digits = text[1:].replace(":", "")
        minutes = int(digits[:2]) * 60 + (int(digits[2:]) if len(digits) > 2 else 0)
        wall = utc.astimezone(dt.timezone(sign * dt.timedelta(minutes=minutes)))
        return wall.strftime("%Y-%m-%dT%H:%M:%S") + text
    if form == "naive":
        return utc.strftime(rng.choice(("%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S")))
    if form == "fraction":
        return utc.strftime("%Y-%m-%dT%H:%M:%S") + rng.choice((".999Z", ".5Z", ",25Z", ".000001", ".9+00:00"))
    if form == "short" and utc.second == 0:  # minutes only; hours only when on the hour
        return utc.strftime("%Y-%m-%dT%H" if utc.minute == 0 else "%Y-%m-%dT%H:%M") + rng.choice(("Z", ""))
    if form == "leap" and utc.second == 0:
        # The same instant as the 60th second of the minute before (how leap seconds are written).
        return (utc - dt.timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:60") + rng.choice(("Z", ".75Z", ""))
    return utc.strftime("%Y-%m-%dT%H:%M:%SZ")


_FORMS = ("z", "z", "offset", "offset", "naive", "fraction", "short", "leap")
_NEAR = (0, 1, -1, 59, -60, 900, -1800, 3599, -3600, 3601, 2 * 3600, -5 * 3600)


def history_rows(rows: int = 3000, seed: int = 1986, since: int | None = None) -> list[tuple[str, str, str, str, str]]:
    """``rows`` events (user_id, song_id, artist, duration, timestamp), in no particular order; with
    ``since`` (a year) none before it, so that the daily lists span years rather than a century."""
    rng = random.Random(seed)
    earliest = int(dt.datetime(since, 1, 1, tzinfo=dt.UTC).timestamp()) if since else None
    centres = [t for t in interesting_instants() if earliest is None or t - 5 * 3600 >= earliest]
    out: list[tuple[str, str, str, str, str]] = []

    def add(user: str, ts: int, form: str | None = None, artists: tuple[str, ...] = ARTISTS) -> None:
        artist = rng.choice(ARTISTS[:4]) if rng.random() < 0.4 else rng.choice(artists)
        song = rng.choice(_SONGS[artist])
        out.append((user, song, artist, str(rng.randint(1, 600)), _render(ts, form or rng.choice(_FORMS), rng)))

    # Date-only: the leap days and year ends, read as midnight UTC.
    for day in ("2020-02-29", "2024-02-29", "2021-12-31", "2022-01-01", *(() if since else ("1969-12-31",))):
        for user in USERS[:3]:
            out.append((user, "s1", "Sigur Rós", "200", day))
    # The leap second as it happened: 2016-12-31T23:59:60Z is 2017-01-01T00:00:00Z.
    out.append(("alice", "s2", "Zed", "61", "2016-12-31T23:59:60Z"))
    out.append(("bob", "s2", "Zed", "61", "2017-01-01T05:29:60+05:30"))
    for user, months in zip(SPARSE_USERS, (("2019-01", "2019-06", "2021-12"), ("2020-02", "2023-11")), strict=True):
        for month in months:
            start = dt.datetime.strptime(month + "-15", "%Y-%m-%d").replace(tzinfo=dt.UTC)
            for _ in range(3):
                add(user, int(start.timestamp()) + rng.randint(-3 * 86400, 3 * 86400), artists=ARTISTS[:8])
    # Each sparse user plays only one of the two spellings of "a - b - c": their song's artist is
    # the one they played, whatever other users played.
    out.append(("gap-user", "c", "a - b", "180", "2019-06-01T12:00:00Z"))
    out.append(("gap-user", "c", "a - b", "180", "2019-06-02T12:00:00Z"))
    out.append(("Ωmega", "b - c", "a", "180", "2020-02-20T12:00:00Z"))
    while len(out) < rows:
        user = rng.choice(USERS)
        if rng.random() < 0.8:
            add(user, rng.choice(centres) + rng.choice(_NEAR))
        else:  # spread over the years, so the monthly and daily lists are long and mostly non-empty
            add(user, rng.randint(int(dt.datetime(2020, 1, 1, tzinfo=dt.UTC).timestamp()),
                                  int(dt.datetime(2024, 12, 31, tzinfo=dt.UTC).timestamp())))  # fmt: skip
    rng.shuffle(out)
    return out


def write_history(path: Path, rows: int = 3000, seed: int = 1986, crlf: bool = False, since: int | None = None) -> Path:
    """Write ``history_rows(rows, seed, since)`` as CSV (RFC 4180 quoting, header first) to ``path``."""
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\r\n" if crlf else "\n")
        writer.writerow(HEADER)
        writer.writerows(history_rows(rows, seed, since))
    return path
