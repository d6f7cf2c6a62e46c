"""Play counts per song. Plain functions and data; the gRPC servicer is a thin adapter around them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from music_analytics.services.common.columns import PendingBatches, StringIds

TOP_SONGS = 10


def song_key(artist: str, song_id: str) -> str:
    """The key songs are counted under, as in the original design."""
    return f"{artist} - {song_id}"


@dataclass(frozen=True)
class SongCount:
    song: str
    artist: str
    song_id: str
    plays: int


def rank_songs(songs: Iterable[SongCount], n: int) -> list[SongCount]:
    """The ``n`` most played songs; ties broken by key ascending so every run agrees."""
    return sorted(songs, key=lambda s: (-s.plays, s.song))[:n]


class PlayCounter:
    """Accumulates play counts per song key over batches of events.

    Each batch is first reduced to its distinct (artist, song_id) pairs with their plays; the
    pairs' keys are mapped to ids in bulk every few hundred thousand rows (``PendingBatches``).
    """

    def __init__(self) -> None:
        self._keys = StringIds()
        # For each key id: the artist and song_id of its first play (a key such as "A - B - C"
        # can arise from two splits; the first seen wins).
        self._artist = pa.array([], type=pa.string())
        self._song_id = pa.array([], type=pa.string())
        self._counts = np.zeros(0, dtype=np.int64)
        self._pending = PendingBatches()
        self.events = 0

    @property
    def distinct_songs(self) -> int:
        self._flush()
        return len(self._keys)

    def add_columns(
        self, artist_dict: pa.Array, artist_idx: np.ndarray, song_dict: pa.Array, song_idx: np.ndarray
    ) -> None:
        """Add a batch given as two dictionary-encoded columns (row i: artist_dict[artist_idx[i]])."""
        if len(artist_idx) == 0:
            return
        width = max(len(song_dict), 1)
        encoded = pc.dictionary_encode(pa.array(artist_idx.astype(np.int64) * width + song_idx))
        pairs = encoded.dictionary.to_numpy()
        plays = np.bincount(encoded.indices.to_numpy(), minlength=len(pairs))
        artists = pc.take(artist_dict, pa.array(pairs // width))
        song_ids = pc.take(song_dict, pa.array(pairs % width))
        self._pending.add((artists, song_ids, plays), len(artist_idx))
        self.events += len(artist_idx)
        if self._pending.due(len(self._keys)):
            self._flush()

    def _flush(self) -> None:
        items = self._pending.take()
        if not items:
            return
        artists = [a for a, _, _ in items]
        song_ids = [s for _, s, _ in items]
        before = len(self._keys)
        ids = np.concatenate(self._keys.map_arrays([pc.binary_join_element_wise(a, s, " - ") for a, s, _ in items]))
        plays = np.concatenate([p for _, _, p in items])
        count = len(self._keys)
        if count > before:
            new = np.flatnonzero(ids >= before)
            first = new[np.unique(ids[new], return_index=True)[1]]  # ids are assigned in first-seen order
            self._artist = pa.concat_arrays([self._artist, pc.take(pa.concat_arrays(artists), pa.array(first))])
            self._song_id = pa.concat_arrays([self._song_id, pc.take(pa.concat_arrays(song_ids), pa.array(first))])
            self._counts = np.concatenate([self._counts, np.zeros(count - before, dtype=np.int64)])
        # A key may repeat within a flush (same pair in two batches, or two pairs spelling one key).
        self._counts += np.bincount(ids, weights=plays, minlength=count).astype(np.int64)

    def add_events(self, events: Iterable[tuple[str, str]]) -> None:
        """Add plain (artist, song_id) records."""
        artists, song_ids = [], []
        for artist, song_id in events:
            artists.append(artist)
            song_ids.append(song_id)
        if not artists:
            return
        a = pc.dictionary_encode(pa.array(artists, type=pa.string()))
        s = pc.dictionary_encode(pa.array(song_ids, type=pa.string()))
        self.add_columns(a.dictionary, a.indices.to_numpy(), s.dictionary, s.indices.to_numpy())

    def top(self, n: int = TOP_SONGS) -> list[SongCount]:
        """The ``n`` most played songs, ties by key ascending."""
        self._flush()
        count = len(self._keys)
        if count == 0 or n <= 0:
            return []
        counts = self._counts
        # Every song tied with the n-th count is a candidate; only those need a string sort.
        threshold = np.partition(counts, count - n)[count - n] if count > n else counts.min()
        candidates = np.flatnonzero(counts >= threshold)
        keys = self._keys.get(candidates)
        artists = pc.take(self._artist, pa.array(candidates)).to_pylist()
        song_ids = pc.take(self._song_id, pa.array(candidates)).to_pylist()
        return rank_songs(
            (
                SongCount(k, a, s, int(counts[i]))
                for k, a, s, i in zip(keys, artists, song_ids, candidates, strict=True)
            ),
            n,
        )
