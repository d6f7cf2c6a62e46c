"""gRPC adapter for RecommendationService."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import numpy as np
import pyarrow.compute as pc

from music_analytics.api import recommendation_pb2, recommendation_pb2_grpc
from music_analytics.services.common.columns import InvalidBatchError, indices, string_array, uint32_column
from music_analytics.services.common.config import CallLimits
from music_analytics.services.common.contract import (
    ARTIST_ENTRIES_PER_MESSAGE,
    MAX_CANDIDATES,
    MAX_PERSONALIZED_N,
    MAX_TRENDING_N,
    MAX_USERS_PER_MESSAGE,
    PERSONALIZED_N,
    RECOMMENDATION,
    TRENDING_SONGS,
    USERS_PER_MESSAGE,
)
from music_analytics.services.common.events import dictionary_column_message, string_array_message
from music_analytics.services.common.ingest import check_bound, check_memory, refuse, returning_memory
from music_analytics.services.common.metrics import ServiceMetrics
from music_analytics.services.common.server import ServiceSpec
from music_analytics.services.recommendation.analytics import Candidate, Recommender, trending
from music_analytics.services.recommendation.model import ALGORITHMS, DEFAULT_ALGORITHM, ModelConfig
from music_analytics.services.recommendation.personalized import (
    Answer,
    PlaysCollector,
    UsersPlays,
    answers,
    train_on,
)


class RecommendationServicer(recommendation_pb2_grpc.RecommendationServiceServicer):
    # Recommend's state is bounded by the field bounds (candidates, users per message), far below
    # any useful per-call memory limit; RecommendArtists holds every user's plays: limited.
    def __init__(self, metrics: ServiceMetrics, limits: CallLimits) -> None:
        self.m = metrics
        self.limits = limits

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

    def RecommendArtists(  # noqa: N802 (gRPC method name)
        self, request_iterator: Iterator[recommendation_pb2.RecommendArtistsRequest], context: grpc.ServicerContext
    ) -> Iterator[recommendation_pb2.RecommendArtistsResponse]:
        with returning_memory():
            config, n = None, PERSONALIZED_N
            collector = PlaysCollector()
            for index, request in enumerate(request_iterator):
                kind = request.WhichOneof("payload")
                if index == 0:
                    if kind != "settings":
                        refuse(context, self.m, "invalid_batch", "message 0 must carry `settings`")
                    config, n = self._artist_settings(request.settings, context)
                    continue
                if kind != "users":
                    refuse(context, self.m, "invalid_batch", f"message {index}: expected `users` after the settings")
                start = time.perf_counter()
                try:
                    part = users_plays(request.users)
                except InvalidBatchError as exc:
                    refuse(context, self.m, exc.reason, f"message {index}: {exc}")
                collector.add(part)
                self.m.batch_done(len(part.user_ids), time.perf_counter() - start)
                check_memory(context, self.m, collector, self.limits)
            if config is None:
                refuse(context, self.m, "invalid_batch", "empty stream: send `settings` first")
            start = time.perf_counter()
            trained = train_on(collector, config, n)
            seconds = time.perf_counter() - start
            self.m.aggregation.labels(self.m.service).observe(seconds)
            for kind, value in (("users", len(trained.user_names)), ("artists", len(trained.artist_names))):
                self.m.distinct_keys.labels(self.m.service, kind).set(value)
            yield recommendation_pb2.RecommendArtistsResponse(
                model=recommendation_pb2.ArtistModel(
                    algorithm=config.algorithm,
                    users=len(trained.user_names),
                    artists=len(trained.artist_names),
                    pairs=trained.pairs,
                    train_seconds=seconds,
                    algorithms=[DEFAULT_ALGORITHM, *(a for a in ALGORITHMS if a != DEFAULT_ALGORITHM)],
                )
            )
            for answer in answers(trained, max(1, min(USERS_PER_MESSAGE, ARTIST_ENTRIES_PER_MESSAGE // n))):
                yield recommendation_pb2.RecommendArtistsResponse(users=artist_recommendations_message(answer))

    def _artist_settings(
        self, settings: recommendation_pb2.ArtistModelSettings, context: grpc.ServicerContext
    ) -> tuple[ModelConfig, int]:
        check_bound(context, self.m, "settings.n", settings.n, MAX_PERSONALIZED_N)
        algorithm = settings.algorithm or DEFAULT_ALGORITHM
        if algorithm not in ALGORITHMS:
            refuse(
                context,
                self.m,
                "unknown_algorithm",
                f"settings.algorithm: {algorithm!r} is not one of {', '.join(ALGORITHMS)}",
            )
        return ModelConfig(algorithm=algorithm, seed=settings.seed), settings.n or PERSONALIZED_N


def users_plays(message: recommendation_pb2.UserArtistPlays) -> UsersPlays:
    """Decode and check one message of users' plays; raises InvalidBatchError naming the field."""
    count = len(message.user_ids.offsets) // 4 - 1
    if count > MAX_USERS_PER_MESSAGE:
        raise InvalidBatchError(
            f"users.user_ids: {count} users exceed the limit of {MAX_USERS_PER_MESSAGE} per message", "out_of_range"
        )
    users = string_array(message.user_ids.offsets, message.user_ids.data, "users.user_ids", MAX_USERS_PER_MESSAGE)
    if pc.any(pc.equal(pc.binary_length(users), 0)).as_py():
        raise InvalidBatchError("users.user_ids: holds an empty string; a user_id must not be empty", "empty_field")
    plays = message.plays
    ends = uint32_column(plays.ends, len(users), "users.plays.ends")
    entries = int(ends[-1]) if len(ends) else 0
    if len(ends) and (np.any(np.diff(ends.astype(np.int64)) < 0)):
        raise InvalidBatchError("users.plays.ends: not ascending")
    if entries > ARTIST_ENTRIES_PER_MESSAGE:
        raise InvalidBatchError(
            f"users.plays: {entries} entries exceed the limit of {ARTIST_ENTRIES_PER_MESSAGE} per message",
            "out_of_range",
        )
    artists = string_array(
        plays.artists.dictionary.offsets, plays.artists.dictionary.data, "users.plays.artists.dictionary", entries
    )
    if pc.any(pc.equal(pc.binary_length(artists), 0)).as_py():
        raise InvalidBatchError("users.plays.artists.dictionary: holds an empty string", "empty_field")
    idx = indices(plays.artists.indices, entries, len(artists), "users.plays.artists.indices")
    counts = uint32_column(plays.plays, entries, "users.plays.plays")
    if entries and int(counts.min()) == 0:
        raise InvalidBatchError(f"users.plays.plays: entry {int(np.argmin(counts))} is 0 plays; at least 1")
    return UsersPlays(users, ends, artists, idx, counts)


def artist_recommendations_message(answer: Answer) -> recommendation_pb2.ArtistRecommendations:
    return recommendation_pb2.ArtistRecommendations(
        user_ids=string_array_message(answer.user_ids),
        ends=answer.ends.astype("<u4").tobytes(),
        artists=dictionary_column_message(answer.artist_names, answer.artists),
        scores=answer.scores.astype("<f4").tobytes(),
        source=answer.source.astype(np.uint8).tobytes(),
    )


SPEC = ServiceSpec(
    RECOMMENDATION,
    attach=lambda server, metrics, limits: recommendation_pb2_grpc.add_RecommendationServiceServicer_to_server(
        RecommendationServicer(metrics, limits), server
    ),
)
