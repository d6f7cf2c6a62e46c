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
from grpc_health.v1 import health_pb2, health_pb2_grpc

from music_analytics.api import mapreduce_pb2, recommendation_pb2, userbehavior_pb2
from music_analytics.client.csv_source import REJECT_REASONS, Chunk, Rejection, read_events, read_header
from music_analytics.client.encoding import batches, encode_batch, shard_rows
from music_analytics.client.targets import resolve

log = logging.getLogger(__name__)

# The services' receive limit too (services/common/server.py); a batch is ~1-2 MB.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]
# Codes that mean "this replica is gone", as opposed to "this request is wrong".
REPLICA_LOST = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED}
USERS_PER_MESSAGE = 20_000


class ServiceError(Exception):
    """A service is unreachable, lost every replica, or refused our requests. Exit code 1."""


@dataclass(frozen=True)
class ServiceInfo:
    name: str
    health_name: str
    method: str
    columns: tuple[str, ...] = ()  # the event columns the service reads


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


class Endpoint:
    def __init__(self, service: ServiceInfo, address: str) -> None:
        self.service = service
        self.address = address
        self.channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
        self.alive = True

    def wait_serving(self, timeout: float) -> None:
        """Block until the endpoint reports SERVING for its service, or raise ServiceError."""
        stub = health_pb2_grpc.HealthStub(self.channel)
        deadline = time.monotonic() + timeout
        last = "no answer"
        while True:
            remaining = deadline - time.monotonic()
            try:
                reply = stub.Check(
                    health_pb2.HealthCheckRequest(service=self.service.health_name),
                    timeout=max(min(remaining, 2.0), 0.05),
                    wait_for_ready=True,
                )
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except grpc.RpcError as exc:
                last = f"{exc.code().name}: {exc.details()}"
            if time.monotonic() >= deadline:
                raise ServiceError(f"{self.service.name} at {self.address} is not serving after {timeout:g}s ({last})")
            time.sleep(0.1)

    def close(self) -> None:
        self.channel.close()


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


def _describe(exc: BaseException | None) -> str:
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        return f"{exc.code().name}: {exc.details()}"
    return repr(exc)


def _replica_lost(exc: BaseException | None) -> bool:
    return isinstance(exc, grpc.RpcError) and hasattr(exc, "code") and exc.code() in REPLICA_LOST


class ShardedStream:
    """One streaming service, its rows partitioned by ``key`` across the replicas of ``target``."""

    def __init__(
        self,
        service: ServiceInfo,
        target: str,
        key: str,
        deserializer: Callable[[bytes], Any],
        unary_response: bool,
        replay: Callable[[int | None], Iterator[Chunk]],
    ) -> None:
        self.service = service
        self.target = target
        self.key = key
        self._deserializer = deserializer
        self._unary = unary_response
        self._replay = replay
        self.endpoints = [Endpoint(service, a) for a in resolve(target)]
        self.calls: list[StreamCall] = []
        self.recoveries = 0
        self._next = 0

    @property
    def shards(self) -> int:
        return len(self.calls)

    def connect(self, timeout: float) -> None:
        """Wait for the replicas to serve; go on with the live ones if at least one is."""
        problems = []
        for endpoint in self.endpoints:
            try:
                endpoint.wait_serving(timeout)
            except ServiceError as exc:
                endpoint.alive = False
                problems.append(str(exc))
        live = [e for e in self.endpoints if e.alive]
        if not live:
            raise ServiceError("; ".join(problems))
        for problem in problems:
            log.warning("replica unavailable, continuing without it", extra={"detail": problem})
        self.calls = [self._open(e) for e in live]

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
            for _attempt in range(3 * len(self.endpoints)):
                failed = self.calls[s]
                self._check_recoverable(failed)
                failed.endpoint.alive = False
                endpoint = self._pick_endpoint()
                log.warning(
                    "replica lost; rebuilding its shard on another replica",
                    extra={
                        "service": self.service.name,
                        "lost": failed.endpoint.address,
                        "replacement": endpoint.address,
                        "shard": s,
                        "detail": _describe(failed.error),
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
        if not _replica_lost(call.error):
            raise ServiceError(f"{self.service.name} at {call.endpoint.address} failed: {_describe(call.error)}")

    def _pick_endpoint(self) -> Endpoint:
        live = [e for e in self.endpoints if e.alive]
        if live:
            self._next += 1
            return live[self._next % len(live)]
        # Behind one ClusterIP address a new connection may reach another pod: try once more.
        for endpoint in self.endpoints:
            try:
                endpoint.wait_serving(2.0)
                endpoint.alive = True
                return endpoint
            except ServiceError:
                continue
        addresses = ", ".join(e.address for e in self.endpoints)
        raise ServiceError(f"{self.service.name}: every replica is unreachable ({addresses})")

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
        for e in self.endpoints:
            e.close()


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
    wait_ready: float = 10.0
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

    mapreduce = ShardedStream(
        MAPREDUCE, config.mapreduce, "song", mapreduce_pb2.CountPlaysResponse.FromString, True, replay
    )
    userbehavior = ShardedStream(
        USERBEHAVIOR,
        config.userbehavior,
        "user_id",
        userbehavior_pb2.AnalyzeUsersResponse.FromString,
        False,
        replay,
    )
    recommendation_endpoints = [Endpoint(RECOMMENDATION, a) for a in resolve(config.recommendation)]
    streams = (mapreduce, userbehavior)
    try:
        live_recommendation = _connect_all(streams, recommendation_endpoints, config.wait_ready)
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
        trending, recommendations = _recommend(live_recommendation, top_songs, users)
        if len(recommendations) != len(users):
            raise ServiceError(f"recommendation answered for {len(recommendations)} of {len(users)} users")
        done = time.perf_counter()
    finally:
        for stream in streams:
            stream.close()
        for e in recommendation_endpoints:
            e.close()
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
        replicas={s.service.name: len(s.endpoints) for s in streams}
        | {"recommendation": len(recommendation_endpoints)},
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


def _connect_all(streams: tuple[ShardedStream, ...], rec: list[Endpoint], timeout: float) -> list[Endpoint]:
    """Wait for every service; returns the live Recommendation replicas. Raises if a service has none."""
    errors = []
    for stream in streams:
        try:
            stream.connect(timeout)
        except ServiceError as exc:
            errors.append(str(exc))
    live, problems = [], []
    for endpoint in rec:
        try:
            endpoint.wait_serving(timeout)
            live.append(endpoint)
        except ServiceError as exc:
            problems.append(str(exc))
    if not live:
        errors.extend(problems)
    if errors:
        raise ServiceError("; ".join(errors))
    return live


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
    endpoints: list[Endpoint], top_songs: list[mapreduce_pb2.SongCount], users: list[UserResult]
) -> tuple[list, dict[str, list[str]]]:
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
    for endpoint in endpoints:
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
            if not _replica_lost(exc):
                raise ServiceError(f"recommendation at {endpoint.address} failed: {_describe(exc)}") from None
            errors.append(f"{endpoint.address}: {_describe(exc)}")
    raise ServiceError(f"recommendation: every replica failed ({'; '.join(errors)})")
