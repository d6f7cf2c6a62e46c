"""Play counts per song. Plain functions and data; the gRPC servicer is a thin adapter around them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from music_analytics.services.common.columns import StringIds

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
    """Accumulates play counts per song key over batches of events."""

    def __init__(self) -> None:
        self._keys = StringIds()
        # For each key id: the artist and song_id of its first play (a key such as "A - B - C"
        # can arise from two splits; the first seen wins).
        self._artist: list[str] = []
        self._song_id: list[str] = []
        self._counts = np.zeros(1024, dtype=np.int64)
        self.events = 0

    @property
    def distinct_songs(self) -> int:
        return len(self._keys)

    def add_columns(
        self, artist_dict: pa.Array, artist_idx: np.ndarray, song_dict: pa.Array, song_idx: np.ndarray
    ) -> None:
        """Add a batch given as two dictionary-encoded columns (row i: artist_dict[artist_idx[i]])."""
        if len(artist_idx) == 0:
            return
        pair = artist_idx.astype(np.int64) * max(len(song_dict), 1) + song_idx
        encoded = pc.dictionary_encode(pa.array(pair, type=pa.int64()))
        unique_pairs = encoded.dictionary.to_numpy()
        per_pair = np.bincount(encoded.indices.to_numpy(), minlength=len(unique_pairs))
        artists = pc.take(artist_dict, pa.array(unique_pairs // max(len(song_dict), 1)))
        song_ids = pc.take(song_dict, pa.array(unique_pairs % max(len(song_dict), 1)))
        keys = pc.binary_join_element_wise(artists, song_ids, " - ").to_pylist()
        before = len(self._keys)
        ids = self._keys.map(keys)
        if len(self._keys) > before:
            # First occurrence of each new id, in id order.
            first = np.flatnonzero(ids >= before)
            first = first[np.unique(ids[first], return_index=True)[1]]
            self._artist.extend(pc.take(artists, pa.array(first)).to_pylist())
            self._song_id.extend(pc.take(song_ids, pa.array(first)).to_pylist())
            if len(self._keys) > len(self._counts):
                grown = np.zeros(max(len(self._keys), 2 * len(self._counts)), dtype=np.int64)
                grown[: len(self._counts)] = self._counts
                self._counts = grown
        # add.at, not +=: two (artist, song) pairs may share a key, so ids can repeat.
        np.add.at(self._counts, ids, per_pair)
        self.events += len(artist_idx)

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
        count = len(self._keys)
        if count == 0 or n <= 0:
            return []
        counts = self._counts[:count]
        # Every song tied with the n-th count is a candidate; only those need a string sort.
        threshold = np.partition(counts, count - n)[count - n] if count > n else counts.min()
        candidates = np.flatnonzero(counts >= threshold)
        return rank_songs(
            (SongCount(self._keys.values[i], self._artist[i], self._song_id[i], int(counts[i])) for i in candidates),
            n,
        )
