"""UserBehavior's time statistics and the client's JSON for them, against a brute-force computation
with Python's own datetime and zoneinfo, one event at a time (no numpy, no offset tables)."""

from __future__ import annotations

import collections
import datetime as dt
import functools
import itertools
import random
import zoneinfo

import numpy as np
import orjson
import pyarrow as pa
import pytest

from music_analytics.api import userbehavior_pb2
from music_analytics.client import listening
from music_analytics.client.listening import UserStatsSink, site_stats
from music_analytics.client.replicas import ServiceError
from music_analytics.services.common import columns
from music_analytics.services.common.clock import LocalClock, UnknownTimeZoneError
from music_analytics.services.userbehavior.analytics import UserStats
from music_analytics.services.userbehavior.servicer import site_activity_message, summaries_message

DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
# Instants around DST changes (both ways, both hemispheres), leap days, year ends and before 1970.
EDGES = [
    "2020-02-29T23:30:00Z", "2024-02-29T00:10:00Z", "2024-03-31T00:59:59Z", "2024-03-31T01:00:00Z",
    "2024-10-27T00:59:59Z", "2024-10-27T01:00:00Z", "2024-03-10T06:59:59Z", "2024-03-10T07:00:00Z",
    "2024-04-06T15:59:59Z", "2024-04-06T16:00:00Z", "2023-12-31T23:00:00Z", "2024-12-31T23:59:59Z",
    "1969-12-31T23:59:59Z", "1968-06-15T12:00:00Z",
]  # fmt: skip
ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Australia/Sydney", "Asia/Kathmandu", "Australia/Lord_Howe"]


def _events(seed: int, n: int) -> list[tuple[str, str, str, int, int]]:
    rng = random.Random(seed)
    edges = [int(dt.datetime.fromisoformat(e).timestamp()) for e in EDGES]
    out = []
    for _ in range(n):
        user = f"u{rng.randint(0, 60)}" if rng.random() < 0.97 else 'q"ote\\ é'
        artist, song = f"a{rng.randint(0, 25)}", f"s{rng.randint(0, 4)}"
        if rng.random() < 0.02:  # two (artist, song_id) pairs that spell one song key
            artist, song = rng.choice([("x - y", "z"), ("x", "y - z")])
        ts = rng.choice(edges) + rng.randint(-3, 3) if rng.random() < 0.3 else rng.randint(1_450_000_000, 1_800_000_000)
        out.append((user, artist, song, rng.randint(0, 400), ts))
    return out


def _feed(stats: UserStats, events: list, batch: int = 700) -> None:
    for k in range(0, len(events), batch):
        part = events[k : k + batch]
        cols = [pa.array([e[j] for e in part]).dictionary_encode() for j in range(3)]
        stats.add_columns(
            *(x for c in cols for x in (c.dictionary, c.indices.to_numpy())),
            np.array([e[3] for e in part], dtype=np.uint32),
            np.array([e[4] for e in part], dtype=np.int64),
        )


def _local(ts: int, zone: dt.tzinfo) -> dt.datetime:
    return (dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=ts)).astimezone(zone)


@functools.cache
def _first_instant(day: dt.date, zone: dt.tzinfo) -> int:
    """The first second whose local date is ``day`` or later, found by walking, not by a table."""
    t = int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp()) - 15 * 3600
    while _local(t, zone).date() < day:
        t += 60
    while _local(t - 1, zone).date() >= day:
        t -= 1
    return t


