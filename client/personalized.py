"""Personalized artists in the per-user lines.

UserBehavior answers every user's plays per artist along with their statistics; each shard's are
spooled to a file as they arrive, already encoded as RecommendArtists messages. Once every shard
has answered, one Recommendation replica is sent all of them: the model needs every user's plays,
so one replica trains it, and it answers users in user_id order, the order of the lines. Its
answer is merged into the lines as they are written. A lost replica's call is made again, on
another, and the lines are written again.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from music_analytics.api import recommendation_pb2, userbehavior_pb2
from music_analytics.client.listening import UserStatsSink, group_concat, json_strings, strings
from music_analytics.client.replicas import Endpoint, Replicas, ServiceError, ask_one_replica
from music_analytics.services.common.contract import RECOMMEND_ARTISTS_METHOD
from music_analytics.services.common.events import string_array_message

__all__ = ["ArtistSettings", "PlaysSpool", "write_with_artists"]


@dataclass(frozen=True)
class ArtistSettings:
    n: int
    algorithm: str = ""  # empty: the service's default
    seed: int = 0

    def message(self) -> bytes:
        settings = recommendation_pb2.ArtistModelSettings(n=self.n, algorithm=self.algorithm, seed=self.seed)
        return recommendation_pb2.RecommendArtistsRequest(settings=settings).SerializeToString()


class PlaysSpool:
    """One shard's users with their plays per artist, as RecommendArtists request messages in a
    file (length-prefixed): held on disk, not in memory, until every shard has answered."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("wb")

    def add(self, users: userbehavior_pb2.UserSummaries, source: str) -> None:
        if not users.HasField("artist_plays"):
            raise ServiceError(f"{source} answered users without their plays per artist, which the call asked for")
        ids = string_array_message(pa.array(list(users.user_ids), pa.string()))
        request = recommendation_pb2.RecommendArtistsRequest(
            users=recommendation_pb2.UserArtistPlays(user_ids=ids, plays=users.artist_plays)
        )
        data = request.SerializeToString()
        self._file.write(len(data).to_bytes(4, "little"))
        self._file.write(data)

    def close(self) -> None:
        self._file.close()

    def discard(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)

    def requests(self) -> Iterator[bytes]:
        with self.path.open("rb") as f:
            while size := f.read(4):
                yield f.read(int.from_bytes(size, "little"))


@dataclass
class ArtistModelSummary:
    """What the results JSON says of the model: the service's ArtistModel and how many users got what."""

    model: recommendation_pb2.ArtistModel
    n: int
    users_by: dict[str, int] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "algorithm": self.model.algorithm,
            "n": self.n,
            "users": self.model.users,
            "artists": self.model.artists,
            "pairs": self.model.pairs,
            "train_seconds": round(self.model.train_seconds, 3),
            "users_by": self.users_by,
        }


def write_with_artists(
    sink: UserStatsSink, replicas: Replicas, wait: float, settings: ArtistSettings, spools: list[PlaysSpool]
) -> ArtistModelSummary:
    """Send every spooled user to one Recommendation replica and write the per-user file with its
    answer merged in. Raises ServiceError naming the replica when it fails for good or answers
    outside the contract."""

    def requests() -> Iterator[bytes]:
        yield settings.message()
        for spool in spools:
            yield from spool.requests()

    for spool in spools:
        spool.close()

    def ask(endpoint: Endpoint, source: str) -> ArtistModelSummary:
        call = endpoint.channel.stream_stream(
            RECOMMEND_ARTISTS_METHOD,
            request_serializer=bytes,
            response_deserializer=recommendation_pb2.RecommendArtistsResponse.FromString,
        )
        replies = call(requests())
        try:
            first = next(replies, None)
            if first is None or first.WhichOneof("payload") != "model":
                raise ServiceError(f"{source} did not answer with the model first")
            summary = ArtistModelSummary(first.model, settings.n)
            sink.finish(_fragments(replies, summary, source))
            return summary
        except ServiceError:
            replies.cancel()
            raise

    return ask_one_replica(replicas, wait, ask)


def _fragments(
    replies: Iterator[recommendation_pb2.RecommendArtistsResponse], summary: ArtistModelSummary, source: str
) -> Iterator[tuple[pa.Array, pa.Array]]:
    """Per answer message: its user ids and the text each user's line gains, in the answer's order."""
    algorithm = summary.model.algorithm
    labels = [algorithm, f"{algorithm}+popularity", "popularity"]
    label_json = pa.array([f',"recommended_by":"{label}"' for label in labels], pa.string())
    summary.users_by = dict.fromkeys(labels, 0)
    for reply in replies:
        if reply.WhichOneof("payload") != "users":
            raise ServiceError(f"{source} answered a second model instead of users")
        r = reply.users
        users = strings(r.user_ids)
        ends = np.frombuffer(r.ends, dtype="<u4").astype(np.int64)
        kind = np.frombuffer(r.source, dtype=np.uint8)
        names = strings(r.artists.dictionary)
        idx = np.frombuffer(r.artists.indices, dtype="<u4")
        scores = np.frombuffer(r.scores, dtype="<f4")
        entries = int(ends[-1]) if len(ends) else 0
        if len(ends) != len(users) or len(kind) != len(users) or len(idx) != entries or len(scores) != entries:
            raise ServiceError(f"{source} answered recommendations whose columns disagree in length")
        if (len(kind) and int(kind.max()) > 2) or (entries and int(idx.max()) >= len(names)):
            raise ServiceError(f"{source} answered recommendations outside the contract")
        score_text = _json_floats(scores)
        items = pc.binary_join_element_wise(
            '{"artist":', json_strings(names).take(pa.array(idx)), ',"score":', score_text, "}", ""
        )
        text = pc.binary_join_element_wise(
            ',"recommended_artists":[', group_concat(items, ends), "]", label_json.take(pa.array(kind)), ""
        )
        for label, count in zip(labels, np.bincount(kind, minlength=3).tolist(), strict=True):
            summary.users_by[label] += count
        yield users, text.cast(pa.binary())


def _json_floats(values: np.ndarray) -> pa.Array:
    """Each value rounded to four decimals (the ranking is what counts, and a float32 says little
    more) as a JSON number that always reads back as a float: "2.0", never "2"."""
    text = pc.cast(pa.array(np.round(values.astype(np.float64), 4)), pa.string())
    integral = pc.invert(pc.match_substring_regex(text, "[.eE]"))
    return pc.if_else(integral, pc.binary_join_element_wise(text, ".0", ""), text)
