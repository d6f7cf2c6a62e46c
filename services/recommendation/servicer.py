"""gRPC adapter for RecommendationService."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc

from music_analytics.api import recommendation_pb2, recommendation_pb2_grpc
from music_analytics.services.common.config import CallLimits
from music_analytics.services.common.contract import (
    MAX_CANDIDATES,
    MAX_TRENDING_N,
    MAX_USERS_PER_MESSAGE,
    RECOMMENDATION,
    TRENDING_SONGS,
)
from music_analytics.services.common.ingest import check_bound, refuse
from music_analytics.services.common.metrics import ServiceMetrics
from music_analytics.services.common.server import ServiceSpec
from music_analytics.services.recommendation.analytics import Candidate, Recommender, trending


class RecommendationServicer(recommendation_pb2_grpc.RecommendationServiceServicer):
    # The call's state is bounded by the field bounds (candidates, users per message), far
    # below any useful per-call memory limit: ``limits`` is accepted for a uniform attach.
    def __init__(self, metrics: ServiceMetrics, limits: CallLimits) -> None:
        self.m = metrics

    def Recommend(  # noqa: N802 (gRPC method name)
        self, request_iterator: Iterator[recommendation_pb2.RecommendRequest], context: grpc.ServicerContext
    ) -> Iterator[recommendation_pb2.RecommendResponse]:
        recommender = None
        for index, request in enumerate(request_iterator):
            if index == 0:
                recommender = self._start(request, context)
                yield recommendation_pb2.RecommendResponse(
                    trending=recommendation_pb2.Trending(
                        songs=[
                            recommendation_pb2.CandidateSong(song=c.song, artist=c.artist, plays=c.plays)
                            for c in recommender.trending
                        ]
                    )
                )
                continue
            yield self._recommend(recommender, index, request, context)
        if recommender is None:
            refuse(context, self.m, "invalid_batch", "empty stream: send `candidates` first")

    def _start(self, request: recommendation_pb2.RecommendRequest, context: grpc.ServicerContext) -> Recommender:
        """The trending songs of the first message, the candidates."""
        if request.WhichOneof("payload") != "candidates":
            refuse(context, self.m, "invalid_batch", "message 0 must carry `candidates` (the songs to rank)")
        candidates = request.candidates
        check_bound(context, self.m, "candidates.songs (count)", len(candidates.songs), MAX_CANDIDATES)
        check_bound(context, self.m, "candidates.trending_n", candidates.trending_n, MAX_TRENDING_N)
        for i, s in enumerate(candidates.songs):
            if not s.song or not s.artist:
                refuse(context, self.m, "empty_field", f"candidates.songs[{i}]: song and artist must not be empty")
        top = trending(
            (Candidate(s.song, s.artist, s.plays) for s in candidates.songs),
            candidates.trending_n or TRENDING_SONGS,
        )
        self.m.distinct_keys.labels(self.m.service, "trending_songs").set(len(top))
        return Recommender(top)

    def _recommend(
        self,
        recommender: Recommender,
        index: int,
        request: recommendation_pb2.RecommendRequest,
        context: grpc.ServicerContext,
    ) -> recommendation_pb2.RecommendResponse:
        if request.WhichOneof("payload") != "users":
            refuse(context, self.m, "invalid_batch", f"message {index}: expected `users` after the candidates")
        users = request.users
        check_bound(
            context, self.m, f"message {index}: users.user_ids (count)", len(users.user_ids), MAX_USERS_PER_MESSAGE
        )
        if len(users.user_ids) != len(users.top_artist):
            refuse(
                context,
                self.m,
                "invalid_batch",
                f"message {index}: {len(users.user_ids)} user_ids but {len(users.top_artist)} top_artist",
            )
        start = time.perf_counter()
        mask_for = recommender.mask_for
        reply = recommendation_pb2.Recommendations(
            user_ids=users.user_ids, trending_mask=[mask_for(a) for a in users.top_artist]
        )
        self.m.batch_done(len(users.user_ids), time.perf_counter() - start)
        return recommendation_pb2.RecommendResponse(recommendations=reply)


SPEC = ServiceSpec(
    RECOMMENDATION,
    attach=lambda server, metrics, limits: recommendation_pb2_grpc.add_RecommendationServiceServicer_to_server(
        RecommendationServicer(metrics, limits), server
    ),
)
