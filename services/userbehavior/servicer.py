"""gRPC adapter for UserBehaviorService: decode the stream, call the analytics, stream the answer."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

import grpc
import numpy as np
import pyarrow as pa

from music_analytics.api import events_pb2, userbehavior_pb2, userbehavior_pb2_grpc
from music_analytics.services.common.clock import LocalClock, UnknownTimeZoneError
from music_analytics.services.common.columns import SpillError
from music_analytics.services.common.config import CallLimits
from music_analytics.services.common.contract import (
    ARTIST_ENTRIES_PER_MESSAGE,
    MAX_MESSAGE_BYTES,
    TOP_USERS,
    USERBEHAVIOR,
    USERS_PER_MESSAGE,
)
from music_analytics.services.common.events import (
    ARTIST,
    DURATION,
    SONG,
    TIMESTAMP,
    USER,
    EventColumns,
    dictionary_column_message,
    string_array_message,
)
from music_analytics.services.common.ingest import ingest, refuse, release_memory, returning_memory
from music_analytics.services.common.metrics import ServiceMetrics
from music_analytics.services.common.server import ServiceSpec
from music_analytics.services.userbehavior.analytics import Lists, SiteActivity, UserColumns, UserStats

NEEDED = (USER, SONG, ARTIST, DURATION, TIMESTAMP)


class UserBehaviorServicer(userbehavior_pb2_grpc.UserBehaviorServiceServicer):
    def __init__(self, metrics: ServiceMetrics, limits: CallLimits) -> None:
        self.m = metrics
        self.limits = limits

    def AnalyzeUsers(  # noqa: N802 (gRPC method name)
        self, request_iterator: Iterator[userbehavior_pb2.AnalyzeUsersRequest], context: grpc.ServicerContext
    ) -> Iterator[userbehavior_pb2.AnalyzeUsersResponse]:
        with returning_memory():
            stats = UserStats(release=release_memory, memory_budget=self.limits.memory_budget,
                              spill_dir=self.limits.spill_dir)  # fmt: skip
            try:
                yield from self._analyze(stats, request_iterator, context)
            except SpillError as exc:
                refuse(context, self.m, "spill_failed", str(exc), grpc.StatusCode.RESOURCE_EXHAUSTED)
            finally:
                stats.close()

    def _analyze(
        self,
        stats: UserStats,
        request_iterator: Iterator[userbehavior_pb2.AnalyzeUsersRequest],
        context: grpc.ServicerContext,
    ) -> Iterator[userbehavior_pb2.AnalyzeUsersResponse]:
        service = self.m.service

        def settings(request: userbehavior_pb2.AnalyzeUsersRequest) -> None:
            stats.artist_plays = request.artist_plays
            try:
                stats.clock = LocalClock(request.timezone)
            except UnknownTimeZoneError as exc:
                refuse(context, self.m, "unknown_timezone", f"timezone: {exc}")

        def add(batch: EventColumns) -> None:
            c = batch.columns
            stats.add_columns(
                c[USER].dictionary, c[USER].indices,
                c[ARTIST].dictionary, c[ARTIST].indices,
                c[SONG].dictionary, c[SONG].indices,
                batch.duration, batch.timestamp, batch.plays,
            )  # fmt: skip

        top_n = ingest(request_iterator, context, self.m, NEEDED, add, TOP_USERS, stats, self.limits, settings)
        start = time.perf_counter()
        counts = {"events_processed": stats.events, "distinct_users": stats.distinct_users}
        # Every artist of every user on top of the statistics: half the users a message, and a
        # quarter of the message limit for those entries, keep a message of heavy listeners
        # (long top-song names, thousands of artists each) under the limit.
        chunk_users = USERS_PER_MESSAGE // 2 if stats.artist_plays else USERS_PER_MESSAGE
        for message in sized_messages(stats.summaries(chunk_users, ARTIST_ENTRIES_PER_MESSAGE // 2)):
            yield userbehavior_pb2.AnalyzeUsersResponse(users=message, **counts)
        top = stats.top_users(top_n)
        activity = site_activity_message(stats.site_activity())
        self.m.aggregation.labels(service).observe(time.perf_counter() - start)
        for kind, value in (
            ("users", stats.distinct_users),
            ("artists", stats.distinct_artists),
            ("songs", stats.distinct_songs),
            ("user_song_pairs", stats.distinct_pairs),
        ):
            self.m.distinct_keys.labels(service, kind).set(value)
        yield userbehavior_pb2.AnalyzeUsersResponse(
            top_users=userbehavior_pb2.UserTotals(user_ids=[u for u, _ in top], total_time=[t for _, t in top]),
            activity=activity,
            **counts,
        )


# What a message of summaries aims at: half the limit. A user's size varies with the songs, hours and
# months they have (about 1 KB each at 100M events, when a fixed number of users passed the limit).
MESSAGE_TARGET_BYTES = MAX_MESSAGE_BYTES // 2
# Past this a message is not sent but built again smaller (room for the response's other fields).
MESSAGE_MAX_BYTES = MAX_MESSAGE_BYTES - (1 << 16)


def sized_messages(
    chunks: Iterable[UserColumns], target: int = MESSAGE_TARGET_BYTES, limit: int = MESSAGE_MAX_BYTES
) -> Iterator[userbehavior_pb2.UserSummaries]:
    """The summaries of ``chunks`` as messages of about ``target`` bytes each: how many users go in
    one is set by the bytes per user of the message before, and a message past ``limit`` is built
    again with fewer users (one user alone is sent whatever its size: gRPC then names the limit)."""
    per_user: float | None = None
    for chunk in chunks:
        start = 0
        while start < len(chunk):
            left = len(chunk) - start
            size = left if per_user is None else max(1, min(left, int(target / per_user)))
            message = summaries_message(chunk.slice(start, start + size))
            nbytes = message.ByteSize()
            per_user = max(nbytes / size, 1.0)
            if nbytes > limit and size > 1:
                continue
            yield message
            start += size


def _keyed_counts(lists: Lists) -> userbehavior_pb2.KeyedCounts:
    return userbehavior_pb2.KeyedCounts(
        ends=lists.ends.astype("<u4").tobytes(),
        keys=lists.keys.astype("<i4").tobytes(),
        counts=lists.counts.astype("<u4").tobytes(),
    )


def summaries_message(chunk: UserColumns) -> userbehavior_pb2.UserSummaries:
    artists, songs = chunk.top_artists, chunk.top_songs
    return userbehavior_pb2.UserSummaries(
        user_ids=chunk.user_ids,
        total_time=chunk.total_time,
        top_artist=chunk.top_artist,
        plays=chunk.plays,
        top_artists=userbehavior_pb2.RankedLists(
            ends=artists.ends.astype("<u4").tobytes(),
            names=dictionary_column_message(chunk.artists, artists.keys),
            counts=artists.counts.astype("<u4").tobytes(),
        ),
        top_songs=userbehavior_pb2.RankedLists(
            ends=songs.ends.astype("<u4").tobytes(),
            names=dictionary_column_message(chunk.songs.key, songs.keys),
            counts=songs.counts.astype("<u4").tobytes(),
            artists=dictionary_column_message(chunk.songs.artist, songs.keys),
            song_ids=dictionary_column_message(chunk.songs.song_id, songs.keys),
        ),
        daily_activity=_keyed_counts(chunk.daily_activity),
        monthly_activity=_keyed_counts(chunk.monthly_activity),
        artist_plays=None if chunk.artist_plays is None else artist_plays_message(chunk.artist_plays, chunk.artists),
    )


def artist_plays_message(lists: Lists, artists: pa.Array) -> events_pb2.ArtistPlays:
    return events_pb2.ArtistPlays(
        ends=lists.ends.astype("<u4").tobytes(),
        artists=dictionary_column_message(artists, lists.keys),
        plays=lists.counts.astype("<u4").tobytes(),
    )


def site_activity_message(site: SiteActivity) -> userbehavior_pb2.SiteActivity:
    return userbehavior_pb2.SiteActivity(
        daily_activity=site.daily_activity.astype("<u8").tobytes(),
        days=site.days.astype("<i4").tobytes(),
        day_counts=site.day_counts.astype("<u8").tobytes(),
        artists=string_array_message(site.artists),
        artist_counts=np.asarray(site.artist_counts).astype("<u8").tobytes(),
        first_ts=site.first_ts,
        last_ts=site.last_ts,
    )


SPEC = ServiceSpec(
    USERBEHAVIOR,
    attach=lambda server, metrics, limits: userbehavior_pb2_grpc.add_UserBehaviorServiceServicer_to_server(
        UserBehaviorServicer(metrics, limits), server
    ),
)
