"""The client pipeline: stream the input to MapReduce and UserBehavior, then ask Recommendation.

Orchestration only: which services, in what order, with what deadlines. Streaming and shard
recovery live in streams.py, merging the replicas' answers in merge.py, the Recommendation call
in recommend.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow as pa

from music_analytics.api import mapreduce_pb2, recommendation_pb2, userbehavior_pb2
from music_analytics.client.csv_source import Chunk, InputError, Rejection
from music_analytics.client.encoding import batches
from music_analytics.client.listening import UserStatsSink, site_stats
from music_analytics.client.merge import UserResult, merge_songs, merge_top_users
from music_analytics.client.personalized import ArtistSettings, PlaysSpool, write_with_artists
from music_analytics.client.recommend import recommend
from music_analytics.client.replicas import CallOverLimitError, Endpoint, Replicas, ServiceError, ServiceInfo
from music_analytics.client.sources import REJECT_REASONS, SKIP_REASONS, open_source
from music_analytics.client.streams import ShardedStream
from music_analytics.client.targets import parse_target
from music_analytics.client.tls import ClientTls
from music_analytics.services.common import contract

__all__ = ["PipelineConfig", "PipelineResult", "ServiceError", "UserResult", "run_pipeline"]


MAPREDUCE = ServiceInfo.of(contract.MAPREDUCE, ("song_id", "artist", "plays"))
USERBEHAVIOR = ServiceInfo.of(contract.USERBEHAVIOR, ("user_id", "song_id", "artist", "duration", "timestamp", "plays"))
RECOMMENDATION = ServiceInfo.of(contract.RECOMMENDATION)


@dataclass
class PipelineResult:
    top_songs: list[mapreduce_pb2.SongCount]
    distinct_songs: int
    users: list[UserResult]  # every user, by user_id
    top_users: list[tuple[str, int]]
    trending: list[recommendation_pb2.CandidateSong]
    recommendations: dict[str, list[str]]
    events_processed: int
    rejected: list[Rejection]
    rejected_by_reason: dict[str, int]
    skipped_by_reason: dict[str, int]
    input_format: str
    input_files: list[str]
    timings: dict[str, float]
    replicas: dict[str, int]
    recoveries: dict[str, int] = field(default_factory=dict)
    listening_stats: dict[str, Any] = field(default_factory=dict)
    user_stats_path: Path | None = None
    user_stats_users: int = 0
    personalized: dict[str, Any] | None = None  # the model's summary (None: not asked for, or skipped)
    personalized_skipped: str | None = None  # why the personalized artists asked for are missing


@dataclass
class PipelineConfig:
    data: Path  # a file, folder, glob or zip (client.sources)
    mapreduce: str
    userbehavior: str
    recommendation: str
    strict: bool = False
    # How long to wait for the services at the start, and for a replacement when a replica is lost.
    wait_ready: float = 10.0
    # Replicas to wait for, by service (None: every address the target lists, at least one).
    expected_replicas: dict[str, int] = field(default_factory=dict)
    progress: Callable[[int, int], None] | None = None
    tls: ClientTls | None = None  # None: plaintext
    timezone: str = "UTC"  # IANA name the time statistics are computed in
    user_stats: Path | None = None  # where the per-user JSON Lines go (None: not written)
    format: str | None = None  # the input's format (None: detected)
    user: str | None = None  # the user of an export that does not name one
    # Personalized artists per user in the per-user lines (0: none); needs ``user_stats``.
    personalized_n: int = contract.PERSONALIZED_N
    algorithm: str = ""  # the recommender's algorithm (empty: the service's default)
    seed: int = 0


def run_pipeline(config: PipelineConfig) -> PipelineResult:
    """Run the whole analytics pipeline against the services; raises ServiceError, InputError, BadRowError."""
    started = time.perf_counter()
    # Opened and checked first: an unusable input is reported before any service is contacted.
    source = open_source(config.data, format=config.format, user=config.user)
    if source.kind != "events":
        raise InputError(
            f"{config.data}: a file of play counts (user, artist, plays) has no listening events to analyse: "
            "no songs, durations or times. Evaluate the recommender on it with `music-analytics evaluate --train`"
        )
    personalized = config.personalized_n > 0 and config.user_stats is not None
    total_bytes = source.total_bytes

    def replay(upto: int | None) -> Iterator[Chunk]:
        # The first ``upto`` chunks of the input: reading is deterministic, so the same rows.
        return source.chunks(stop_after=upto)

    # Bad syntax fails now (exit 2); names that do not resolve yet are waited for in connect.
    targets = {
        info: parse_target(text)
        for info, text in (
            (MAPREDUCE, config.mapreduce),
            (USERBEHAVIOR, config.userbehavior),
            (RECOMMENDATION, config.recommendation),
        )
    }
    mapreduce = ShardedStream(
        Replicas(MAPREDUCE, targets[MAPREDUCE], config.tls),
        "song",
        mapreduce_pb2.CountPlaysResponse.FromString,
        True,
        replay,
        config.wait_ready,
    )
    # Per-user answers are written out as they arrive, never all held (see UserStatsSink).
    user_stats = UserStatsSink(config.timezone, config.user_stats, PlaysSpool if personalized else None)
    userbehavior = ShardedStream(
        Replicas(USERBEHAVIOR, targets[USERBEHAVIOR], config.tls),
        "user_id",
        userbehavior_pb2.AnalyzeUsersResponse.FromString,
        False,
        replay,
        config.wait_ready,
        userbehavior_pb2.AnalyzeUsersRequest(timezone=config.timezone, artist_plays=personalized).SerializeToString(),
        user_stats.handler,
    )
    recommendation = Replicas(RECOMMENDATION, targets[RECOMMENDATION], config.tls)
    streams = (mapreduce, userbehavior)
    try:
        recommendation_replicas = _connect_all(streams, recommendation, config)
        rejected: list[Rejection] = []
        # Every reason, zeros included: a dashboard panel of reasons is never empty.
        by_reason: dict[str, int] = dict.fromkeys(REJECT_REASONS, 0)
        skipped: dict[str, int] = dict.fromkeys(SKIP_REASONS, 0)
        events = 0
        offset = 0
        for chunks_read, chunk in enumerate(read_ahead(source.chunks(strict=config.strict)), 1):
            for reason, count in chunk.skipped.items():
                skipped[reason] = skipped.get(reason, 0) + count
            for r in chunk.rejected:
                by_reason[r.reason] = by_reason.get(r.reason, 0) + 1
            rejected.extend(chunk.rejected[: max(0, 20 - len(rejected))])
            lost: dict[ShardedStream, set[int]] = {s: set() for s in streams}
            for table in batches(chunk.table):
                for stream in streams:
                    stream.dispatch(table, lost[stream])
            events += chunk.table.num_rows
            offset = chunk.end_offset
            for stream in streams:
                if lost[stream]:
                    stream.recover(lost[stream], chunks_read)
            if config.progress:
                config.progress(offset, total_bytes)
        ingest_done = time.perf_counter()
        # The parser's buffers are done with: give them back before the results are assembled.
        pa.default_memory_pool().release_unused()
        # Both services compute their answers at once; MapReduce's is needed first.
        for stream in streams:
            stream.end_input()
        mr_answers = mapreduce.finish(None)
        mr_done = time.perf_counter()
        ub_answers = userbehavior.finish(None)
        ub_done = time.perf_counter()
        top_songs, distinct_songs, mr_events = merge_songs(mr_answers)
        top_users, ub_events = merge_top_users(ub_answers)
        listening_stats = site_stats(
            (a.activity for a in ub_answers if a.WhichOneof("payload") == "top_users"), config.timezone
        )
        # Checked before the recommender is trained on what the replicas answered.
        for name, counted in (("mapreduce", mr_events), ("userbehavior", ub_events)):
            if counted != events:
                raise ServiceError(f"{name} counted {counted} events but the client sent {events}")
        users = user_stats.users()
        user_stats_done = time.perf_counter()
        model = None
        artists_skipped = None
        if personalized:
            settings = ArtistSettings(config.personalized_n, config.algorithm, config.seed)
            try:
                model = write_with_artists(user_stats, recommendation, config.wait_ready, settings, user_stats.spools())
                user_stats_users = len(users)
            except CallOverLimitError as exc:
                # Every user's plays at once are more than the Recommendation service may hold.
                # All else is done and exact: it is written without the artists, and says why,
                # rather than lost with them.
                artists_skipped = str(exc)
                user_stats_users = user_stats.finish()
        else:
            user_stats_users = user_stats.finish() if config.user_stats is not None else 0
        personalized_done = time.perf_counter()
        rec_start = time.perf_counter()
        trending, recommendations = recommend(recommendation, config.wait_ready, top_songs, users)
        if len(recommendations) != len(users):
            raise ServiceError(f"recommendation answered for {len(recommendations)} of {len(users)} users")
        done = time.perf_counter()
    finally:
        user_stats.discard()
        for stream in streams:
            stream.close()
        recommendation.close()
    return PipelineResult(
        top_songs=top_songs,
        distinct_songs=distinct_songs,
        users=users,
        top_users=top_users,
        trending=trending,
        recommendations=recommendations,
        events_processed=events,
        rejected=rejected,
        rejected_by_reason=by_reason,
        skipped_by_reason=skipped,
        input_format=source.format,
        input_files=source.files,
        timings={
            "ingest_time": ingest_done - started,
            "mapreduce_time": mr_done - started,
            "userbehavior_time": ub_done - started,
            "user_stats_time": user_stats_done - ub_done,
            "personalized_time": personalized_done - user_stats_done,
            "recommendation_time": done - rec_start,
            "total_workflow_time": done - started,
        },
        replicas={s.service.name: s.shards for s in streams} | {"recommendation": recommendation_replicas},
        recoveries={s.service.name: s.recoveries for s in streams},
        listening_stats=listening_stats,
        user_stats_path=config.user_stats,
        user_stats_users=user_stats_users,
        personalized=None if model is None else model.as_json(),
        personalized_skipped=artists_skipped,
    )


def read_ahead(chunks: Iterator[Chunk]) -> Iterator[Chunk]:
    """Yield ``chunks``, parsing the next one in a thread while the caller sends this one.

    Arrow's parser releases the GIL, so parsing overlaps encoding and sending; one chunk ahead
    keeps memory bounded.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="read-ahead") as pool:
        pending = pool.submit(next, chunks, None)
        while True:
            chunk = pending.result()
            if chunk is None:
                return
            pending = pool.submit(next, chunks, None)
            yield chunk


def _connect_all(streams: tuple[ShardedStream, ...], recommendation: Replicas, config: PipelineConfig) -> int:
    """Wait for every service at once, within one ``wait_ready`` window; returns how many
    Recommendation replicas serve. Raises ServiceError naming every service that has none.

    At once, not one after another: a service that is down would otherwise use up the window
    and leave the others a moment each, reported as failing when they were only being started.
    """
    deadline = time.monotonic() + config.wait_ready
    expected = config.expected_replicas
    waits: dict[str, Callable[[], list[Endpoint] | None]] = {
        s.service.name: partial(s.connect, deadline, expected.get(s.service.name)) for s in streams
    }
    waits[recommendation.service.name] = partial(
        recommendation.wait, deadline, expected.get(recommendation.service.name)
    )
    with ThreadPoolExecutor(max_workers=len(waits), thread_name_prefix="connect") as pool:
        pending = {name: pool.submit(wait) for name, wait in waits.items()}
    errors = []
    for future in pending.values():
        try:
            future.result()
        except ServiceError as exc:
            errors.append(str(exc))
    if errors:
        raise ServiceError("; ".join(errors))
    return len(pending[recommendation.service.name].result())
