"""The oracle checked against answers worked out by hand, on small files written out literally, and
its time statistics against a brute-force computation in plain Python.

These expectations are the only hard-coded analytics results in the test suite: everything else is
compared with the oracle, so the oracle itself must be right on ties, byte-wise string order, RFC 4180
quoting, CRLF line endings and the key rule. The time statistics are checked against Python's own
time zone rules (zoneinfo, datetime, Counter, row by row), on the time-rich history data and on
random instants in several zones: two implementations of the IANA rules that share no code.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import random
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from tests.oracle import UnknownTimeZoneError, first_difference, oracle, oracle_events, oracle_stats, results_json
from tests.support.history_data import ZONES, write_history

ORACLE_SCRIPT = Path(__file__).resolve().parent / "oracle.py"
HEADER = "user_id,song_id,artist,duration,timestamp"
TS = "2026-01-01T00:00:00Z"


def write(tmp_path: Path, rows: list[str], newline: str = "\n", name: str = "events.csv") -> Path:
    """Rows are literal CSV lines (already quoted as they should appear in the file)."""
    path = tmp_path / name
    path.write_bytes((newline.join([HEADER, *rows]) + newline).encode("utf-8"))
    return path


def test_ties_everywhere(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        [
            f"u1,s1,A,100,{TS}",
            f"u1,s2,B,50,{TS}",
            f"u2,s1,A,10,{TS}",
            f"u2,s3,B,20,{TS}",
            f"u2,s3,B,30,{TS}",
            f"u3,s2,B,60,{TS}",
            f"u3,s4,C,40,{TS}",
        ],
    )
    r = oracle(path)
    # Three songs with 2 plays: ties by key ascending; then the single play.
    assert r["top_songs"] == [["A - s1", 2], ["B - s2", 2], ["B - s3", 2], ["C - s4", 1]]
    assert r["song_counts"] == {"A - s1": 2, "B - s2": 2, "B - s3": 2, "C - s4": 1}
    # u1: A and B once each -> tie -> "A"; u2: B twice; u3: B and C once each -> "B".
    assert r["users"] == {
        "u1": {"total_time": 150, "top_artist": "A"},
        "u2": {"total_time": 60, "top_artist": "B"},
        "u3": {"total_time": 100, "top_artist": "B"},
    }
    assert r["top_users"] == ["u1", "u3", "u2"]
    assert r["trending"] == ["A - s1", "B - s2", "B - s3", "C - s4"]
    assert r["recommendations"] == {
        "u1": ["B - s2", "B - s3", "C - s4"],
        "u2": ["A - s1", "C - s4"],
        "u3": ["A - s1", "C - s4"],
    }
    assert oracle_events(path) == 7


def test_limits_and_string_not_numeric_order(tmp_path: Path) -> None:
    # 12 songs by artist X: song sNN played 13 - NN times (s01: 12 plays ... s12: 1 play), all by u1.
    rows = [f"u1,s{i:02d},X,1,{TS}" for i in range(1, 13) for _ in range(13 - i)]
    # Six users with equal total time (u1 has 78 plays of 1 second; these have 78 s in one play),
    # so top_users is decided by user_id as strings: "u10" < "u2" < "u3" ...
    rows += [f"u{n},t1,Y,78,{TS}" for n in (2, 3, 10, 4, 5)]
    path = write(tmp_path, rows)
    r = oracle(path)
    # "Y - t1" (5 plays) ties with "X - s08" and comes after it by key; s09 is 10th, s10 is out.
    expected = [[f"X - s{i:02d}", 13 - i] for i in range(1, 9)] + [["Y - t1", 5], ["X - s09", 4]]
    assert r["top_songs"] == expected
    assert r["trending"] == [f"X - s{i:02d}" for i in range(1, 6)]
    assert len(r["song_counts"]) == 13
    assert r["top_users"] == ["u1", "u10", "u2", "u3", "u4"]
    # u1's top artist is X: every trending song is X's, nothing to recommend (still listed).
    assert r["recommendations"]["u1"] == []
    assert r["recommendations"]["u10"] == [f"X - s{i:02d}" for i in range(1, 6)]


@pytest.mark.parametrize("newline", ["\n", "\r\n"], ids=["lf", "crlf"])
def test_unicode_quoting_and_byte_order(tmp_path: Path, newline: str) -> None:
    rows = [
        # Quoted comma and doubled quotes; a quoted duration is still a number.
        f'u1,s1,"Crosby, Stills & Nash",200,{TS}',
        f'u1,s2,"The ""Band""","100",{TS}',
        f'u1,s2,"The ""Band""",100,{TS}',
        # Byte order: "Zed" (0x5A) < "Ébène" (0xC3 0x89): a tie between them goes to "Zed".
        f"u2,s3,Ébène,10,{TS}",
        f"u2,s4,Zed,20,{TS}",
        # Case matters, as bytes: "Beta" (0x42) < "alpha" (0x61).
        f"u3,s5,alpha,1,{TS}",
        f"u3,s6,Beta,2,{TS}",
        # Non-Latin scripts and an emoji, all UTF-8: "東京" (0xE6) < "😀" (0xF0).
        f"u4,s7,😀,5,{TS}",
        f"u4,s8,東京,5,{TS}",
        f'"ü5",s1,"Crosby, Stills & Nash",7,{TS}',
    ]
    path = write(tmp_path, rows, newline=newline)
    r = oracle(path)
    assert r["top_songs"] == [
        ["Crosby, Stills & Nash - s1", 2],
        ['The "Band" - s2', 2],
        ["Beta - s6", 1],
        ["Zed - s4", 1],
        ["alpha - s5", 1],
        ["Ébène - s3", 1],
        ["東京 - s8", 1],
        ["😀 - s7", 1],
    ]
    assert r["users"] == {
        "u1": {"total_time": 400, "top_artist": 'The "Band"'},
        "u2": {"total_time": 30, "top_artist": "Zed"},
        "u3": {"total_time": 3, "top_artist": "Beta"},
        "u4": {"total_time": 10, "top_artist": "東京"},
        "ü5": {"total_time": 7, "top_artist": "Crosby, Stills & Nash"},
    }
    # "u4" and "ü5" are not tied (10 vs 7); "u3" last.
    assert r["top_users"] == ["u1", "u2", "u4", "ü5", "u3"]
    assert r["trending"] == ["Crosby, Stills & Nash - s1", 'The "Band" - s2', "Beta - s6", "Zed - s4", "alpha - s5"]
    assert r["recommendations"]["u1"] == ["Crosby, Stills & Nash - s1", "Beta - s6", "Zed - s4", "alpha - s5"]
    assert r["recommendations"]["u3"] == ["Crosby, Stills & Nash - s1", 'The "Band" - s2', "Zed - s4", "alpha - s5"]
    assert r["recommendations"]["ü5"] == ['The "Band" - s2', "Beta - s6", "Zed - s4", "alpha - s5"]
    # The byte order the oracle uses is Python's str order, which the pipeline will use.
    assert [k for k, _ in r["top_songs"][2:]] == sorted(k for k, _ in r["top_songs"][2:])
    assert oracle_events(path) == 10


