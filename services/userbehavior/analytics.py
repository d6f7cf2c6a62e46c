"""Listening time and top artist per user. Plain functions and data, no gRPC."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from music_analytics.services.common.columns import KeyCounter, PendingBatches, StringIds
from music_analytics.services.common.contract import TOP_USERS, top_ranked

_ARTIST_BITS = 32


@dataclass(frozen=True)
class UserColumns:
    """Users as parallel lists: entry i of each belongs to user_ids[i]."""

    user_ids: list[str]
    total_time: list[int]  # seconds listened
    top_artist: list[str]  # most played artist, ties by name ascending
    plays: list[int]


def rank_users(users: Iterable[tuple[str, int]], n: int) -> list[tuple[str, int]]:
    """The ``n`` users with the highest total time; ties by user_id ascending."""
    return top_ranked(users, n, count=lambda u: u[1], key=lambda u: u[0])


class UserStats:
    """Accumulates per-user listening time and per-(user, artist) play counts over batches.

    Batches wait in ``PendingBatches`` until their user and artist strings can be mapped to ids
    in bulk; all per-row work is numpy.
    """

    def __init__(self) -> None:
        self._users = StringIds()
        self._artists = StringIds()
        self._time = np.zeros(0, dtype=np.int64)
        self._plays = np.zeros(0, dtype=np.int64)
        # (user id << 32 | artist id) -> plays: far smaller than any dataframe of the pairs.
        self._pairs = KeyCounter()
        self._pending = PendingBatches()
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
    def nbytes(self) -> int:
        """Memory the statistics hold: the distinct strings, 16 bytes per user, 12 per distinct
        (user, artist) pair in the runs, and batches waiting to be mapped."""
        strings = self._users.values.nbytes + self._artists.values.nbytes
        return strings + self._time.nbytes + self._plays.nbytes + self._pairs.nbytes + self._pending.nbytes

    @property
    def distinct_pairs(self) -> int:
        self._flush()
        return len(self._pairs)

    def add_columns(
        self,
        user_dict: pa.Array,
        user_idx: np.ndarray,
        artist_dict: pa.Array,
        artist_idx: np.ndarray,
        duration: np.ndarray,
    ) -> None:
        """Add a batch given as dictionary-encoded user and artist columns and a duration column."""
        if len(user_idx) == 0:
            return
        self._pending.add((user_dict, user_idx, artist_dict, artist_idx, duration), len(user_idx))
        self.events += len(user_idx)
        if self._pending.due(len(self._users)):
            self._flush()

    def _flush(self) -> None:
        items = self._pending.take()
        if not items:
            return
        user_maps = self._users.map_arrays([u for u, _, _, _, _ in items])
        artist_maps = self._artists.map_arrays([a for _, _, a, _, _ in items])
        users = np.concatenate([m[idx] for m, (_, idx, _, _, _) in zip(user_maps, items, strict=True)])
        artists = np.concatenate([m[idx] for m, (_, _, _, idx, _) in zip(artist_maps, items, strict=True)])
        duration = np.concatenate([d for _, _, _, _, d in items]).astype(np.int64)
        n = len(self._users)
        if n > len(self._time):
            self._time = np.concatenate([self._time, np.zeros(n - len(self._time), dtype=np.int64)])
            self._plays = np.concatenate([self._plays, np.zeros(n - len(self._plays), dtype=np.int64)])
        # bincount sums in float64: exact only below 2^53, so add the 16-bit halves separately.
        low = np.bincount(users, weights=duration & 0xFFFF, minlength=n).astype(np.int64)
        high = np.bincount(users, weights=duration >> 16, minlength=n).astype(np.int64)
        self._time += low + (high << 16)
        self._plays += np.bincount(users, minlength=n)
        self._pairs.add((users << _ARTIST_BITS) | artists)

    def add_events(self, events: Iterable[tuple[str, str, int]]) -> None:
        """Add plain (user_id, artist, duration) records."""
        users, artists, durations = [], [], []
        for user, artist, duration in events:
            users.append(user)
            artists.append(artist)
            durations.append(duration)
        if not users:
            return
        u = pc.dictionary_encode(pa.array(users, type=pa.string()))
        a = pc.dictionary_encode(pa.array(artists, type=pa.string()))
        self.add_columns(
            u.dictionary,
            u.indices.to_numpy(),
            a.dictionary,
            a.indices.to_numpy(),
            np.asarray(durations, dtype=np.uint32),
        )

    def top_artist_ids(self) -> np.ndarray:
        """For each user id, the artist id with the most plays; ties by artist name ascending."""
        self._flush()
        n_users = len(self._users)
        by_name = pc.sort_indices(self._artists.values).to_numpy()  # artist ids in name order
        n_artists = len(by_name)
        rank = np.empty(n_artists, dtype=np.int64)
        rank[by_name] = np.arange(n_artists)
        low = (1 << _ARTIST_BITS) - 1
        top = np.full(n_users, -1, dtype=np.int64)
        # Range by range of users (each user's pairs are contiguous and never split): the
        # temporaries stay a slice of the state, whatever the number of pairs.
        for keys, counts in self._pairs.merged(align_bits=_ARTIST_BITS):
            users = keys >> _ARTIST_BITS
            # One score orders (plays desc, name asc): the max per user is the answer.
            score = (counts.astype(np.int64) << _ARTIST_BITS) | (n_artists - 1 - rank[keys & low])
            starts = np.flatnonzero(np.concatenate(([True], users[1:] != users[:-1])))
            best = np.maximum.reduceat(score, starts)
            top[users[starts]] = by_name[n_artists - 1 - (best & low)]
        return top

    def summaries(self, chunk: int = 50_000) -> Iterator[UserColumns]:
        """Every user's summary in first-seen order, ``chunk`` users at a time, as columns."""
        top = self.top_artist_ids()
        artists = self._artists.values
        users = self._users.values
        for start in range(0, len(users), chunk):
            stop = min(start + chunk, len(users))
            yield UserColumns(
                user_ids=users.slice(start, stop - start).to_pylist(),
                total_time=self._time[start:stop].tolist(),
                top_artist=pc.take(artists, pa.array(top[start:stop])).to_pylist(),
                plays=self._plays[start:stop].tolist(),
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


__all__ = ["UserColumns", "UserStats", "rank_users"]
