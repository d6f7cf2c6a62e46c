"""The time statistics as the results show them: UserBehavior's columnar answers turned into
ListenBrainz-style JSON (site-wide, in the results JSON) and JSON Lines (one line per user).

Per-user lines are built with Arrow string kernels, a message of users at a time: a JSON line per
user holds about a hundred small objects, and building them as Python dicts for 200k users would
cost more than the whole analysis.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from music_analytics.api import events_pb2, userbehavior_pb2
from music_analytics.client.merge import UserResult
from music_analytics.client.replicas import ServiceError
from music_analytics.services.common.clock import LocalClock, month_of_day
from music_analytics.services.common.contract import TOP_ARTISTS, top_ranked

if TYPE_CHECKING:
    from music_analytics.client.personalized import PlaysSpool

__all__ = ["DAY_NAMES", "Periods", "UserStatsSink", "site_stats"]

DAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_DAY = 86400
_NEEDS_ESCAPE = r'["\\\x00-\x1f\x7f]'


def strings(message: events_pb2.StringArray) -> pa.Array:
    count = len(message.offsets) // 4 - 1
    return pa.Array.from_buffers(pa.string(), count, [None, pa.py_buffer(message.offsets), pa.py_buffer(message.data)])


def _column(column: events_pb2.DictionaryColumn) -> tuple[pa.Array, np.ndarray]:
    return strings(column.dictionary), np.frombuffer(column.indices, dtype="<u4")


def json_strings(values: pa.Array) -> pa.Array:
    """Each string as a JSON string literal. Only strings holding a quote, a backslash or a
    control character go through the encoder; the rest are quoted as they are."""
    values = values.cast(pa.string())
    quoted = pc.binary_join_element_wise('"', values, '"', "")
    special = pc.match_substring_regex(values, _NEEDS_ESCAPE).to_numpy(zero_copy_only=False)
    if not special.any():
        return quoted
    escaped = [orjson.dumps(s).decode() for s in values.filter(pa.array(special)).to_pylist()]
    return pc.replace_with_mask(quoted, pa.array(special), pa.array(escaped, pa.string()))


def _numbers(values: np.ndarray) -> pa.Array:
    return pc.cast(pa.array(values), pa.string())


def group_concat(entries: pa.Array, ends: np.ndarray) -> pa.Array:
    """Per group, its entries joined with ",": group i holds entries ends[i-1]:ends[i]."""
    n = len(entries)
    last = np.zeros(n, dtype=bool)
    ends = ends.astype(np.int64)
    nonempty = np.diff(np.concatenate(([0], ends))) > 0
    last[ends[nonempty] - 1] = True
    sep = pc.if_else(pa.array(last), "", ",")
    joined = pc.binary_join_element_wise(entries, sep, "")
    if n == 0:
        return pa.array([""] * len(ends), pa.string())
    offsets = np.frombuffer(joined.buffers()[1], dtype=np.int32, count=n + 1)
    group_offsets = offsets[np.concatenate(([0], ends))].astype(np.int32)
    return pa.Array.from_buffers(pa.string(), len(ends), [None, pa.py_buffer(group_offsets), joined.buffers()[2]])


@dataclass
class Periods:
    """Labels and bounds of local years, months and days in one time zone."""

    clock: LocalClock

    def _start(self, day: int) -> int:
        return self.clock.first_instant(day * _DAY)

    def entries(self, unit: str, first: int, last: int) -> tuple[list[str], list[int], list[int]]:
        """time_range labels, from_ts and to_ts of every period from ``first`` to ``last`` (a
        year number, a month since January 1970, or a day since 1970-01-01)."""
        if unit == "year":
            starts = [np.datetime64(f"{y:04d}-01-01") for y in range(first, last + 2)]
            labels = [str(y) for y in range(first, last + 1)]
        elif unit == "month":
            months = np.arange(first, last + 2).astype("datetime64[M]")
            starts = list(months.astype("datetime64[D]"))
            labels = [str(m) for m in months[:-1]]
        else:
            days = np.arange(first, last + 2).astype("datetime64[D]")
            starts = list(days)
            labels = [str(d) for d in days[:-1]]
        first_day, last_day = int(starts[0].astype(np.int64)), int(starts[-1].astype(np.int64))
        # One table for the whole span, built once, not grown a period at a time.
        self.clock.cover(first_day * _DAY - 2 * _DAY, last_day * _DAY + 2 * _DAY)
        bounds = [self._start(int(s.astype(np.int64))) for s in starts]
        return labels, bounds[:-1], [b - 1 for b in bounds[1:]]

    def series(self, unit: str, keys: np.ndarray, counts: np.ndarray) -> list[dict[str, Any]]:
        """Every period between the smallest and largest key, empty ones at 0."""
        if len(keys) == 0:
            return []
        first, last = int(keys.min()), int(keys.max())
        full = np.zeros(last - first + 1, dtype=np.int64)
        np.add.at(full, keys - first, counts)
        labels, starts, ends = self.entries(unit, first, last)
        return [
            {"time_range": label, "from_ts": a, "to_ts": b, "listen_count": int(n)}
            for label, a, b, n in zip(labels, starts, ends, full.tolist(), strict=True)
        ]


def _year_of_month(months: np.ndarray) -> np.ndarray:
    return months // 12 + 1970


def daily_activity(cells: np.ndarray) -> list[dict[str, Any]]:
    """Listens per (weekday, hour) cell as ListenBrainz lists them, empty cells left out."""
    return [
        {"day": DAY_NAMES[c // 24], "hour": c % 24, "listen_count": int(cells[c])}
        for c in np.flatnonzero(cells).tolist()
    ]


def site_stats(activities: Iterable[userbehavior_pb2.SiteActivity], timezone: str) -> dict[str, Any]:
    """The site-wide statistics: every replica's share summed."""
    cells = np.zeros(7 * 24, dtype=np.int64)
    days, day_counts, names, artist_counts = [], [], [], []
    first = last = None
    for a in activities:
        if a.daily_activity:
            cells += np.frombuffer(a.daily_activity, dtype="<u8").astype(np.int64)
        days.append(np.frombuffer(a.days, dtype="<i4").astype(np.int64))
        day_counts.append(np.frombuffer(a.day_counts, dtype="<u8").astype(np.int64))
        if a.artists.offsets:
            names.append(strings(a.artists))
            artist_counts.append(np.frombuffer(a.artist_counts, dtype="<u8").astype(np.int64))
        if len(a.days):
            first = a.first_ts if first is None else min(first, a.first_ts)
            last = a.last_ts if last is None else max(last, a.last_ts)
    day = np.concatenate(days) if days else np.empty(0, dtype=np.int64)
    per_day = np.concatenate(day_counts) if day_counts else np.empty(0, dtype=np.int64)
    periods = Periods(LocalClock(timezone))
    top_artists: list[dict[str, Any]] = []
    if names:
        table = pa.table({"artist": pa.concat_arrays(names), "n": np.concatenate(artist_counts)})
        totals = table.group_by("artist").aggregate([("n", "sum")])
        counts = totals["n_sum"].to_numpy()
        k = min(TOP_ARTISTS, len(counts))
        # Every artist tied with the k-th count is a candidate; only those are ranked by name.
        threshold = np.partition(counts, len(counts) - k)[len(counts) - k] if k else 0
        candidates = np.flatnonzero(counts >= threshold)
        names_of = pc.take(totals["artist"], pa.array(candidates)).to_pylist()
        pairs = zip(names_of, counts[candidates].tolist(), strict=True)
        top_artists = [
            {"artist": a, "listen_count": n}
            for a, n in top_ranked(pairs, TOP_ARTISTS, count=lambda p: p[1], key=lambda p: p[0])
        ]
    return {
        "timezone": periods.clock.name,
        "first_ts": first,
        "last_ts": last,
        "top_artists": top_artists,
        "daily_activity": daily_activity(cells),
        "listening_activity": {
            "year": periods.series("year", _year_of_month(month_of_day(day)), per_day),
            "month": periods.series("month", month_of_day(day), per_day),
            "day": periods.series("day", day, per_day),
        },
    }


