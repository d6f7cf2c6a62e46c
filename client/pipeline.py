"""The client pipeline: stream the input to MapReduce and UserBehavior, then ask Recommendation.

Each streaming service may have several replicas. Rows are partitioned across them by key
(song for MapReduce, user for UserBehavior), so each replica's answer is exact for its keys and
merging is concatenation. A replica that fails mid-run takes its in-memory state with it; its
shard is rebuilt on a live replica by re-reading the input up to where the run had got (lineage
recovery), so the results stay exact.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import Any

import grpc
import pyarrow as pa

from music_analytics.api import mapreduce_pb2, recommendation_pb2, userbehavior_pb2
from music_analytics.client.csv_source import REJECT_REASONS, Chunk, Rejection, read_events, read_header
from music_analytics.client.encoding import batches, encode_batch, shard_rows
from music_analytics.client.replicas import (
    Endpoint,
    Replicas,
    ServiceError,
    ServiceInfo,
    describe,
    replica_lost,
)
from music_analytics.client.targets import parse_target

__all__ = ["PipelineConfig", "PipelineResult", "ServiceError", "run_pipeline"]

log = logging.getLogger(__name__)

USERS_PER_MESSAGE = 20_000


MAPREDUCE = ServiceInfo(
    "mapreduce", "music.v1.MapReduceService", "/music.v1.MapReduceService/CountPlays", ("song_id", "artist")
)
USERBEHAVIOR = ServiceInfo(
    "userbehavior",
    "music.v1.UserBehaviorService",
    "/music.v1.UserBehaviorService/AnalyzeUsers",
    ("user_id", "artist", "duration"),
)
RECOMMENDATION = ServiceInfo(
    "recommendation", "music.v1.RecommendationService", "/music.v1.RecommendationService/Recommend"
)


class StreamCall:
    """One streaming call fed from a bounded queue (backpressure), answered in a thread."""

    def __init__(self, endpoint: Endpoint, deserializer: Callable[[bytes], Any], unary_response: bool) -> None:
        self.endpoint = endpoint
        self._queue: queue.Queue = queue.Queue(maxsize=4)
        self.responses: list[Any] = []
        self.error: grpc.RpcError | Exception | None = None
        self._done = threading.Event()
        make = endpoint.channel.stream_unary if unary_response else endpoint.channel.stream_stream
        # No request serializer: requests arrive encoded (columnar, see encoding.py).
        self._call = make(endpoint.service.method, request_serializer=None, response_deserializer=deserializer)
        self._unary = unary_response
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"call-{endpoint.address}")
        self._thread.start()

    def _requests(self) -> Iterator[bytes]:
        while not self._done.is_set():
            try:
                item = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            if item is None:
                return
            yield item

    def _run(self) -> None:
        try:
            if self._unary:
                self.responses = [self._call(self._requests())]
            else:
                self.responses = list(self._call(self._requests()))
        except Exception as exc:
            self.error = exc
        finally:
            self._done.set()

    def send(self, payload: bytes | None) -> bool:
        """Queue ``payload`` (None half-closes); False if the call has ended (failed)."""
        while not self._done.is_set():
            try:
                self._queue.put(payload, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def wait(self) -> None:
        self._done.wait()


class ShardedStream:
    """One streaming service, its rows partitioned by ``key`` across its replicas.

    The number of shards is fixed when the run starts (a row's shard is its key's hash modulo
    that number); replicas that appear later take over lost shards.
    """

    def __init__(
        self,
        replicas: Replicas,
        key: str,
        deserializer: Callable[[bytes], Any],
        unary_response: bool,
        replay: Callable[[int | None], Iterator[Chunk]],
        recovery_wait: float,
    ) -> None:
        self.replicas = replicas
        self.service = replicas.service
        self.key = key
        self._deserializer = deserializer
        self._unary = unary_response
        self._replay = replay
        self._recovery_wait = recovery_wait
        self.calls: list[StreamCall] = []
        self.recoveries = 0

    @property
    def shards(self) -> int:
        return len(self.calls)

    def connect(self, deadline: float, expected: int | None) -> None:
        """Wait for the replicas to serve (see Replicas.wait); one shard per serving replica."""
        self.calls = [self._open(e) for e in self.replicas.wait(deadline, expected)]

    def _open(self, endpoint: Endpoint) -> StreamCall:
        return StreamCall(endpoint, self._deserializer, self._unary)

    def _split(self, table: pa.Table) -> list[pa.Table]:
        """The rows of ``table`` that belong to each shard."""
        if self.shards == 1:
            return [table]
        shard = shard_rows(table, self.key, self.shards)
        return [table.filter(pa.array(shard == s)) for s in range(self.shards)]

    def payloads(self, table: pa.Table) -> list[bytes | None]:
        return [encode_batch(part, self.service.columns) if part.num_rows else None for part in self._split(table)]

    def dispatch(self, table: pa.Table, lost: set[int]) -> None:
        for s, payload in enumerate(self.payloads(table)):
            if payload is None or s in lost:
                continue
            if not self.calls[s].send(payload):
                lost.add(s)

    def recover(self, shards: set[int], upto: int | None) -> None:
        """Rebuild ``shards`` on live replicas from the input up to byte offset ``upto``."""
        for s in sorted(shards):
            # Bounded: behind one address, a replica may pass health checks yet keep failing streams.
            for _attempt in range(3 * max(len(self.replicas.endpoints), self.shards)):
                failed = self.calls[s]
                self._check_recoverable(failed)
                failed.endpoint.alive = False
                endpoint = self.replicas.pick(self._recovery_wait)
                log.warning(
                    "replica lost; rebuilding its shard on another replica",
                    extra={
                        "service": self.service.name,
                        "lost": failed.endpoint.address,
                        "replacement": endpoint.address,
                        "shard": s,
                        "detail": describe(failed.error),
                    },
                )
                self.recoveries += 1
                call = self.calls[s] = self._open(endpoint)
                if self._replay_into(call, s, upto):
                    break
            else:
                raise ServiceError(
                    f"{self.service.name}: gave up rebuilding a lost shard after {_attempt + 1} attempts"
                )

    def _replay_into(self, call: StreamCall, shard: int, upto: int | None) -> bool:
        for chunk in self._replay(upto):
            for table in batches(chunk.table):
                part = self._split(table)[shard]
                if part.num_rows and not call.send(encode_batch(part, self.service.columns)):
                    return False
        return True

    def _check_recoverable(self, call: StreamCall) -> None:
        if not replica_lost(call.error):
            raise ServiceError(f"{self.service.name} at {call.endpoint.address} failed: {describe(call.error)}")

    def end_input(self) -> None:
        """Half-close every shard's call: the replicas start on their answers."""
        for call in self.calls:
            call.send(None)

    def finish(self, upto: int | None) -> list[Any]:
        """Gather the answers of every shard (after ``end_input``), rebuilding lost shards."""
        while True:
            lost = set()
            for s, call in enumerate(self.calls):
                call.wait()
                if call.error is not None:
                    lost.add(s)
            if not lost:
                return [r for call in self.calls for r in call.responses]
            self.recover(lost, upto)
            for s in lost:
                self.calls[s].send(None)

    def close(self) -> None:
        self.replicas.close()


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
    timings: dict[str, float]
    replicas: dict[str, int]
    recoveries: dict[str, int] = field(default_factory=dict)


