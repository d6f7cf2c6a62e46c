"""Play counts per song. Plain functions and data; the gRPC servicer is a thin adapter around them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from music_analytics.services.common.columns import KeyCounter, PendingBatches, StringIds
from music_analytics.services.common.contract import TOP_SONGS, top_ranked


@dataclass(frozen=True)
class SongCount:
    song: str
    artist: str
    song_id: str
    plays: int


def rank_songs(songs: Iterable[SongCount], n: int) -> list[SongCount]:
    """The ``n`` most played songs; ties broken by key ascending so every run agrees."""
    return top_ranked(songs, n, count=lambda s: s.plays, key=lambda s: s.song)


class PlayCounter:
    """Accumulates play counts per song key over batches of events.

    Artists and song ids are mapped to ids in bulk (short strings, and few distinct artists);
    plays are counted per (artist id, song id) pair as int64 keys in sorted runs. The
    "{artist} - {song_id}" key strings are built once, at the end, for the distinct pairs only,
    and two pairs that spell the same key are counted as one song.
    """

    # Peak memory over ``nbytes``, measured by bench/call_memory.py: 3.1x (100k songs) to 5.2x
    # (1M songs) at 4M events.
    peak_factor = 6

    def __init__(self) -> None:
        self._artists = StringIds()
        self._song_ids = StringIds()
        self._pairs = KeyCounter()
        self._pending = PendingBatches()
        self._songs: _Songs | None = None
        self.events = 0

    @property
    def distinct_songs(self) -> int:
        return len(self._totals().plays)

    @property
    def nbytes(self) -> int:
        """Memory the counts hold: the distinct strings, 12 bytes per distinct (artist, song) pair
        in the runs, and batches waiting to be mapped."""
        return self._artists.values.nbytes + self._song_ids.values.nbytes + self._pairs.nbytes + self._pending.nbytes

    def add_columns(
        self,
        artist_dict: pa.Array,
        artist_idx: np.ndarray,
        song_dict: pa.Array,
        song_idx: np.ndarray,
        plays: np.ndarray | None = None,
    ) -> None:
        """Add a batch given as two dictionary-encoded columns (row i: artist_dict[artist_idx[i]]);
        row i is ``plays[i]`` plays, or one without ``plays``."""
        if len(artist_idx) == 0:
            return
        self._pending.add((artist_dict, artist_idx, song_dict, song_idx, plays), len(artist_idx))
        self.events += len(artist_idx)
        self._songs = None
        if self._pending.due(max(len(self._artists), len(self._song_ids))):
            self._flush()

    def _flush(self) -> None:
        items = self._pending.take()
        if not items:
            return
        artist_maps = self._artists.map_arrays([item[0] for item in items])
        song_maps = self._song_ids.map_arrays([item[2] for item in items])
        for (_, a_idx, _, s_idx, plays), a_map, s_map in zip(items, artist_maps, song_maps, strict=True):
            self._pairs.add((a_map[a_idx] << _SONG_BITS) | s_map[s_idx], plays)

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

    def _totals(self) -> _Songs:
        """Plays per distinct key string (cached until the next batch)."""
        if self._songs is not None:
            return self._songs
        self._flush()
        keys, plays = [], []
        for pairs, counts in self._pairs.merged():
            keys.append(pairs)
            plays.append(counts)
        pairs = np.concatenate(keys) if keys else np.empty(0, dtype=np.int64)
        counts = np.concatenate(plays).astype(np.int64) if plays else np.empty(0, dtype=np.int64)
        artist = pc.take(self._artists.values, pa.array(pairs >> _SONG_BITS))
        song_id = pc.take(self._song_ids.values, pa.array(pairs & ((1 << _SONG_BITS) - 1)))
        key = pc.dictionary_encode(pc.binary_join_element_wise(artist, song_id, " - "))
        key_of_pair = key.indices.to_numpy()
        totals = np.bincount(key_of_pair, weights=counts, minlength=len(key.dictionary)).astype(np.int64)
        self._songs = _Songs(key.dictionary, totals, key_of_pair, artist, song_id)
        return self._songs

    def top(self, n: int = TOP_SONGS) -> list[SongCount]:
        """The ``n`` most played songs, ties by key ascending."""
        songs = self._totals()
        count = len(songs.plays)
        if count == 0 or n <= 0:
            return []
        # Every song tied with the n-th count is a candidate; only those need a string sort.
        threshold = np.partition(songs.plays, count - n)[count - n] if count > n else songs.plays.min()
        candidates = np.flatnonzero(songs.plays >= threshold)
        keys = pc.take(songs.keys, pa.array(candidates)).to_pylist()
        ranked = rank_songs(
            (SongCount(k, "", "", int(songs.plays[i])) for k, i in zip(keys, candidates, strict=True)), n
        )
        index = dict(zip(keys, candidates.tolist(), strict=True))
        return [self._split(song, index[song.song]) for song in ranked]

    def _split(self, song: SongCount, key_id: int) -> SongCount:
        """The artist and song_id of a key: if two splits spell it, the smallest artist (the rule)."""
        songs = self._totals()
        pairs = np.flatnonzero(songs.key_of_pair == key_id)
        artists = pc.take(songs.artist, pa.array(pairs)).to_pylist()
        best = min(range(len(pairs)), key=artists.__getitem__)
        return SongCount(song.song, artists[best], songs.song_id[int(pairs[best])].as_py(), song.plays)


_SONG_BITS = 32


@dataclass(frozen=True)
class _Songs:
    keys: pa.Array  # distinct "{artist} - {song_id}" strings
    plays: np.ndarray  # per key
    key_of_pair: np.ndarray  # for each distinct (artist, song_id) pair: its key's index
    artist: pa.Array  # per pair
    song_id: pa.Array  # per pair