class _Labels:
    """JSON text of period entries, by key, built once per distinct period."""

    def __init__(self, periods: Periods, unit: str) -> None:
        self.periods, self.unit = periods, unit
        self.first = 0
        self.prefix = pa.array([], pa.string())

    def take(self, keys: np.ndarray) -> pa.Array:
        lo, hi = int(keys.min()), int(keys.max())
        have = len(self.prefix)
        if not have or lo < self.first or hi >= self.first + have:
            first = lo if not have else min(lo, self.first)
            last = hi if not have else max(hi, self.first + have - 1)
            labels, starts, ends = self.periods.entries(self.unit, first, last)
            self.first = first
            self.prefix = pa.array(
                [
                    f'{{"time_range":"{label}","from_ts":{a},"to_ts":{b},"listen_count":'
                    for label, a, b in zip(labels, starts, ends, strict=True)
                ],
                pa.string(),
            )
        return self.prefix.take(pa.array(keys - self.first))


_CELL_PREFIX = pa.array([f'{{"day":"{DAY_NAMES[c // 24]}","hour":{c % 24},"listen_count":' for c in range(168)])


def _filled(ends: np.ndarray, keys: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-user keys (ascending within a user) completed with every key between a user's first and
    last, at 0."""
    ends = ends.astype(np.int64)
    starts = np.concatenate(([0], ends[:-1]))
    has = ends > starts
    lo = np.zeros(len(ends), dtype=np.int64)
    hi = np.full(len(ends), -1, dtype=np.int64)
    lo[has], hi[has] = keys[starts[has]], keys[ends[has] - 1]
    lengths = hi - lo + 1
    new_ends = np.cumsum(lengths)
    new_starts = new_ends - lengths
    total = int(new_ends[-1]) if len(ends) else 0
    full_keys = np.repeat(lo - new_starts, lengths) + np.arange(total)
    full_counts = np.zeros(total, dtype=np.int64)
    user_of_entry = np.repeat(np.arange(len(ends)), ends - starts)
    full_counts[new_starts[user_of_entry] + keys - lo[user_of_entry]] = counts
    return new_ends, full_keys, full_counts


def _by_year(ends: np.ndarray, months: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Monthly lists (every month present, ascending) summed into yearly lists."""
    ends = ends.astype(np.int64)
    user = np.repeat(np.arange(len(ends)), np.diff(np.concatenate(([0], ends))))
    year = _year_of_month(months)
    if len(year) == 0:
        return ends, year, counts
    starts = np.flatnonzero(np.concatenate(([True], (year[1:] != year[:-1]) | (user[1:] != user[:-1]))))
    sums = np.add.reduceat(counts, starts)
    new_ends = np.cumsum(np.bincount(user[starts], minlength=len(ends)))
    return new_ends, year[starts], sums


class UserLines:
    """Formats UserSummaries messages into JSON lines (bytes), one per user, in message order."""

    def __init__(self, timezone: str) -> None:
        periods = Periods(LocalClock(timezone))
        self._months = _Labels(periods, "month")
        self._years = _Labels(periods, "year")

    def _entries(self, prefix: pa.Array, counts: np.ndarray) -> pa.Array:
        return pc.binary_join_element_wise(prefix, _numbers(counts), "}", "")

    def _series(self, labels: _Labels, ends: np.ndarray, keys: np.ndarray, counts: np.ndarray) -> pa.Array:
        entries = self._entries(labels.take(keys), counts) if len(keys) else pa.array([], pa.string())
        return group_concat(entries, ends)

    def format(self, users: userbehavior_pb2.UserSummaries) -> Iterator[tuple[list[str], pa.Array]]:
        """The users' ids and lines, ``SLICE_USERS`` users at a time: the text being built (several
        times the size of the lines) stays small whatever the size of the message."""
        ids = list(users.user_ids)
        user_ids, top_artist = json_strings(pa.array(ids, pa.string())), pa.array(list(users.top_artist), pa.string())
        total_time = np.asarray(users.total_time, dtype=np.uint64)
        ta, ts, da, ma = users.top_artists, users.top_songs, users.daily_activity, users.monthly_activity
        artist_names, artist_idx = _column(ta.names)
        song_names, song_idx = _column(ts.names)
        song_artists, song_artist_idx = _column(ts.artists)
        song_ids, song_id_idx = _column(ts.song_ids)
        artist_json, song_json = json_strings(artist_names), json_strings(song_names)
        song_artist_json, song_id_json = json_strings(song_artists), json_strings(song_ids)
        top_artist_json = json_strings(top_artist)
        artist_ends, artist_counts = _ends(ta.ends), np.frombuffer(ta.counts, dtype="<u4")
        song_ends, song_counts = _ends(ts.ends), np.frombuffer(ts.counts, dtype="<u4")
        cell_ends, cells, cell_counts = (
            _ends(da.ends),
            np.frombuffer(da.keys, dtype="<i4"),
            np.frombuffer(da.counts, dtype="<u4"),
        )
        m_ends, months, m_counts = _filled(
            _ends(ma.ends),
            np.frombuffer(ma.keys, dtype="<i4").astype(np.int64),
            np.frombuffer(ma.counts, dtype="<u4").astype(np.int64),
        )
        y_ends, years, y_counts = _by_year(m_ends, months, m_counts)
        for lo in range(0, len(ids), SLICE_USERS):
            hi = min(lo + SLICE_USERS, len(ids))
            a_ends, a, b = _part(artist_ends, lo, hi)
            artist_entries = pc.binary_join_element_wise(
                '{"artist":', artist_json.take(pa.array(artist_idx[a:b])),
                ',"listen_count":', _numbers(artist_counts[a:b]), "}", "",
            )  # fmt: skip
            s_ends, a, b = _part(song_ends, lo, hi)
            song_entries = pc.binary_join_element_wise(
                '{"song":', song_json.take(pa.array(song_idx[a:b])),
                ',"artist":', song_artist_json.take(pa.array(song_artist_idx[a:b])),
                ',"song_id":', song_id_json.take(pa.array(song_id_idx[a:b])),
                ',"listen_count":', _numbers(song_counts[a:b]), "}", "",
            )  # fmt: skip
            c_ends, a, b = _part(cell_ends, lo, hi)
            cell_entries = self._entries(_CELL_PREFIX.take(pa.array(cells[a:b])), cell_counts[a:b])
            mo_ends, a, b = _part(m_ends, lo, hi)
            month_text = self._series(self._months, mo_ends, months[a:b], m_counts[a:b])
            ye_ends, a, b = _part(y_ends, lo, hi)
            year_text = self._series(self._years, ye_ends, years[a:b], y_counts[a:b])
            lines = pc.binary_join_element_wise(
                '{"user_id":', user_ids.slice(lo, hi - lo),
                ',"total_time":', _numbers(total_time[lo:hi]),
                ',"top_artist":', top_artist_json.slice(lo, hi - lo),
                ',"top_artists":[', group_concat(artist_entries, a_ends),
                '],"top_songs":[', group_concat(song_entries, s_ends),
                '],"daily_activity":[', group_concat(cell_entries, c_ends),
                '],"listening_activity":{"year":[', year_text,
                '],"month":[', month_text,
                "]}}\n", "",
            )  # fmt: skip
            yield ids[lo:hi], lines


# Users formatted at once: the intermediate text is about four times the lines' ~3 KB per user.
SLICE_USERS = 2048


def _ends(raw: bytes) -> np.ndarray:
    return np.frombuffer(raw, dtype="<u4").astype(np.int64)


def _part(ends: np.ndarray, lo: int, hi: int) -> tuple[np.ndarray, int, int]:
    """Users lo..hi of flattened lists: their ends, rebased, and the range of their entries."""
    a = int(ends[lo - 1]) if lo else 0
    b = int(ends[hi - 1]) if hi else 0
    return ends[lo:hi] - a, a, b


def _data(lines: pa.Array) -> pa.Buffer:
    """The concatenated text of ``lines`` (all of them), without a copy."""
    if len(lines) == 0:
        return pa.py_buffer(b"")
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32, count=lines.offset + len(lines) + 1)
    start, stop = int(offsets[lines.offset]), int(offsets[-1])
    return lines.buffers()[2][start:stop]


