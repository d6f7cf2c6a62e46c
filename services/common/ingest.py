"""The receiving half every event-streaming servicer shares: decode, check, count, hand on."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

import grpc

from music_analytics.api import events_pb2
from music_analytics.services.common.columns import InvalidBatchError
from music_analytics.services.common.events import EventColumns, decode_chunk
from music_analytics.services.common.metrics import ServiceMetrics

MAX_TOP = 10_000


class EventRequest(Protocol):
    """CountPlaysRequest and AnalyzeUsersRequest: events plus how many top entries to return."""

    events: events_pb2.EventChunk
    top_n: int


@contextmanager
def inflight(metrics: ServiceMetrics) -> Iterator[None]:
    gauge = metrics.inflight.labels(metrics.service)
    gauge.inc()
    try:
        yield
    finally:
        gauge.dec()


def ingest(
    requests: Iterator[EventRequest],
    context: grpc.ServicerContext,
    metrics: ServiceMetrics,
    needed: tuple[str, ...],
    add: Callable[[EventColumns], None],
    default_top: int,
) -> int:
    """Decode every stream message into ``needed`` columns and pass it to ``add``.

    Returns the ``top_n`` the first message asked for. Bad input aborts the call with
    INVALID_ARGUMENT naming the message and the problem, and is counted by reason.
    """
    service = metrics.service
    top_n = None
    for index, request in enumerate(requests):
        if top_n is None:
            top_n = request.top_n or default_top
            if top_n > MAX_TOP:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"top_n {top_n} exceeds {MAX_TOP}")
        try:
            batch = decode_chunk(request.events, needed)
        except InvalidBatchError as exc:
            metrics.rejected.labels(service, exc.reason).inc()
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"message {index}: {exc}")
        start = time.perf_counter()
        add(batch)
        metrics.batch_done(batch.rows, time.perf_counter() - start)
    return top_n or default_top
