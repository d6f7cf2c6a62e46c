"""Personalized artists: every user's plays per artist, collected message by message, then one
model trained on all of them and asked for every user. Plain functions and data, no gRPC.

Users and artists are indexed in name order, whatever order they arrived in and however many
UserBehavior replicas they came from: the same plays give the same matrix, so the same answer.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from music_analytics.services.recommendation.model import Model, ModelConfig, PlayMatrix, train

# What each user's list is made of (ArtistRecommendations.source).
FROM_MODEL, MODEL_THEN_POPULAR, POPULAR_ONLY = 0, 1, 2


@dataclass(frozen=True)
class UsersPlays:
    """One message's users and their plays per artist, flattened per user."""

    user_ids: pa.Array  # strings
    ends: np.ndarray  # uint32 per user
    artists: pa.Array  # the message's artist names
    artist_idx: np.ndarray  # per entry, into ``artists``
    plays: np.ndarray  # uint32 per entry, at least 1

    @property
    def nbytes(self) -> int:
        return (
            self.user_ids.nbytes + self.ends.nbytes + self.artists.nbytes + self.artist_idx.nbytes + self.plays.nbytes
        )


@dataclass(frozen=True)
class Answer:
    """Recommendations for ``user_ids[i]``: entries ``ends[i-1]:ends[i]`` of ``artists``/``scores``."""

    user_ids: pa.Array
    ends: np.ndarray
    artist_names: pa.Array  # every artist, by code
    artists: np.ndarray  # codes, per entry
    scores: np.ndarray  # float32 per entry
    source: np.ndarray  # uint8 per user: FROM_MODEL, MODEL_THEN_POPULAR or POPULAR_ONLY


class PlaysCollector:
    """Holds the users' plays as they arrive (as received: the matrix is built once, at the end)."""

    # Peak memory over ``nbytes`` while training and answering: the CSR matrix and its weighted
    # copy and transpose beside the received messages. Measured growth over the state at 5M pairs
    # (20k artists, 2 threads): 6.1x; at 1M pairs 15x, but that is mostly a fixed ~100 MB that the
    # service's per-call budget leaves room for.
    peak_factor = 6

    def __init__(self) -> None:
        self._parts: list[UsersPlays] = []
        self.nbytes = 0
        self.entries = 0

    def add(self, part: UsersPlays) -> None:
        self._parts.append(part)
        self.nbytes += part.nbytes
        self.entries += len(part.plays)

    def matrix(self) -> tuple[pa.Array, pa.Array, PlayMatrix]:
        """User names and artist names, each sorted, and the users x artists plays (a user or pair
        sent twice is summed). The received parts are let go."""
        parts, self._parts = self._parts, []
        if not parts:
            empty = pa.array([], pa.string())
            return empty, empty, PlayMatrix.from_codes(*(np.empty(0, np.int32),) * 3, 0, 0)
        # Every part's users and dictionaries at once: one hash table of the names for all parts.
        users = pa.chunked_array([p.user_ids for p in parts], pa.string()).combine_chunks()
        dictionaries = pa.chunked_array([p.artists for p in parts], pa.string()).combine_chunks()
        user_names, artist_names = _sorted_distinct(users), _sorted_distinct(dictionaries)
        per_user = np.concatenate([np.diff(np.concatenate(([0], p.ends.astype(np.int64)))) for p in parts])
        user_codes = np.repeat(pc.index_in(users, value_set=user_names).to_numpy().astype(np.int32), per_user)
        first = np.cumsum([0] + [len(p.artists) for p in parts[:-1]])
        entries = np.concatenate(
            [p.artist_idx.astype(np.int64) + offset for p, offset in zip(parts, first, strict=True)]
        )
        artist_codes = pc.index_in(dictionaries, value_set=artist_names).to_numpy().astype(np.int32)[entries]
        plays = np.concatenate([p.plays for p in parts])
        del parts, entries
        matrix = PlayMatrix.from_codes(user_codes, artist_codes, plays, len(user_names), len(artist_names))
        return user_names, artist_names, matrix


def _sorted_distinct(values: pa.Array) -> pa.Array:
    distinct = pc.unique(values)
    return distinct.take(pc.sort_indices(distinct))


@dataclass(frozen=True)
class Trained:
    user_names: pa.Array
    artist_names: pa.Array
    pairs: int
    model: Model
    n: int


def train_on(collector: PlaysCollector, config: ModelConfig, n: int) -> Trained:
    """Train on every user's plays, to recommend each ``n`` artists they have not played."""
    user_names, artist_names, matrix = collector.matrix()
    return Trained(user_names, artist_names, matrix.csr.nnz, train(matrix, config), n)


def answers(trained: Trained, users_per_answer: int) -> Iterator[Answer]:
    """Every user's recommendations in user_id order, ``users_per_answer`` users at a time, each
    part scored when it is asked for: the first parts are on their way (and being written into the
    lines) while the rest are scored."""
    for lo in range(0, len(trained.user_names), users_per_answer):
        hi = min(lo + users_per_answer, len(trained.user_names))
        recs = trained.model.recommend(np.arange(lo, hi), trained.n)
        lengths = np.diff(np.concatenate(([0], recs.ends.astype(np.int64))))
        source = np.where(
            recs.from_model == lengths, FROM_MODEL, np.where(recs.from_model == 0, POPULAR_ONLY, MODEL_THEN_POPULAR)
        )
        yield Answer(
            user_ids=trained.user_names[lo:hi],
            ends=recs.ends,
            artist_names=trained.artist_names,
            artists=recs.artists,
            scores=recs.scores,
            source=source.astype(np.uint8),
        )