@dataclass
class PipelineConfig:
    data: Path
    mapreduce: str
    userbehavior: str
    recommendation: str
    strict: bool = False
    # How long to wait for the services at the start, and for a replacement when a replica is lost.
    wait_ready: float = 10.0
    # Replicas to wait for, by service (None: every address the target lists, at least one).
    expected_replicas: dict[str, int] = field(default_factory=dict)
    progress: Callable[[int, int], None] | None = None


def run_pipeline(config: PipelineConfig) -> PipelineResult:
    """Run the whole analytics pipeline against the services; raises ServiceError, InputError, BadRowError."""
    started = time.perf_counter()
    path = Path(config.data)
    # Read the header first: an unusable file is reported before any service is contacted.
    read_header(path)
    total_bytes = path.stat().st_size

    def replay(upto: int | None) -> Iterator[Chunk]:
        return read_events(path, stop_offset=upto)

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
        Replicas(MAPREDUCE, targets[MAPREDUCE]),
        "song",
        mapreduce_pb2.CountPlaysResponse.FromString,
        True,
        replay,
        config.wait_ready,
    )
    userbehavior = ShardedStream(
        Replicas(USERBEHAVIOR, targets[USERBEHAVIOR]),
        "user_id",
        userbehavior_pb2.AnalyzeUsersResponse.FromString,
        False,
        replay,
        config.wait_ready,
    )
    recommendation = Replicas(RECOMMENDATION, targets[RECOMMENDATION])
    streams = (mapreduce, userbehavior)
    try:
        recommendation_replicas = _connect_all(streams, recommendation, config)
        rejected: list[Rejection] = []
        # Every reason, zeros included: a dashboard panel of reasons is never empty.
        by_reason: dict[str, int] = dict.fromkeys(REJECT_REASONS, 0)
        events = 0
        offset = 0
        for chunk in read_ahead(read_events(path, strict=config.strict)):
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
                    stream.recover(lost[stream], offset)
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
        top_songs, distinct_songs, mr_events = _merge_songs(mr_answers)
        users, top_users, ub_events = _merge_users(ub_answers)
        del ub_answers  # the messages' copy of every user
        for name, counted in (("mapreduce", mr_events), ("userbehavior", ub_events)):
            if counted != events:
                raise ServiceError(f"{name} counted {counted} events but the client sent {events}")
        rec_start = time.perf_counter()
        trending, recommendations = _recommend(recommendation, config.wait_ready, top_songs, users)
        if len(recommendations) != len(users):
            raise ServiceError(f"recommendation answered for {len(recommendations)} of {len(users)} users")
        done = time.perf_counter()
    finally:
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
        timings={
            "ingest_time": ingest_done - started,
            "mapreduce_time": mr_done - started,
            "userbehavior_time": ub_done - started,
            "recommendation_time": done - rec_start,
            "total_workflow_time": done - started,
        },
        replicas={s.service.name: s.shards for s in streams} | {"recommendation": recommendation_replicas},
        recoveries={s.service.name: s.recoveries for s in streams},
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
    """Wait for every service within one ``wait_ready`` window; returns how many Recommendation
    replicas serve. Raises ServiceError naming every service that has none."""
    deadline = time.monotonic() + config.wait_ready
    errors = []
    for stream in streams:
        try:
            stream.connect(deadline, config.expected_replicas.get(stream.service.name))
        except ServiceError as exc:
            errors.append(str(exc))
    try:
        serving = len(recommendation.wait(deadline, config.expected_replicas.get(RECOMMENDATION.name)))
    except ServiceError as exc:
        errors.append(str(exc))
    if errors:
        raise ServiceError("; ".join(errors))
    return serving