def test_same_key_from_two_artists(tmp_path: Path) -> None:
    # ("a - b", "c") and ("a", "b - c") both spell the key "a - b - c": counted together, and the
    # key's artist is the smaller name, "a".
    rows = [
        f"u1,c,a - b,10,{TS}",
        f"u1,b - c,a,10,{TS}",
        f"u2,c,a - b,5,{TS}",
        f"u2,c,a - b,5,{TS}",
    ]
    r = oracle(write(tmp_path, rows))
    assert r["top_songs"] == [["a - b - c", 4]]
    assert r["users"]["u1"] == {"total_time": 20, "top_artist": "a"}
    assert r["users"]["u2"] == {"total_time": 10, "top_artist": "a - b"}
    assert r["recommendations"] == {"u1": [], "u2": ["a - b - c"]}


def test_header_only(tmp_path: Path) -> None:
    path = write(tmp_path, [])
    assert oracle(path) == {
        "top_songs": [],
        "song_counts": {},
        "users": {},
        "top_users": [],
        "trending": [],
        "recommendations": {},
    }
    assert oracle_events(path) == 0


def test_results_json_shape(tmp_path: Path) -> None:
    path = write(tmp_path, [f"u2,s1,A,3,{TS}", f"u1,s1,A,4,{TS}", f"u1,s2,B,5,{TS}"])
    assert results_json(path) == {
        "mapreduce_results": {"top_songs": {"A - s1": 2, "B - s2": 1}, "distinct_songs": 2},
        "userbehavior_results": {
            "users": [
                {"user_id": "u1", "total_time": 9, "top_artist": "A"},
                {"user_id": "u2", "total_time": 3, "top_artist": "A"},
            ],
            "top_users": ["u1", "u2"],
        },
        "recommendation_results": {
            "trending_songs": ["A - s1", "B - s2"],
            "recommendations": {"u1": ["B - s2"], "u2": ["B - s2"]},
        },
        "events_processed": 3,
    }