class UserStatsSink:
    """Takes UserBehavior's per-user messages as they arrive, shard by shard: keeps every user's
    summary for the results JSON and writes their statistics' lines to a file per shard at once,
    so the messages are never all held and the lines are written while the services still work.

    A shard whose replica is lost is answered again from the start by its replacement: opening
    the shard's handler anew starts its part over. ``finish`` merges the parts in user_id order
    (each shard's answer is in that order already).
    """

    def __init__(self, timezone: str, path: Path | None, spool: Callable[[Path], PlaysSpool] | None = None) -> None:
        self._timezone = timezone
        self._path = path
        # Where each shard's plays per artist go (personalized recommendations), beside its lines.
        self._spool = spool if path is not None else None
        self._parts: dict[int, _ShardPart] = {}

    def handler(self, shard: int) -> Callable[[userbehavior_pb2.AnalyzeUsersResponse], bool]:
        old = self._parts.pop(shard, None)
        if old is not None:
            old.discard()
        path = self._part_path(shard)
        spool = None if self._spool is None or path is None else self._spool(path.with_suffix(".plays"))
        part = self._parts[shard] = _ShardPart(self._timezone, path, spool)
        return part.take

    def _part_path(self, shard: int) -> Path | None:
        if self._path is None:
            return None
        return self._path.with_name(f".{self._path.name}.shard{shard}.tmp")

    def spools(self) -> list[PlaysSpool]:
        """Each shard's plays per artist, in shard order (none unless a spool was given)."""
        return [self._parts[s].spool for s in sorted(self._parts) if self._parts[s].spool is not None]

    def users(self) -> list[UserResult]:
        """Every user's summary, by user_id."""
        users = [u for part in self._parts.values() for u in part.users]
        users.sort(key=attrgetter("user_id"))
        return users

    def finish(self, additions: Iterator[tuple[pa.Array, pa.Array]] | None = None) -> int:
        """Close the parts and write the per-user file (if asked for); returns its users.

        ``additions``: batches of (user ids, texts) for every user in user_id order, each text
        (binary) added at the end of its user's line (it starts with a comma). Until this returns
        the parts are kept, so a failure while reading ``additions`` can be followed by another
        ``finish``.
        """
        parts = [self._parts[s] for s in sorted(self._parts)]
        for part in parts:
            part.close()
        count = sum(len(part.users) for part in parts)
        if self._path is None:
            return count
        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._path.with_name(self._path.name + ".tmp")
        try:
            if len(parts) == 1 and additions is None:
                os.replace(parts[0].path, tmp)
            else:
                _merge_parts(parts, tmp, additions)
        except BaseException:
            tmp.unlink(missing_ok=True)  # half a file: nothing to keep
            raise
        os.replace(tmp, self._path)
        for part in parts:
            part.discard()
        return count

    def discard(self) -> None:
        for part in self._parts.values():
            part.discard()