def _merge_songs(answers: list[mapreduce_pb2.CountPlaysResponse]) -> tuple[list, int, int]:
    songs = [s for a in answers for s in a.top_songs]
    songs.sort(key=lambda s: (-s.plays, s.song))
    return (
        songs[:10],
        sum(a.distinct_songs for a in answers),
        sum(a.events_processed for a in answers),
    )


@dataclass(frozen=True, slots=True)
class UserResult:
    """One user's line of the results (slots: there are hundreds of thousands of them)."""

    user_id: str
    total_time: int
    top_artist: str


def _merge_users(answers: list[userbehavior_pb2.AnalyzeUsersResponse]) -> tuple[list[UserResult], list, int]:
    users: list[UserResult] = []
    tops: list[tuple[str, int]] = []
    events = 0
    for a in answers:
        kind = a.WhichOneof("payload")
        if kind == "users":
            u = a.users
            users.extend(map(UserResult, u.user_ids, u.total_time, u.top_artist))
        elif kind == "top_users":
            tops.extend(zip(a.top_users.user_ids, a.top_users.total_time, strict=True))
            events += a.events_processed
    users.sort(key=attrgetter("user_id"))
    tops.sort(key=lambda t: (-t[1], t[0]))
    return users, tops[:5], events


def _recommend(
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
            RECOMMENDATION.method,
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
