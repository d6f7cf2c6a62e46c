"""Per-user listening: time, top artists and songs, and when they listen. Plain functions and data, no gRPC."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from music_analytics.services.common.clock import LocalClock, month_of_day
from music_analytics.services.common.columns import (
    IntIds,
    PartitionedCounter,
    PendingBatches,
    Segment,
    SpillFile,
    StringIds,
)
from music_analytics.services.common.contract import ARTIST_ENTRIES_PER_MESSAGE, TOP_PER_USER, TOP_USERS, top_ranked

DAY = 86400
CELLS = 7 * 24  # (weekday, hour) cells, Monday = 0: weekday * 24 + hour
# 1970-01-01 was a Thursday: day 0 has weekday 3 (Monday = 0).
_THURSDAY = 3
_ITEM_BITS = 32
# The "when" key of an event: user << 24 | cell << 16 | month, months biased to stay non-negative
# (16 bits: January 1970 plus or minus 2730 years).
_MONTH_BITS = 16
_MONTH_BIAS = 1 << (_MONTH_BITS - 1)
_WHEN_BITS = 8 + _MONTH_BITS
# The counters are partitioned by blocks of 2**14 users (16,384).
_USER_BLOCK_BITS = 14
# Keys read back per range at the end: each range's temporaries are about 20 arrays of this size.
_RANGE_ROWS = 1 << 18


@dataclass(frozen=True)
class Lists:
    """Per-user lists, flattened: user i's entries are ``ends[i-1]:ends[i]`` (0 for the first)."""

    ends: np.ndarray  # uint32 per user
    keys: np.ndarray  # per entry: an artist or song id, a cell, or a month (see the field using it)
    counts: np.ndarray  # uint32 per entry

    def take(self, users: np.ndarray) -> Lists:
        """The lists of ``users`` (ids, in that order)."""
        ends = self.ends.astype(np.int64)
        starts = np.concatenate(([0], ends[:-1]))[users]
        lengths = ends[users] - starts
        new_ends = np.cumsum(lengths)
        index = np.repeat(starts - (new_ends - lengths), lengths) + np.arange(int(new_ends[-1]) if len(users) else 0)
        return Lists(new_ends.astype(np.uint32), self.keys[index], self.counts[index])


@dataclass(frozen=True)
class UserColumns:
    """Users as parallel columns: entry i of each belongs to user_ids[i]."""

    user_ids: list[str]
    total_time: list[int]  # seconds listened
    top_artist: list[str]  # most played artist, ties by name ascending
    plays: list[int]
    top_artists: Lists  # keys: indices into ``artists``
    top_songs: Lists  # keys: indices into ``songs``
    daily_activity: Lists  # keys: cells, weekday * 24 + hour
    monthly_activity: Lists  # keys: months since January 1970 (local)
    artists: pa.Array  # artist names, by artist id
    songs: SongNames
    artist_plays: Lists | None = None  # every artist a user played; keys: indices into ``artists``

    def __len__(self) -> int:
        return len(self.user_ids)

    def slice(self, start: int, stop: int) -> UserColumns:
        """Users ``start`` to ``stop`` of these."""
        if (start, stop) == (0, len(self)):
            return self
        rows = np.arange(start, stop)
        return UserColumns(
            user_ids=self.user_ids[start:stop],
            total_time=self.total_time[start:stop],
            top_artist=self.top_artist[start:stop],
            plays=self.plays[start:stop],
            top_artists=self.top_artists.take(rows),
            top_songs=self.top_songs.take(rows),
            daily_activity=self.daily_activity.take(rows),
            monthly_activity=self.monthly_activity.take(rows),
            artists=self.artists,
            songs=self.songs,
            artist_plays=None if self.artist_plays is None else self.artist_plays.take(rows),
        )


@dataclass(frozen=True)
class SongNames:
    """Songs by id: the "{artist} - {song_id}" key and its parts."""

    key: pa.Array
    artist: pa.Array
    song_id: pa.Array


@dataclass(frozen=True)
class SiteActivity:
    """The site-wide time statistics of this call's events (summable across calls on other users)."""

    daily_activity: np.ndarray  # listens per cell (CELLS,)
    days: np.ndarray  # local days since 1970-01-01 with listens, ascending
    day_counts: np.ndarray  # listens per such day
    artists: pa.Array
    artist_counts: np.ndarray  # listens per artist
    first_ts: int
    last_ts: int


