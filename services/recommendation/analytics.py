"""Trending songs and per-user recommendations. Plain functions and data, no gRPC."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from music_analytics.services.common.contract import TRENDING_SONGS, top_ranked


@dataclass(frozen=True)
class Candidate:
    song: str  # "{artist} - {song_id}"
    artist: str
    plays: int


def trending(candidates: Iterable[Candidate], n: int = TRENDING_SONGS) -> list[Candidate]:
    """The ``n`` most played songs; ties by key ascending."""
    return top_ranked(candidates, n, count=lambda c: c.plays, key=lambda c: c.song)


class Recommender:
    """Recommends each user the trending songs not by their top artist, in trending order.

    The original compared substrings (``artist in song``), so a user whose top artist was "Ab"
    never got songs by "Abba"; here the artist must match exactly.
    """

    def __init__(self, trending_songs: Sequence[Candidate]) -> None:
        self.trending = list(trending_songs)
        self._everything = (1 << len(self.trending)) - 1
        # Only the artists of trending songs can exclude anything: precompute their masks.
        self._without = {
            c.artist: sum(1 << j for j, s in enumerate(self.trending) if s.artist != c.artist) for c in self.trending
        }

    def mask_for(self, top_artist: str) -> int:
        """Bit j set: trending song j is recommended to a user whose top artist is ``top_artist``."""
        return self._without.get(top_artist, self._everything)

    def for_user(self, top_artist: str) -> list[str]:
        mask = self.mask_for(top_artist)
        return [c.song for j, c in enumerate(self.trending) if mask >> j & 1]