# The time statistics: the oracle against a brute-force computation in plain Python (zoneinfo,
# datetime, Counter), which shares nothing with the oracle's SQL but the rules as written.

_ISO = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2})(?::(\d{2})(?::(\d{2})(?:[.,]\d+)?)?)?(Z|[+-]\d{2}(?::?\d{2})?)?)?"
)
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def brute_epoch(text: str) -> int:
    """Epoch seconds of an ISO 8601 timestamp: no zone is UTC, a fraction is dropped (floor), and
    second 60 is the first second of the next minute (timedelta carries it)."""
    match = _ISO.fullmatch(text)
    assert match, text
    year, month, day, hour, minute, second, zone = match.groups()
    wall = dt.datetime(int(year), int(month), int(day), tzinfo=dt.UTC) + dt.timedelta(
        hours=int(hour or 0), minutes=int(minute or 0), seconds=int(second or 0)
    )
    offset = dt.timedelta(0)
    if zone and zone != "Z":
        digits = zone[1:].replace(":", "")
        offset = dt.timedelta(hours=int(digits[:2]), minutes=int(digits[2:] or 0)) * (-1 if zone[0] == "-" else 1)
    return int((wall - offset - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)).total_seconds())


def first_instant(zone: ZoneInfo, year: int, month: int = 1, day: int = 1) -> int:
    # fold=0 reads a skipped local midnight with the offset before the change: the day's first instant.
    return int(dt.datetime(year, month, day, tzinfo=zone).timestamp())


def brute_periods(counts: Counter, zone: ZoneInfo, kind: str) -> list[dict]:
    """Every period from the first counted to the last, empty ones at 0."""
    if not counts:
        return []
    first, last = min(counts), max(counts)
    out = []
    period = first
    while period <= last:
        if kind == "year":
            start, following = first_instant(zone, period), first_instant(zone, period + 1)
            name, step = f"{period:04d}", period + 1
        elif kind == "month":
            year, month = period
            nxt = (year + 1, 1) if month == 12 else (year, month + 1)
            start, following = first_instant(zone, year, month), first_instant(zone, *nxt)
            name, step = f"{year:04d}-{month:02d}", nxt
        else:
            nxt = period + dt.timedelta(days=1)
            start = first_instant(zone, period.year, period.month, period.day)
            following = first_instant(zone, nxt.year, nxt.month, nxt.day)
            name, step = period.isoformat(), nxt
        out.append({"time_range": name, "from_ts": start, "to_ts": following - 1, "listen_count": counts[period]})
        period = step
    return out


def brute_daily(local_times: list[dt.datetime]) -> list[dict]:
    cells = Counter((t.weekday(), t.hour) for t in local_times)
    return [{"day": WEEKDAYS[d], "hour": h, "listen_count": n} for (d, h), n in sorted(cells.items())]


