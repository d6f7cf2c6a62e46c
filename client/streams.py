"""Streaming calls to the sharded services, and rebuilding a lost replica's shard.

Rows are partitioned across a service's replicas by key (song for MapReduce, user for
UserBehavior), so each replica's answer is exact for its keys. A replica that fails mid-run takes
its in-memory state with it; its shard is rebuilt on a live replica by re-reading the input up to
where the run had got (lineage recovery), so the results stay exact.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pyarrow as pa

from music_analytics.client.csv_source import Chunk
from music_analytics.client.encoding import batches, encode_batch, shard_rows
from music_analytics.client.replicas import (
    BusyBackoff,
    Endpoint,
    Replicas,
    ServiceError,
    describe,
    replica_busy,
    replica_lost,
)

__all__ = ["ShardedStream", "StreamCall"]

log = logging.getLogger(__name__)


class StreamCall:
    """One streaming call fed from a bounded queue (backpressure), answered in a thread."""

    def __init__(
        self,
        endpoint: Endpoint,
        deserializer: Callable[[bytes], Any],
        unary_response: bool,
        settings: bytes = b"",
        consume: Callable[[Any], bool] | None = None,
    ) -> None:
        self.endpoint = endpoint
        # Sees each response as it arrives, in the call's thread; those it takes are not kept.
        self._consume = consume
        # The call's settings (a request with no events), merged into its first message: protobuf
        # reads concatenated messages as one, and a message without events would be refused.
        self._settings = settings
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
                for response in self._call(self._requests()):
                    if self._consume is None or not self._consume(response):
                        self.responses.append(response)
        except Exception as exc:
            self.error = exc
        finally:
            self._done.set()

    def send(self, payload: bytes | None) -> bool:
        """Queue ``payload`` (None half-closes); False if the call has ended (failed)."""
        if payload is not None and self._settings:
            payload, self._settings = self._settings + payload, b""
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
        settings: bytes = b"",
        consumer: Callable[[int], Callable[[Any], bool]] | None = None,
    ) -> None:
        self.replicas = replicas
        self.service = replicas.service
        self.key = key
        self._deserializer = deserializer
        self._unary = unary_response
        self._replay = replay
        self._recovery_wait = recovery_wait
        self._settings = settings
        # A shard's response handler, made anew each time the shard's call is (re)opened.
        self._consumer = consumer
        self.calls: list[StreamCall] = []
        self.recoveries = 0

    @property
    def shards(self) -> int:
        return len(self.calls)

    def connect(self, deadline: float, expected: int | None) -> None:
        """Wait for the replicas to serve (see Replicas.wait); one shard per serving replica."""
        self.calls = [self._open(e, s) for s, e in enumerate(self.replicas.wait(deadline, expected))]

    def _open(self, endpoint: Endpoint, shard: int) -> StreamCall:
        consume = self._consumer(shard) if self._consumer is not None else None
        return StreamCall(endpoint, self._deserializer, self._unary, self._settings, consume)

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
        busy = BusyBackoff(self.service.name, self._recovery_wait)
        for s in sorted(shards):
            # Bounded: behind one address, a replica may pass health checks yet keep failing streams.
            attempts = 0
            while True:
                failed = self.calls[s]
                if replica_busy(failed.error):
                    busy.pause(failed.error)  # healthy but full: the same or another replica, later
                    endpoint = self.replicas.pick(self._recovery_wait)
                else:
                    attempts += 1
                    if attempts > 3 * max(len(self.replicas.endpoints), self.shards):
                        raise ServiceError(
                            f"{self.service.name}: gave up rebuilding a lost shard after {attempts - 1} attempts"
                        )
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
                call = self.calls[s] = self._open(endpoint, s)
                if self._replay_into(call, s, upto):
                    break

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
