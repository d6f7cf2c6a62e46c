"""gRPC adapter for RecommendationService."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc

from music_analytics.api import recommendation_pb2, recommendation_pb2_grpc
from music_analytics.services.common.ingest import inflight
from music_analytics.services.common.metrics import ServiceMetrics
from music_analytics.services.common.server import ServiceSpec
from music_analytics.services.recommendation.analytics import TRENDING_SONGS, Candidate, Recommender, trending

MAX_CANDIDATES = 100_000


class RecommendationServicer(recommendation_pb2_grpc.RecommendationServiceServicer):
    def __init__(self, metrics: ServiceMetrics) -> None:
        self.m = metrics

    def Recommend(  # noqa: N802 (gRPC method name)
        self, request_iterator: Iterator[recommendation_pb2.RecommendRequest], context: grpc.ServicerContext
    ) -> Iterator[recommendation_pb2.RecommendResponse]:
        service = self.m.service
        recommender = None
        with inflight(self.m):
            for index, request in enumerate(request_iterator):
                kind = request.WhichOneof("payload")
                if index == 0:
                    if kind != "candidates":
                        self._reject(context, "message 0 must carry `candidates` (the songs to rank)")
                    songs = request.candidates.songs
                    if len(songs) > MAX_CANDIDATES:
                        self._reject(context, f"{len(songs)} candidates exceed the limit of {MAX_CANDIDATES}")
                    for i, s in enumerate(songs):
                        if not s.song or not s.artist:
                            self._reject(
                                context, f"candidates.songs[{i}]: song and artist must not be empty", "empty_field"
                            )
                    top = trending(
                        (Candidate(s.song, s.artist, s.plays) for s in songs),
                        request.candidates.trending_n or TRENDING_SONGS,
                    )
                    recommender = Recommender(top)
                    self.m.distinct_keys.labels(service, "trending_songs").set(len(top))
                    yield recommendation_pb2.RecommendResponse(
                        trending=recommendation_pb2.Trending(
                            songs=[
                                recommendation_pb2.CandidateSong(song=c.song, artist=c.artist, plays=c.plays)
                                for c in top
                            ]
                        )
                    )
                    continue
                if kind != "users":
                    self._reject(context, f"message {index}: expected `users` after the candidates")
                users = request.users
                if len(users.user_ids) != len(users.top_artist):
                    self._reject(
                        context,
                        f"message {index}: {len(users.user_ids)} user_ids but {len(users.top_artist)} top_artist",
                    )
                start = time.perf_counter()
                mask_for = recommender.mask_for
                reply = recommendation_pb2.Recommendations(
                    user_ids=users.user_ids, trending_mask=[mask_for(a) for a in users.top_artist]
                )
                self.m.batch_done(len(users.user_ids), time.perf_counter() - start)
                yield recommendation_pb2.RecommendResponse(recommendations=reply)
            if recommender is None:
                self._reject(context, "empty stream: send `candidates` first")

    def _reject(self, context: grpc.ServicerContext, message: str, reason: str = "invalid_batch") -> None:
        self.m.rejected.labels(self.m.service, reason).inc()
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)


SPEC = ServiceSpec(
    name="recommendation",
    descriptor=recommendation_pb2.DESCRIPTOR.services_by_name["RecommendationService"],
    grpc_port=50055,
    metrics_port=9055,
    attach=lambda server, metrics: recommendation_pb2_grpc.add_RecommendationServiceServicer_to_server(
        RecommendationServicer(metrics), server
    ),
)