def brute_stats(path: Path, timezone: str) -> dict:
    """``oracle_stats`` worked out row by row in Python."""
    zone = ZoneInfo(timezone)
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    events = []
    for r in rows:
        ts = brute_epoch(r["timestamp"])
        events.append((r, ts, dt.datetime.fromtimestamp(ts, zone)))

    def activity(selected: list, kinds: tuple[str, ...]) -> dict:
        keys = {"year": lambda t: t.year, "month": lambda t: (t.year, t.month), "day": lambda t: t.date()}
        return {k: brute_periods(Counter(keys[k](t) for _, _, t in selected), zone, k) for k in kinds}

    def top_artists(selected: list) -> list[dict]:
        plays = Counter(r["artist"] for r, _, _ in selected)
        ranked = sorted(plays.items(), key=lambda item: (-item[1], item[0]))[:10]
        return [{"artist": a, "listen_count": n} for a, n in ranked]

    site = {
        "timezone": timezone,
        "first_ts": min((ts for _, ts, _ in events), default=None),
        "last_ts": max((ts for _, ts, _ in events), default=None),
        "top_artists": top_artists(events),
        "daily_activity": brute_daily([t for _, _, t in events]),
        "listening_activity": activity(events, ("year", "month", "day")),
    }
    lines = []
    for user in sorted({r["user_id"] for r in rows}):
        mine = [e for e in events if e[0]["user_id"] == user]
        songs: dict[str, dict] = {}
        for r, _, _ in mine:
            key = f"{r['artist']} - {r['song_id']}"
            new = {"song": key, "artist": r["artist"], "song_id": r["song_id"], "listen_count": 0}
            entry = songs.setdefault(key, new)
            entry["listen_count"] += 1
            if r["artist"] < entry["artist"]:  # one key, two spellings: the smaller artist's
                entry["artist"], entry["song_id"] = r["artist"], r["song_id"]
        artists = top_artists(mine)
        lines.append({
            "user_id": user,
            "total_time": sum(int(r["duration"]) for r, _, _ in mine),
            "top_artist": artists[0]["artist"],
            "top_artists": artists,
            "top_songs": sorted(songs.values(), key=lambda s: (-s["listen_count"], s["song"]))[:10],
            "daily_activity": brute_daily([t for _, _, t in mine]),
            "listening_activity": activity(mine, ("year", "month")),
        })  # fmt: skip
    return {"listening_stats": site, "user_lines": lines}


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_history(tmp_path_factory.mktemp("history") / "history.csv")


# Havana and Amman (until 2022) ended DST at 01:00, going back to 00:00: their midnights came twice.
@pytest.mark.parametrize("timezone", [*ZONES, "America/Santiago", "Pacific/Chatham", "America/Havana", "Asia/Amman"])
def test_time_statistics_equal_a_brute_force_computation(history: Path, timezone: str) -> None:
    got, want = oracle_stats(history, timezone, personalized_n=0), brute_stats(history, timezone)
    assert (d := first_difference(got, want)) is None, d


def csv_field(value: str) -> str:
    quoted = value.replace('"', '""')
    return f'"{quoted}"' if any(c in value for c in ',"') else value


