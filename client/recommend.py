"""The Recommendation call: one replica answers for every user; a lost replica's call is asked
again of another."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from music_analytics.api import mapreduce_pb2, recommendation_pb2
from music_analytics.client.merge import UserResult
from music_analytics.client.replicas import Replicas, ServiceError, describe, replica_lost
from music_analytics.services.common.contract import USERS_PER_MESSAGE

__all__ = ["recommend"]


def recommend(
    replicas: Replicas, wait: float, top_songs: list[mapreduce_pb2.SongCount], users: list[UserResult]
) -> tuple[list, dict[str, list[str]]]:
    """Ask one Recommendation replica; a lost replica's call is asked again of another (the call
    holds no state worth keeping), as many times as there are replicas, and a few more."""

    def requests() -> Iterator[recommendation_pb2.RecommendRequest]:
        yield recommendation_pb2.RecommendRequest(
            candidates=recommendation_pb2.Candidates(
                songs=[recommendation_pb2.CandidateSong(song=s.song, artist=s.artist, plays=s.plays) for s in top_songs]
            )
        )
        for start in range(0, len(users), USERS_PER_MESSAGE):
            part = users[start : start + USERS_PER_MESSAGE]
            yield recommendation_pb2.RecommendRequest(
                users=recommendation_pb2.UserProfiles(
                    user_ids=[u.user_id for u in part], top_artist=[u.top_artist for u in part]
                )
            )

    errors = []
    for _attempt in range(3 * max(len(replicas.endpoints), 1)):
        endpoint = replicas.pick(wait)
        call = endpoint.channel.stream_stream(
            replicas.service.method,
            request_serializer=recommendation_pb2.RecommendRequest.SerializeToString,
            response_deserializer=recommendation_pb2.RecommendResponse.FromString,
        )
        trending: list = []
        recommendations: dict[str, list[str]] = {}
        by_mask: dict[int, list[str]] = {}
        try:
            for reply in call(requests()):
                if reply.WhichOneof("payload") == "trending":
                    trending = list(reply.trending.songs)
                    songs = [s.song for s in trending]
                    by_mask = {m: [s for j, s in enumerate(songs) if m >> j & 1] for m in range(1 << len(songs))}
                else:
                    r = reply.recommendations
                    recommendations.update(zip(r.user_ids, map(by_mask.__getitem__, r.trending_mask), strict=True))
            return trending, recommendations
        except grpc.RpcError as exc:
            if not replica_lost(exc):
                raise ServiceError(f"recommendation at {endpoint.address} failed: {describe(exc)}") from None
            endpoint.alive = False
            errors.append(f"{endpoint.address}: {describe(exc)}")
    raise ServiceError(f"recommendation: gave up after {len(errors)} failed calls ({'; '.join(errors)})")