class _ShardPart:
    def __init__(self, timezone: str, path: Path | None, spool: PlaysSpool | None = None) -> None:
        self.path = path
        self.spool = spool
        self.users: list[UserResult] = []
        # Each line's length in bytes, in the file's order: the merge reads many lines at a time.
        self.lengths: list[np.ndarray] = []
        self._lines = UserLines(timezone)
        self._file = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("wb")

    def take(self, response: userbehavior_pb2.AnalyzeUsersResponse) -> bool:
        if response.WhichOneof("payload") != "users":
            return False
        u = response.users
        self.users.extend(map(UserResult, u.user_ids, u.total_time, u.top_artist))
        if self._file is not None and len(u.user_ids):
            for _, lines in self._lines.format(u):
                self._file.write(_data(lines))
                self.lengths.append(pc.binary_length(lines).to_numpy().astype(np.int64))
        if self.spool is not None and len(u.user_ids):
            self.spool.add(u, "userbehavior")
        return True

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self.spool is not None:
            self.spool.close()

    def discard(self) -> None:
        self.close()
        if self.path is not None:
            self.path.unlink(missing_ok=True)
        if self.spool is not None:
            self.spool.discard()


def _merge_parts(parts: list[_ShardPart], out: Path, additions: Iterator[tuple[pa.Array, pa.Array]] | None) -> None:
    """Interleave the parts' lines in user_id order (one sort of every user id, then each part's
    file read once, in order), each with its addition, if any, before its closing brace.

    ``additions`` come in batches (user ids, texts), users in user_id order; the lines of a batch
    are read, joined with their texts and written at once, with Arrow, not a line at a time.
    """
    ids = pa.array([u.user_id for part in parts for u in part.users], pa.string())
    shard_of = np.repeat(np.arange(len(parts)), [len(part.users) for part in parts])
    by_id = pc.sort_indices(ids)
    order = shard_of[by_id.to_numpy()]
    if additions is None:
        additions = _no_additions(len(order))
    expected = ids.take(by_id)
    readers = [_Lines(part.path, part.lengths) for part in parts]
    try:
        with out.open("wb") as f:
            done = 0
            for users, texts in _slices(additions, SLICE_USERS):
                count = len(users)
                if texts is not None and done + count > len(order):
                    raise ServiceError(
                        f"the additions to the per-user lines name more users than the {len(order)} there are"
                    )
                want = expected.slice(done, count)
                if texts is not None and not users.equals(want):
                    at = next(
                        i for i, (a, b) in enumerate(zip(users.to_pylist(), want.to_pylist(), strict=True)) if a != b
                    )
                    raise ServiceError(
                        f"the additions to the per-user lines reached {users[at].as_py()!r} where "
                        f"{want[at].as_py()!r} was due"
                    )
                shards = order[done : done + count]
                per_shard = np.bincount(shards, minlength=len(parts))
                blocks = [reader.take(int(k)) for reader, k in zip(readers, per_shard, strict=True)]
                lines = pa.concat_arrays(blocks)
                if len(parts) > 1:
                    # Where each user's line sits among the blocks: its shard's start, plus how many
                    # users of that shard came before it in this batch.
                    starts = np.concatenate(([0], np.cumsum(per_shard)[:-1]))
                    rank = np.empty(count, dtype=np.int64)
                    for s in range(len(parts)):
                        mine = shards == s
                        rank[mine] = np.arange(int(per_shard[s]))
                    lines = lines.take(pa.array(starts[shards] + rank))
                if texts is not None:
                    lines = pc.binary_join_element_wise(pc.binary_slice(lines, 0, -2), texts, _CLOSE, _EMPTY)
                f.write(_data(lines))
                done += count
            if done != len(order):
                raise ServiceError(
                    f"the additions to the per-user lines reached {done} users of the {len(order)} there are"
                )
    finally:
        for reader in readers:
            reader.close()