def rank_users(users: Iterable[tuple[str, int]], n: int) -> list[tuple[str, int]]:
    """The ``n`` users with the highest total time; ties by user_id ascending."""
    return top_ranked(users, n, count=lambda u: u[1], key=lambda u: u[0])


def local_fields(local: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For local wall-clock seconds: the day (since 1970-01-01), the (weekday, hour) cell and the
    month (since January 1970)."""
    day = local // DAY
    hour = (local - day * DAY) // 3600
    cell = ((day + _THURSDAY) % 7) * 24 + hour
    month = month_of_day(day)
    return day, cell, month


def top_per_group(groups: np.ndarray, items: np.ndarray, counts: np.ndarray, rank: np.ndarray, k: int) -> np.ndarray:
    """Indices of the best ``k`` items of each group, grouped by group (ascending), best first:
    most counts, ties by ``rank`` (an item's position in name order) ascending."""
    if len(groups) == 0:
        return np.empty(0, dtype=np.int64)
    first = int(groups.min())
    local = groups - first
    group_bits = int(local.max()).bit_length()
    count_bits = int(counts.max()).bit_length()
    rank_bits = max(len(rank).bit_length(), 1)
    if group_bits + count_bits + rank_bits <= 63:
        # One int64 key orders (group asc, count desc, rank asc): one sort instead of a lexsort.
        key = (local.astype(np.int64) << (count_bits + rank_bits)) | (
            (((1 << count_bits) - 1 - counts.astype(np.int64)) << rank_bits) | rank[items]
        )
        order = np.argsort(key)
    else:
        score = (counts.astype(np.uint64) << np.uint64(32)) | (np.uint64(0xFFFFFFFF) - rank[items].astype(np.uint64))
        order = np.lexsort((~score, groups))
    g = groups[order]
    starts = np.flatnonzero(np.concatenate(([True], g[1:] != g[:-1])))
    position = np.arange(len(g)) - np.repeat(starts, np.diff(np.append(starts, len(g))))
    return order[position < k]


def _sum_sorted(keys: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct keys of sorted ``keys`` with their counts summed."""
    if len(keys) == 0:
        return keys, counts
    starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
    return keys[starts], np.add.reduceat(counts.astype(np.int64), starts)


def _sum_unsorted(keys: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(keys)
    return _sum_sorted(keys[order], counts[order])


def _merge_spellings(
    users: np.ndarray,
    songs: np.ndarray,
    counts: np.ndarray,
    key_of: np.ndarray,
    song_artist: np.ndarray,
    artist_rank: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One entry per (user, song key): the counts of the user's songs that spell the same key
    summed, under the song with the smallest artist among them. Per user, not over all users: a
    user's plays are all on one replica, so the answer is the same for any number of replicas."""
    order = np.lexsort((artist_rank[song_artist[songs]], key_of[songs], users))
    users, songs, counts = users[order], songs[order], counts[order].astype(np.int64)
    key = key_of[songs]
    starts = np.flatnonzero(np.concatenate(([True], (users[1:] != users[:-1]) | (key[1:] != key[:-1]))))
    return users[starts], songs[starts], np.add.reduceat(counts, starts)


_MAX_COUNT = (1 << 32) - 1


# Rows added to the counters at once (at most 2^20: a group's weighted sums stay exact in float64).
_GROUP_ROWS = 1 << 19


def _concatenated(group: list[tuple[np.ndarray, ...]]) -> tuple[np.ndarray | None, ...]:
    """The columns of a group of batches, each batch's laid end to end (plays: ones where a batch
    has none, or None when none has them)."""
    columns: list[np.ndarray | None] = []
    for index, parts in enumerate(zip(*group, strict=True)):
        if index == len(group[0]) - 1:  # plays
            if all(p is None for p in parts):
                columns.append(None)
                continue
            parts = tuple(
                np.ones(len(g[0]), dtype=np.uint32) if p is None else p for p, g in zip(parts, group, strict=True)
            )
        columns.append(np.concatenate(parts) if len(parts) > 1 else parts[0])
    return tuple(columns)


class _ListBuckets:
    """Per-user lists collected in any order of users and read back in name order, a bucket of
    ``BUCKET_USERS`` consecutive users (by name) at a time.

    The counters are read out by blocks of user ids, ids in first-seen order, while the answer
    goes out in user_id order: each block's entries are sent to the bucket of their user's rank,
    and a bucket is put in order when it is read. Entries go to a SpillFile (in memory up to its
    budget, on disk past it), so the lists of a million users are never all held at once.
    """

    def __init__(self, rank: np.ndarray, bucket_users: int, file: SpillFile) -> None:
        self._rank = rank  # each user id's position in name order
        self._bucket_users = bucket_users
        self._file = file
        buckets = -(-len(rank) // bucket_users)
        self._segments: list[list[tuple[Segment, Segment, Segment]]] = [[] for _ in range(buckets)]

    def add(self, users: np.ndarray, keys: np.ndarray, counts: np.ndarray) -> None:
        """Entries of users' lists, each user's together and in list order."""
        if len(users) == 0:
            return
        rank = self._rank[users]
        bucket = rank // self._bucket_users
        # Stable: a user's entries keep their order within the bucket.
        order = np.argsort(bucket, kind="stable")
        ends = np.cumsum(np.bincount(bucket, minlength=len(self._segments)))
        rank, keys, counts = rank[order], keys[order], counts[order]
        start = 0
        for index, stop in enumerate(ends.tolist()):
            if stop > start:
                self._segments[index].append(
                    (
                        self._file.write(rank[start:stop].astype(np.uint32)),
                        # Every key kind fits 32 bits (ids, cells, months).
                        self._file.write(keys[start:stop].astype(np.int32)),
                        # Weighted counts may pass 32 bits: the most a list can say is kept.
                        self._file.write(np.minimum(counts[start:stop], _MAX_COUNT).astype(np.uint32)),
                    )
                )
            start = stop

    def bucket(self, index: int, users: int) -> Lists:
        """The lists of bucket ``index``'s ``users`` users, in name order."""
        parts = self._segments[index]
        first = index * self._bucket_users
        if not parts:
            return Lists(np.zeros(users, np.uint32), np.empty(0, np.int32), np.empty(0, np.uint32))
        rank = np.concatenate([self._file.read(r) for r, _, _ in parts]).astype(np.int64) - first
        keys = np.concatenate([self._file.read(k) for _, k, _ in parts])
        counts = np.concatenate([self._file.read(c) for _, _, c in parts])
        order = np.argsort(rank, kind="stable")
        ends = np.cumsum(np.bincount(rank, minlength=users)).astype(np.uint32)
        return Lists(ends, keys[order], counts[order])


class UserStats:
    """Accumulates, over batches, per-user listening time and play counts per (user, song) and per
    (user, local hour of the week, local month), and the site-wide activity.

    Batches wait in ``PendingBatches`` until their strings can be mapped to ids in bulk; all per-row
    work is numpy. Per-(user, artist) counts are not kept: they are the (user, song) counts summed
    by the song's artist, computed once at the end over the distinct pairs.
    """

    # Peak memory over ``nbytes``, measured by bench/call_memory.py: 1.9x (100k users) to 3.1x
    # (1M users) at 4M events; 3.8x before the counters were partitioned.
    peak_factor = 4

    # Users per bucket of the lists read back in name order (see _ListBuckets): a bucket's lists
    # and the temporaries of putting them in order are held at once (about 15 MB at 100M events).
    BUCKET_USERS = 1 << 14

    def __init__(
        self,
        timezone: str = "",
        release: Callable[[], None] = lambda: None,
        memory_budget: int = 64 << 20,
        spill_dir: str | None = None,
    ) -> None:
        self.clock = LocalClock(timezone)
        # What the counters and the per-user lists may hold in memory before the rest is set aside
        # on disk, in ``spill_dir``. Half of it each: the counters while events come, the lists
        # while the answer is built (the counters are let go, block by block, as the lists fill).
        self._counters_file = SpillFile(spill_dir)
        self._lists_file = SpillFile(spill_dir, budget=memory_budget // 2)
        # Called after each step that frees much memory (a bulk mapping, a counter read out), to
        # hand it back to the system before the next, larger arrays are placed beside it.
        self._release = release
        self._users = StringIds()
        self._artists = StringIds()
        self._song_ids = StringIds()
        # (artist id << 32 | song_id id) -> dense song id
        self._songs = IntIds()
        self._time = np.zeros(0, dtype=np.int64)
        self._plays = np.zeros(0, dtype=np.int64)
        self._artist_plays = np.zeros(0, dtype=np.int64)
        # Partitioned by blocks of users: the largest fold of runs copies one block's keys.
        # user << 32 | song, and user << 24 | cell << 16 | biased month; a quarter of the budget each.
        self._user_songs = PartitionedCounter(_ITEM_BITS + _USER_BLOCK_BITS, spill=self._counters_file,
                                              budget=memory_budget // 4)  # fmt: skip
        self._when = PartitionedCounter(_WHEN_BITS + _USER_BLOCK_BITS, spill=self._counters_file,
                                        budget=memory_budget // 4)  # fmt: skip
        self._cells = np.zeros(CELLS, dtype=np.int64)
        self._day0 = 0  # local day of _day_counts[0]
        self._day_counts = np.zeros(0, dtype=np.int64)
        self.first_ts: int | None = None
        self.last_ts: int | None = None
        self._pending = PendingBatches()
        self._worker: ThreadPoolExecutor | None = None
        self._inflight: Future | None = None
        self._inflight_nbytes = 0
        # Whether the lists include every user's plays per artist, not only the top ones (what
        # the recommender learns from); set before the lists are built.
        self.artist_plays = False
        self._lists: dict[str, Lists] | None = None
        # Set once the counts are read out into the per-user lists (the counters are let go then).
        self._pairs: int | None = None
        self.events = 0

    @property
    def distinct_users(self) -> int:
        self._flush()
        return len(self._users)

    @property
    def distinct_artists(self) -> int:
        self._flush()
        return len(self._artists)

    @property
    def distinct_songs(self) -> int:
        self._flush()
        return len(self._songs)

    @property
    def distinct_pairs(self) -> int:
        """Distinct (user, song) pairs."""
        if self._pairs is None:
            self._flush()
            return len(self._user_songs)
        return self._pairs

    @property
    def nbytes(self) -> int:
        """Memory the statistics hold: the distinct strings, the per-user and per-day arrays, 12
        bytes per distinct key in the counters' runs, the song ids, and batches waiting to be mapped."""
        strings = self._users.values.nbytes + self._artists.values.nbytes + self._song_ids.values.nbytes
        arrays = self._time.nbytes + self._plays.nbytes + self._artist_plays.nbytes + self._day_counts.nbytes
        counters = self._user_songs.nbytes + self._when.nbytes + self._songs.nbytes
        return strings + arrays + counters + self._pending.nbytes + self._inflight_nbytes

    def add_columns(
        self,
        user_dict: pa.Array,
        user_idx: np.ndarray,
        artist_dict: pa.Array,
        artist_idx: np.ndarray,
        song_dict: pa.Array,
        song_idx: np.ndarray,
        duration: np.ndarray,
        timestamp: np.ndarray,
        plays: np.ndarray | None = None,
    ) -> None:
        """Add a batch: dictionary-encoded user, artist and song_id columns, durations (seconds),
        timestamps (seconds since 1970 UTC) and how many plays each row is (one each without it)."""
        if len(user_idx) == 0:
            return
        if self._pairs is not None:
            raise RuntimeError("events added after the statistics were read out")
        item = (user_dict, user_idx, artist_dict, artist_idx, song_dict, song_idx, duration, timestamp, plays)
        self._pending.add(item, len(user_idx))
        self.events += len(user_idx)
        self._lists = None
        # Half as many rows as known strings: a flush builds a table of the known strings, O(known),
        # so this keeps it O(1) a row; and while one flush runs behind, as many rows again gather,
        # so what waits is never more than the strings known (3.1M rows at 100M events).
        if self._pending.due((len(self._users) + len(self._artists) + len(self._song_ids)) // 2):
            self._flush_behind()

    def _flush_behind(self) -> None:
        """Map and count what is pending in a thread of its own, while the call's thread goes on
        receiving: a flush is seconds of Arrow and numpy work (most of it without the GIL), and
        done inline it held up the client's stream, so MapReduce's too (at 100M events the
        ingest took 185 s with UserBehavior 66% busy). One flush at a time, in order."""
        self._wait()
        nbytes, items = self._pending.nbytes, self._pending.take()
        if items:
            self._inflight_nbytes = nbytes
            if self._worker is None:
                self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="userbehavior-flush")
            self._inflight = self._worker.submit(self._map_and_count, items)

    def _wait(self) -> None:
        """Until the flush in flight is done; raises what it raised."""
        inflight, self._inflight = self._inflight, None
        if inflight is not None:
            try:
                inflight.result()
            finally:
                self._inflight_nbytes = 0

    def _flush(self) -> None:
        self._wait()
        self._map_and_count(self._pending.take())

    def _map_and_count(self, items: list) -> None:
        if not items:
            return
        # One kind of string after the other: mapping users and song ids side by side (Arrow's
        # lookups run without the GIL) was no faster at 10M events and held both hash tables at once.
        user_maps = self._users.map_arrays([it[0] for it in items])
        song_maps = self._song_ids.map_arrays([it[4] for it in items])
        artist_maps = self._artists.map_arrays([it[2] for it in items])
        n = len(self._users)
        if n > len(self._time):
            grow = n - len(self._time)
            self._time = np.concatenate([self._time, np.zeros(grow, dtype=np.int64)])
            self._plays = np.concatenate([self._plays, np.zeros(grow, dtype=np.int64)])
        if len(self._artists) > len(self._artist_plays):
            grow = len(self._artists) - len(self._artist_plays)
            self._artist_plays = np.concatenate([self._artist_plays, np.zeros(grow, dtype=np.int64)])
        # The strings were mapped for all batches at once (that is what costs); the numbers are done
        # in groups of batches: each step over a group has a cost in the number of users (a
        # bincount's length), which per message grew with the users, not the events (at 100M
        # events, 1.1M users, it was a tenth of the service's time), and temporaries of its size.
        # Songs are mapped a group at a time too: adding new ones to the sorted keys copies them
        # all, once a group rather than once a message. Each message is let go once its group is
        # counted, so what the flush holds shrinks as it goes.
        group: list[tuple[np.ndarray, ...]] = []
        rows = 0
        for index, (user_map, artist_map, song_map) in enumerate(zip(user_maps, artist_maps, song_maps, strict=True)):
            item, items[index] = items[index], None
            if group and rows + len(item[1]) > _GROUP_ROWS:
                self._add_group(group)
                group, rows = [], 0
            group.append((user_map[item[1]], artist_map[item[3]], song_map[item[5]], *item[6:]))
            rows += len(item[1])
            del item
        if group:
            self._add_group(group)
        self._release()

    def _add_group(self, group: list[tuple[np.ndarray | None, ...]]) -> None:
        users, artists, song_ids, *rest = _concatenated(group)
        group.clear()
        artists = artists.astype(np.int64)
        songs = self._songs.map((artists << _ITEM_BITS) | song_ids)
        self._add_numbers(users.astype(np.int64), artists, songs, *rest)

    def _add_numbers(
        self,
        users: np.ndarray,
        artists: np.ndarray,
        songs: np.ndarray,
        duration: np.ndarray,
        ts: np.ndarray,
        plays: np.ndarray | None,
    ) -> None:
        n = len(self._time)
        duration = duration.astype(np.int64)
        # bincount sums in float64: exact only below 2^53, so add the 16-bit halves separately.
        low = np.bincount(users, weights=duration & 0xFFFF, minlength=n).astype(np.int64)
        high = np.bincount(users, weights=duration >> 16, minlength=n).astype(np.int64)
        self._time += low + (high << 16)
        # A group's weighted sums stay below 2^53 (2^20 rows of at most 2^32 plays): exact in float64.
        weights = None if plays is None else plays.astype(np.float64)
        self._plays += np.bincount(users, weights, minlength=n).astype(np.int64)
        self._artist_plays += np.bincount(artists, weights, minlength=len(self._artist_plays)).astype(np.int64)
        self._user_songs.add((users << _ITEM_BITS) | songs, plays)

        ts = ts.astype(np.int64)
        lo, hi = int(ts.min()), int(ts.max())
        self.first_ts = lo if self.first_ts is None else min(self.first_ts, lo)
        self.last_ts = hi if self.last_ts is None else max(self.last_ts, hi)
        day, cell, month = local_fields(self.clock.local(ts))
        self._when.add((users << _WHEN_BITS) | (cell << _MONTH_BITS) | (month + _MONTH_BIAS), plays)
        self._cells += np.bincount(cell, weights, minlength=CELLS).astype(np.int64)
        self._add_days(day, weights)

    def _add_days(self, day: np.ndarray, weights: np.ndarray | None) -> None:
        lo, hi = int(day.min()), int(day.max())
        if not len(self._day_counts):
            self._day0 = lo
        new0 = min(self._day0, lo)
        size = max(self._day0 + len(self._day_counts), hi + 1) - new0
        if new0 != self._day0 or size != len(self._day_counts):
            grown = np.zeros(size, dtype=np.int64)
            grown[self._day0 - new0 : self._day0 - new0 + len(self._day_counts)] = self._day_counts
            self._day_counts, self._day0 = grown, new0
        self._day_counts += np.bincount(day - new0, weights, minlength=size).astype(np.int64)

    def _song_names(self, songs: np.ndarray | None = None) -> SongNames:
        """The names of ``songs`` (ids; all songs when None): key, artist and song_id."""
        pairs = self._songs.keys if songs is None else self._songs.keys[songs]
        artist = pc.take(self._artists.values, pa.array(pairs >> _ITEM_BITS))
        song_id = pc.take(self._song_ids.values, pa.array(pairs & ((1 << _ITEM_BITS) - 1)))
        return SongNames(pc.binary_join_element_wise(artist, song_id, " - "), artist, song_id)

    def _song_keys(self) -> tuple[np.ndarray, np.ndarray]:
        """Each song's key id (two (artist, song_id) pairs may spell one key) and its rank in key
        order. The names themselves are let go: each message names only its own songs."""
        key = self._song_names().key
        encoded = pc.dictionary_encode(key)
        # Each song's key id: songs of two (artist, song_id) pairs that spell one key share it.
        canonical = encoded.indices.to_numpy().astype(np.int64)
        rank = np.empty(len(key), dtype=np.int64)
        rank[pc.sort_indices(key).to_numpy()] = np.arange(len(key))
        return canonical, rank

    def _build_lists(self) -> dict[str, _ListBuckets]:
        if self._lists is not None:
            return self._lists
        self._flush()
        n = len(self._users)
        rank = np.empty(n, dtype=np.int64)
        rank[pc.sort_indices(self._users.values).to_numpy()] = np.arange(n)
        canonical, song_rank = self._song_keys()
        self._songs.freeze()
        # The names the keys were computed from are let go: hand their memory back before the
        # counters are read back beside it.
        self._release()
        collisions = len(canonical) > 0 and int(canonical.max()) + 1 < len(canonical)
        song_artist = self._songs.keys >> _ITEM_BITS
        artist_rank = np.empty(len(self._artists), dtype=np.int64)
        artist_rank[pc.sort_indices(self._artists.values).to_numpy()] = np.arange(len(self._artists))
        low = (1 << _ITEM_BITS) - 1
        lists = {
            kind: _ListBuckets(rank, self.BUCKET_USERS, self._lists_file)
            for kind in ("top_songs", "top_artists", "artist_plays", "daily_activity", "monthly_activity")
        }
        top_songs, top_artists, artist_plays = lists["top_songs"], lists["top_artists"], lists["artist_plays"]
        pairs = 0
        # Drained: each block of users' counts is let go once its lists are made.
        for keys, counts in self._user_songs.drain(rows=_RANGE_ROWS, align_bits=_ITEM_BITS):
            pairs += len(keys)
            users, songs = keys >> _ITEM_BITS, keys & low
            # Artists from the songs as they were played, before songs spelling one key are merged.
            by_artist, artist_counts = _sum_unsorted((users << _ITEM_BITS) | song_artist[songs], counts)
            a_users, a_ids = by_artist >> _ITEM_BITS, by_artist & low
            best = top_per_group(a_users, a_ids, artist_counts, artist_rank, TOP_PER_USER)
            top_artists.add(a_users[best], a_ids[best], artist_counts[best])
            if self.artist_plays:
                artist_plays.add(a_users, a_ids, artist_counts)
            if collisions:
                users, songs, counts = _merge_spellings(users, songs, counts, canonical, song_artist, artist_rank)
            best = top_per_group(users, songs, counts, song_rank, TOP_PER_USER)
            top_songs.add(users[best], songs[best], counts[best])
        self._release()
        cells, months = lists["daily_activity"], lists["monthly_activity"]
        for keys, counts in self._when.drain(rows=_RANGE_ROWS, align_bits=_WHEN_BITS):
            users = keys >> _WHEN_BITS
            # Keys are sorted by (user, cell, month): (user, cell) runs are contiguous.
            by_cell, cell_counts = _sum_sorted(keys >> _MONTH_BITS, counts)
            cells.add(by_cell >> 8, by_cell & 0xFF, cell_counts)
            month = keys & ((1 << _MONTH_BITS) - 1)
            by_month, month_counts = _sum_unsorted((users << _MONTH_BITS) | month, counts)
            months.add(by_month >> _MONTH_BITS, (by_month & ((1 << _MONTH_BITS) - 1)) - _MONTH_BIAS, month_counts)
        # What was set aside of the counters is read: the file's space is given back now.
        self._counters_file.close()
        self._release()
        self._lists = lists
        self._pairs = pairs
        return self._lists

    def summaries(self, chunk: int = 50_000, entries: int = ARTIST_ENTRIES_PER_MESSAGE) -> Iterator[UserColumns]:
        """Every user's summary and statistics in user_id order, ``chunk`` users at a time, and
        fewer when their plays per artist (if kept) would pass ``entries`` (one user at least)."""
        lists = self._build_lists()
        users = self._users.values
        by_name = pc.sort_indices(users).to_numpy()
        for bucket, first in enumerate(range(0, len(users), self.BUCKET_USERS)):
            ids = by_name[first : first + self.BUCKET_USERS]
            kinds = {kind: buckets.bucket(bucket, len(ids)) for kind, buckets in lists.items()}
            top = kinds["top_artists"]
            heads = np.concatenate(([0], top.ends[:-1].astype(np.int64)))
            top_artist_id = top.keys[heads] if len(top.keys) else np.empty(0, dtype=np.int64)
            sizes = None
            if self.artist_plays:
                sizes = kinds["artist_plays"].ends.astype(np.int64)
            start = 0
            while start < len(ids):
                stop = min(start + chunk, len(ids))
                if sizes is not None:
                    before = int(sizes[start - 1]) if start else 0
                    stop = max(start + 1, min(stop, int(np.searchsorted(sizes, before + entries, side="right"))))
                local = np.arange(start, stop)
                chunk_ids = ids[start:stop]
                start = stop
                top_songs = kinds["top_songs"].take(local)
                songs, song_keys = np.unique(top_songs.keys, return_inverse=True)
                yield UserColumns(
                    user_ids=pc.take(users, pa.array(chunk_ids)).to_pylist(),
                    total_time=self._time[chunk_ids].tolist(),
                    top_artist=pc.take(self._artists.values, pa.array(top_artist_id[local])).to_pylist(),
                    plays=self._plays[chunk_ids].tolist(),
                    top_artists=top.take(local),
                    top_songs=Lists(top_songs.ends, song_keys.reshape(-1).astype(np.int32), top_songs.counts),
                    daily_activity=kinds["daily_activity"].take(local),
                    monthly_activity=kinds["monthly_activity"].take(local),
                    artist_plays=kinds["artist_plays"].take(local) if self.artist_plays else None,
                    artists=self._artists.values,
                    songs=self._song_names(songs),
                )

    def close(self) -> None:
        """Give back the disk space of what was set aside (the files go with the process anyway),
        once the flush in flight, if any, is over."""
        if self._worker is not None:
            self._worker.shutdown(wait=True)
            self._worker = None
        self._inflight = None
        self._counters_file.close()
        self._lists_file.close()

    def site_activity(self) -> SiteActivity:
        self._flush()
        days = np.flatnonzero(self._day_counts)
        return SiteActivity(
            daily_activity=self._cells.copy(),
            days=days + self._day0,
            day_counts=self._day_counts[days],
            artists=self._artists.values,
            artist_counts=self._artist_plays[: len(self._artists)],
            first_ts=self.first_ts or 0,
            last_ts=self.last_ts or 0,
        )

    def top_users(self, n: int = TOP_USERS) -> list[tuple[str, int]]:
        """The ``n`` users with the highest total time, ties by user_id ascending."""
        self._flush()
        count = len(self._users)
        if count == 0 or n <= 0:
            return []
        times = self._time[:count]
        threshold = np.partition(times, count - n)[count - n] if count > n else times.min()
        candidates = np.flatnonzero(times >= threshold)
        names = self._users.get(candidates)
        return rank_users(((name, int(times[i])) for name, i in zip(names, candidates, strict=True)), n)


__all__ = ["CELLS", "Lists", "SiteActivity", "SongNames", "UserColumns", "UserStats", "local_fields", "rank_users"]
