"""gRPC adapter for UserBehaviorService: decode the stream, call the analytics, stream the answer."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc

from music_analytics.api import userbehavior_pb2, userbehavior_pb2_grpc
from music_analytics.services.common.config import CallLimits
from music_analytics.services.common.contract import TOP_USERS, USERBEHAVIOR, USERS_PER_MESSAGE
from music_analytics.services.common.events import ARTIST, DURATION, USER, EventColumns
from music_analytics.services.common.ingest import ingest, returning_memory
from music_analytics.services.common.metrics import ServiceMetrics
from music_analytics.services.common.server import ServiceSpec
from music_analytics.services.userbehavior.analytics import UserStats


class UserBehaviorServicer(userbehavior_pb2_grpc.UserBehaviorServiceServicer):
    def __init__(self, metrics: ServiceMetrics, limits: CallLimits) -> None:
        self.m = metrics
        self.limits = limits

    def AnalyzeUsers(  # noqa: N802 (gRPC method name)
        self, request_iterator: Iterator[userbehavior_pb2.AnalyzeUsersRequest], context: grpc.ServicerContext
    ) -> Iterator[userbehavior_pb2.AnalyzeUsersResponse]:
        with returning_memory():
            service = self.m.service
            stats = UserStats()

            def add(batch: EventColumns) -> None:
                user, artist = batch.columns[USER], batch.columns[ARTIST]
                stats.add_columns(user.dictionary, user.indices, artist.dictionary, artist.indices, batch.duration)

            top_n = ingest(
                request_iterator, context, self.m, (USER, ARTIST, DURATION), add, TOP_USERS, stats, self.limits
            )
            start = time.perf_counter()
            counts = {"events_processed": stats.events, "distinct_users": stats.distinct_users}
            for chunk in stats.summaries(USERS_PER_MESSAGE):
                yield userbehavior_pb2.AnalyzeUsersResponse(
                    users=userbehavior_pb2.UserSummaries(
                        user_ids=chunk.user_ids,
                        total_time=chunk.total_time,
                        top_artist=chunk.top_artist,
                        plays=chunk.plays,
                    ),
                    **counts,
                )
            top = stats.top_users(top_n)
            self.m.aggregation.labels(service).observe(time.perf_counter() - start)
            for kind, value in (
                ("users", stats.distinct_users),
                ("artists", stats.distinct_artists),
                ("user_artist_pairs", stats.distinct_pairs),
            ):
                self.m.distinct_keys.labels(service, kind).set(value)
            yield userbehavior_pb2.AnalyzeUsersResponse(
                top_users=userbehavior_pb2.UserTotals(user_ids=[u for u, _ in top], total_time=[t for _, t in top]),
                **counts,
            )


SPEC = ServiceSpec(
    USERBEHAVIOR,
    attach=lambda server, metrics, limits: userbehavior_pb2_grpc.add_UserBehaviorServiceServicer_to_server(
        UserBehaviorServicer(metrics, limits), server
    ),
)