def _series(counter: collections.Counter, unit: str, zone: dt.tzinfo) -> list[dict]:
    if not counter:
        return []
    keys = sorted(counter)
    out = []
    period = keys[0]
    while period <= keys[-1]:
        if unit == "year":
            start, nxt, label = dt.date(period, 1, 1), dt.date(period + 1, 1, 1), str(period)
            following = period + 1
        elif unit == "month":
            y, m = period
            start = dt.date(y, m, 1)
            following = (y + m // 12, m % 12 + 1)
            nxt, label = dt.date(*following, 1), f"{y:04d}-{m:02d}"
        else:
            start, nxt, label = period, period + dt.timedelta(days=1), period.isoformat()
            following = nxt
        out.append(
            {
                "time_range": label,
                "from_ts": _first_instant(start, zone),
                "to_ts": _first_instant(nxt, zone) - 1,
                "listen_count": counter.get(period, 0),
            }
        )
        period = following
    return out


def _brute_force(events: list, zone_name: str) -> tuple[dict, dict]:
    zone = dt.UTC if zone_name == "UTC" else zoneinfo.ZoneInfo(zone_name)
    per_user = collections.defaultdict(list)
    for e in events:
        per_user[e[0]].append(e)

    def top(counter: collections.Counter) -> list[tuple[str, int]]:
        return sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))[:10]

    def cells(es: list) -> list[dict]:
        c = collections.Counter((_local(e[4], zone).weekday(), _local(e[4], zone).hour) for e in es)
        return [{"day": DAYS[d], "hour": h, "listen_count": c[d, h]} for d, h in sorted(c)]

    users = {}
    for user, es in per_user.items():
        artists = collections.Counter(e[1] for e in es)
        songs = collections.Counter(f"{e[1]} - {e[2]}" for e in es)
        split = {}
        for e in sorted(es, key=lambda e: e[1]):
            split.setdefault(f"{e[1]} - {e[2]}", (e[1], e[2]))
        months = collections.Counter((_local(e[4], zone).year, _local(e[4], zone).month) for e in es)
        years = collections.Counter(_local(e[4], zone).year for e in es)
        users[user] = {
            "user_id": user,
            "total_time": sum(e[3] for e in es),
            "top_artist": top(artists)[0][0],
            "top_artists": [{"artist": a, "listen_count": n} for a, n in top(artists)],
            "top_songs": [
                {"song": s, "artist": split[s][0], "song_id": split[s][1], "listen_count": n} for s, n in top(songs)
            ],
            "daily_activity": cells(es),
            "listening_activity": {"year": _series(years, "year", zone), "month": _series(months, "month", zone)},
        }
    local = [_local(e[4], zone) for e in events]
    site = {
        "timezone": zone_name,
        "first_ts": min(e[4] for e in events),
        "last_ts": max(e[4] for e in events),
        "top_artists": [{"artist": a, "listen_count": n} for a, n in top(collections.Counter(e[1] for e in events))],
        "daily_activity": cells(events),
        "listening_activity": {
            "year": _series(collections.Counter(t.year for t in local), "year", zone),
            "month": _series(collections.Counter((t.year, t.month) for t in local), "month", zone),
        },
    }
    return site, users


@pytest.fixture
def small_flushes(monkeypatch):
    monkeypatch.setattr(columns.PendingBatches, "MIN_ROWS", 500)
    monkeypatch.setattr(columns.KeyCounter, "RUN_ROWS", 900)
    # Lines built a few users at a time, so slices end inside and at the end of messages.
    monkeypatch.setattr(listening, "SLICE_USERS", 3)


