"""The Recommendation call: one replica answers for every user; a lost replica's call is asked
again of another."""

from __future__ import annotations

from collections.abc import Iterator

from music_analytics.api import mapreduce_pb2, recommendation_pb2
from music_analytics.client.merge import UserResult
from music_analytics.client.replicas import Endpoint, Replicas, ServiceError, ask_one_replica
from music_analytics.services.common.contract import MAX_TRENDING_N, TRENDING_SONGS, USERS_PER_MESSAGE

__all__ = ["TrendingMasks", "recommend"]


class TrendingMasks(dict[int, list[str]]):
    """A user's recommended songs by trending mask (bit j: trending song j), decoded when a mask is
    first seen and shared by every user with that mask.

    Lazily, because the masks that occur are few (users mostly differ only in whether their top
    artist has a trending song) while the possible masks are 2**len(songs). A dict subclass, so a
    lookup of a mask already seen stays one C-level ``dict`` lookup per user.
    """

    def __init__(self, songs: list[str], source: str) -> None:
        super().__init__()
        if len(songs) > MAX_TRENDING_N:
            raise ServiceError(
                f"{source} answered {len(songs)} trending songs; a mask of recommendations can name "
                f"at most {MAX_TRENDING_N}"
            )
        self._songs = songs
        self._source = source

    def __missing__(self, mask: int) -> list[str]:
        if mask >> len(self._songs):
            raise ServiceError(
                f"{self._source} answered a recommendation mask {mask:#x} naming songs beyond its "
                f"{len(self._songs)} trending songs"
            )
        songs = self[mask] = [s for j, s in enumerate(self._songs) if mask >> j & 1]
        return songs


def recommend(
    replicas: Replicas, wait: float, top_songs: list[mapreduce_pb2.SongCount], users: list[UserResult]
) -> tuple[list, dict[str, list[str]]]:
    """Ask one Recommendation replica; a lost replica's call is asked again of another (the call
    holds no state worth keeping), as many times as there are replicas, and a few more.

    Raises ServiceError naming the replica when it fails for good or answers outside the contract.
    """

    candidates = [recommendation_pb2.CandidateSong(song=s.song, artist=s.artist, plays=s.plays) for s in top_songs]

    def requests() -> Iterator[recommendation_pb2.RecommendRequest]:
        yield recommendation_pb2.RecommendRequest(
            candidates=recommendation_pb2.Candidates(songs=candidates, trending_n=TRENDING_SONGS)
        )
        for start in range(0, len(users), USERS_PER_MESSAGE):
            part = users[start : start + USERS_PER_MESSAGE]
            yield recommendation_pb2.RecommendRequest(
                users=recommendation_pb2.UserProfiles(
                    user_ids=[u.user_id for u in part], top_artist=[u.top_artist for u in part]
                )
            )

    def ask(endpoint: Endpoint, source: str) -> tuple[list, dict[str, list[str]]]:
        call = endpoint.channel.stream_stream(
            replicas.service.method,
            request_serializer=recommendation_pb2.RecommendRequest.SerializeToString,
            response_deserializer=recommendation_pb2.RecommendResponse.FromString,
        )
        replies = call(requests())
        try:
            return _read_answer(replies, source)
        except ServiceError:
            replies.cancel()
            raise

    return ask_one_replica(replicas, wait, ask)


def _read_answer(
    replies: Iterator[recommendation_pb2.RecommendResponse], source: str
) -> tuple[list, dict[str, list[str]]]:
    trending: list = []
    recommendations: dict[str, list[str]] = {}
    masks: TrendingMasks | None = None
    for reply in replies:
        if reply.WhichOneof("payload") == "trending":
            trending = list(reply.trending.songs)
            masks = TrendingMasks([s.song for s in trending], source)
            continue
        r = reply.recommendations
        if masks is None:
            raise ServiceError(f"{source} answered recommendations before the trending songs they refer to")
        if len(r.user_ids) != len(r.trending_mask):
            raise ServiceError(
                f"{source} answered {len(r.user_ids)} users with {len(r.trending_mask)} recommendation masks"
            )
        recommendations.update(zip(r.user_ids, map(masks.__getitem__, r.trending_mask), strict=True))
    return trending, recommendations