def random_rows(seed: int, count: int) -> list[str]:
    """Random rows with instants anywhere from 1900 to 2038, written with random offsets and forms."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        utc = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=rng.randint(-2_208_988_800, 2**31 - 1))
        minutes = rng.choice([0, 330, -240, 345, 60, -570, 840, -720, 45])
        sign, hh, mm = "-" if minutes < 0 else "+", abs(minutes) // 60, abs(minutes) % 60
        zones = [f"{sign}{hh:02d}:{mm:02d}", f"{sign}{hh:02d}{mm:02d}"] if minutes else ["Z", ""]
        wall = utc + dt.timedelta(minutes=minutes)
        stamp = wall.strftime("%Y-%m-%dT%H:%M:%S") + rng.choice(["", ".5", ",999999"]) + rng.choice(zones)
        artist = rng.choice(["A", "B, b", "Ç", "a - b", "a"])
        song = {"a - b": "c", "a": "b - c"}.get(artist, rng.choice(["s1", "s2"]))
        fields = (rng.choice(["u1", "u2", 'u "3"', "ü4"]), song, artist, str(rng.randint(0, 900)), stamp)
        rows.append(",".join(csv_field(v) for v in fields))
    return rows


@pytest.mark.parametrize("seed,timezone", [(1, "Europe/Berlin"), (2, "Australia/Lord_Howe"), (3, "America/New_York"),
                                           (4, "Asia/Kathmandu"), (5, "Asia/Kolkata")])  # fmt: skip
def test_random_instants_from_1900_to_2038(tmp_path: Path, seed: int, timezone: str) -> None:
    path = write(tmp_path, random_rows(seed, 60))
    got, want = oracle_stats(path, timezone, personalized_n=0), brute_stats(path, timezone)
    assert (d := first_difference(got, want)) is None, d


def test_header_only_has_empty_time_statistics(tmp_path: Path) -> None:
    path = write(tmp_path, [])
    assert oracle_stats(path, "Asia/Kathmandu", personalized_n=0) == brute_stats(path, "Asia/Kathmandu")
    assert oracle_stats(path, "UTC")["listening_stats"]["listening_activity"] == {"year": [], "month": [], "day": []}


def test_unknown_time_zone_is_refused_by_name(tmp_path: Path) -> None:
    path = write(tmp_path, [f"u1,s1,A,1,{TS}"])
    with pytest.raises(UnknownTimeZoneError, match="'Mars/Olympus_Mons'"):
        oracle_stats(path, "Mars/Olympus_Mons")
    proc = subprocess.run([sys.executable, str(ORACLE_SCRIPT), str(path), "--out", str(tmp_path / "r.json"),
                           "--timezone", "Europe/Berlín"], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 2 and "unknown time zone 'Europe/Berlín'" in proc.stderr, proc.stderr
    assert not (tmp_path / "r.json").exists()


def test_script_writes_listening_stats_and_the_user_lines(history: Path, tmp_path: Path) -> None:
    out, lines = tmp_path / "r.json", tmp_path / "r.users.jsonl"
    proc = subprocess.run([sys.executable, str(ORACLE_SCRIPT), str(history), "--out", str(out),
                           "--timezone", "Australia/Lord_Howe", "--user-stats", str(lines)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    results = json.loads(out.read_text(encoding="utf-8"))
    want = oracle_stats(history, "Australia/Lord_Howe", personalized_n=0)
    assert results["listening_stats"] == want["listening_stats"]
    assert results["user_stats"] == {"path": str(lines), "users": len(want["user_lines"])}
    written = [json.loads(line) for line in lines.read_text(encoding="utf-8").splitlines()]
    assert written == want["user_lines"]
    assert [line["user_id"] for line in written] == sorted(line["user_id"] for line in written)
    # Without the new flags the script's output is what it always was.
    plain = tmp_path / "plain.json"
    proc = subprocess.run([sys.executable, str(ORACLE_SCRIPT), str(history), "--out", str(plain)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert set(json.loads(plain.read_text(encoding="utf-8"))) == {
        *("mapreduce_results", "userbehavior_results", "recommendation_results"),
        *("events_processed", "oracle_seconds"),
    }


def test_first_difference_names_the_entry() -> None:
    """The comparison behind every time-statistics test: not vacuous, and strict about types."""
    want = {"a": [1, {"b": 2}], "c": "x"}
    assert first_difference({"a": [1, {"b": 2}], "c": "x"}, want) is None
    assert first_difference({"a": [1, {"b": 3}], "c": "x"}, want) == ".a[1].b: got 3, expected 2"
    assert first_difference({"a": [1], "c": "x"}, want) == ".a: 1 entries, expected 2"
    assert first_difference({"a": [1, {"b": 2}]}, want, "r") == "r: keys ['a'], expected ['a', 'c']"
    assert first_difference({"a": [True, {"b": 2}], "c": "x"}, want) == ".a[0]: got True, expected 1"
    assert first_difference({"a": [1.0, {"b": 2}], "c": "x"}, want) == ".a[0]: got 1.0, expected 1"