@pytest.mark.parametrize("zone", ZONES)
def test_statistics_equal_a_brute_force_computation(tmp_path, small_flushes, zone):
    events = _events(seed=len(zone), n=6000)
    # Two shards by user, as two replicas would hold them: the merge must not matter.
    shards = [[e for e in events if hash(e[0]) % 2 == k] for k in (0, 1)]
    messages, activities = [], []
    for part in shards:
        stats = UserStats(zone)
        _feed(stats, part)
        messages.append([summaries_message(chunk) for chunk in stats.summaries(chunk=7)])
        activities.append(site_activity_message(stats.site_activity()))
    path = tmp_path / "users.jsonl"
    sink = UserStatsSink(zone, path)
    for shard, shard_messages in enumerate(messages):
        take = sink.handler(shard)
        # A replica lost half-way through its answer: its replacement answers again from the start.
        for m in shard_messages[: len(shard_messages) // 2]:
            assert take(userbehavior_pb2.AnalyzeUsersResponse(users=m))
        take = sink.handler(shard)
        for m in shard_messages:
            assert take(userbehavior_pb2.AnalyzeUsersResponse(users=m))
    assert sink.finish() == len({e[0] for e in events})
    assert [u.user_id for u in sink.users()] == sorted({e[0] for e in events})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["users.jsonl"]  # the parts are gone
    site, users = _brute_force(events, zone)

    lines = path.read_bytes().splitlines()
    got = [orjson.loads(line) for line in lines]
    assert [u["user_id"] for u in got] == sorted(users)
    for line in got:
        assert line == users[line["user_id"]], line["user_id"]

    got_site = site_stats(activities, zone)
    days = got_site["listening_activity"].pop("day")
    assert got_site == site
    assert sum(d["listen_count"] for d in days) == len(events)
    # Days are contiguous: each starts the second after the one before it ends.
    assert all(a["to_ts"] + 1 == b["from_ts"] for a, b in itertools.pairwise(days))


def test_a_day_of_a_dst_change_has_23_or_25_hours():
    clock = LocalClock("Europe/Berlin")
    spring = dt.date(2024, 3, 31) - dt.date(1970, 1, 1)
    autumn = dt.date(2024, 10, 27) - dt.date(1970, 1, 1)
    for day, hours in ((spring.days, 23), (autumn.days, 25)):
        start, end = clock.first_instant(day * 86400), clock.first_instant((day + 1) * 86400)
        assert end - start == hours * 3600


def test_unknown_time_zone_is_named():
    with pytest.raises(UnknownTimeZoneError, match="'Mars/Olympus'"):
        LocalClock("Mars/Olympus")


@pytest.mark.parametrize("zone", ["Europe/Berlin", "Australia/Lord_Howe"])
def test_a_clock_grown_a_little_at_a_time_is_exact(zone):
    """Events come in time order, and each batch grows the offset table a little, forwards or
    (an export read newest first) backwards: every instant must still get the zone's offset."""
    tz = zoneinfo.ZoneInfo(zone)
    for step in (86400 * 3, -86400 * 5):
        clock = LocalClock(zone)
        start = 1_600_000_000
        for k in range(0, 400):
            lo = start + k * step
            clock.cover(min(lo, lo + step), max(lo, lo + step))
        rng = np.random.default_rng(1)
        ts = np.sort(rng.integers(min(start, start + 400 * step), max(start, start + 400 * step), 3000))
        expected = [int(_local(int(t), tz).utcoffset().total_seconds()) for t in ts]
        assert clock.offsets(ts).tolist() == expected


def _two_shard_sink(tmp_path, zone: str = "UTC") -> tuple[UserStatsSink, list[str]]:
    events = _events(seed=9, n=800)
    path = tmp_path / "users.jsonl"
    sink = UserStatsSink(zone, path)
    for shard in (0, 1):
        stats = UserStats(zone)
        _feed(stats, [e for e in events if hash(e[0]) % 2 == shard])
        take = sink.handler(shard)
        for chunk in stats.summaries(chunk=5):
            assert take(userbehavior_pb2.AnalyzeUsersResponse(users=summaries_message(chunk)))
    return sink, sorted({e[0] for e in events})


def _texts(users: list[str]) -> tuple[pa.Array, pa.Array]:
    return pa.array(users, pa.string()), pa.array([f',"n":{len(u)}'.encode() for u in users], pa.binary())


def test_additions_go_into_every_line_in_batches_of_any_size(tmp_path, small_flushes):
    sink, users = _two_shard_sink(tmp_path)
    plain_sink, _ = _two_shard_sink(tmp_path / "plain")
    plain_sink.finish()
    plain = [orjson.loads(line) for line in (tmp_path / "plain" / "users.jsonl").read_bytes().splitlines()]
    # Batches of 7 cut to SLICE_USERS (3 here): slices and batches disagree on purpose.
    assert sink.finish(_texts(users[i : i + 7]) for i in range(0, len(users), 7)) == len(users)
    got = [orjson.loads(line) for line in (tmp_path / "users.jsonl").read_bytes().splitlines()]
    assert got == [line | {"n": len(line["user_id"])} for line in plain]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain", "users.jsonl"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda users: users[:-1], "reached .* users of the"),
        (lambda users: [*users, "zzz-extra"], "more users than the"),
        (lambda users: [users[1], users[0], *users[2:]], "reached .* where .* was due"),
    ],
)
def test_additions_for_other_users_are_refused_and_the_parts_kept(tmp_path, change, message):
    sink, users = _two_shard_sink(tmp_path)
    with pytest.raises(ServiceError, match=message):
        sink.finish(iter([_texts(change(users))]))
    # Nothing half-written is left in place of the file, and the parts are there to try again.
    assert not (tmp_path / "users.jsonl").exists() and not (tmp_path / "users.jsonl.tmp").exists()
    assert sink.finish(iter([_texts(users)])) == len(users)