_CLOSE, _EMPTY = pa.scalar(b"}\n", pa.binary()), pa.scalar(b"", pa.binary())


def _slices(
    batches: Iterator[tuple[pa.Array, pa.Array | None]], size: int
) -> Iterator[tuple[pa.Array, pa.Array | None]]:
    """The batches cut to at most ``size`` users: the lines read, trimmed and joined at once stay
    a few MB whatever the batch."""
    for users, texts in batches:
        for start in range(0, len(users), size):
            yield users.slice(start, size), None if texts is None else texts.slice(start, size)


def _no_additions(users: int, batch: int = SLICE_USERS) -> Iterator[tuple[pa.Array, None]]:
    """Batches of lines to copy as they are (the user ids are not checked: they are the lines')."""
    for start in range(0, users, batch):
        yield pa.nulls(min(batch, users - start), pa.string()), None


class _Lines:
    """A part's file read a number of lines at a time, as a binary array over the bytes read."""

    def __init__(self, path: Path, lengths: list[np.ndarray]) -> None:
        self._file = path.open("rb")
        self._lengths = np.concatenate(lengths) if lengths else np.empty(0, np.int64)
        self._next = 0

    def take(self, count: int) -> pa.Array:
        sizes = self._lengths[self._next : self._next + count]
        self._next += count
        data = self._file.read(int(sizes.sum()))
        offsets = np.concatenate(([0], np.cumsum(sizes))).astype(np.int32)
        return pa.Array.from_buffers(pa.binary(), count, [None, pa.py_buffer(offsets), pa.py_buffer(data)])

    def close(self) -> None:
        self._file.close()
