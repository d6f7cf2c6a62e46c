"""The receiving half every event-streaming servicer shares: decode, check, count, hand on."""

from __future__ import annotations

import ctypes
import ctypes.util
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NoReturn, Protocol

import grpc
import pyarrow as pa

from music_analytics.api import events_pb2
from music_analytics.services.common.columns import InvalidBatchError
from music_analytics.services.common.config import CallLimits
from music_analytics.services.common.contract import MAX_TOP_N
from music_analytics.services.common.events import EventColumns, decode_chunk
from music_analytics.services.common.metrics import ServiceMetrics

# A call's peak memory over the bytes its state holds: the temporaries of merging sorted runs
# and of building the answer come on top. Each kind of state says its own (``peak_factor``),
# measured by bench/call_memory.py; the limit is checked against that multiple, so a refused call
# is refused before its peak, not after an OOM kill. This is for a state that does not say.
PEAK_FACTOR = 6


class EventRequest(Protocol):
    """CountPlaysRequest and AnalyzeUsersRequest: events plus how many top entries to return."""

    events: events_pb2.EventChunk
    top_n: int


class CallState(Protocol):
    """What a call accumulates; ``nbytes`` is the memory it holds (see the README's "Memory")."""

    @property
    def nbytes(self) -> int: ...

    @property
    def peak_factor(self) -> float: ...


def _malloc_trim() -> Callable[[], None]:
    """glibc's malloc_trim, where there is one: numpy's arrays come from malloc, whose per-thread
    arenas keep freed memory too. Where the C library has no such call, nothing is done."""
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    trim.argtypes = [ctypes.c_size_t]
    return lambda: trim(0)


_trim_malloc = _malloc_trim()


@contextmanager
def returning_memory() -> Iterator[None]:
    """Give the memory a call freed back to the system when the call ends.

    Arrow's default allocator (mimalloc) keeps freed memory in the heap of the thread that
    freed it until that thread allocates again. A call runs on whichever gRPC thread was free,
    so an idle service's RSS would depend on which threads served the last calls (measured:
    idle mapreduce between 165 and 214 MB across runs, against 108-116 MB released each time).
    It must run on the handler's own thread, hence here and not in a termination callback.
    """
    try:
        yield
    finally:
        release_memory()


def release_memory() -> None:
    """Give freed memory back to the system now. Worth its ~millisecond after a step that freed
    a lot: malloc otherwise keeps it and the next, larger arrays are placed beside it (measured
    on UserBehavior at 10M events: peak RSS 597 MB without a trim after each bulk mapping, 540
    with, at the same CPU time)."""
    pa.default_memory_pool().release_unused()
    _trim_malloc()


def refuse(
    context: grpc.ServicerContext,
    metrics: ServiceMetrics,
    reason: str,
    message: str,
    code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT,
) -> NoReturn:
    """Count the refusal by ``reason`` and end the call with ``code`` and ``message``."""
    metrics.reject(reason)
    context.abort(code, message)
    raise AssertionError("abort returns only outside a call")  # for type checkers: abort raises


def check_bound(context: grpc.ServicerContext, metrics: ServiceMetrics, field: str, value: int, bound: int) -> None:
    if value > bound:
        refuse(context, metrics, "out_of_range", f"{field} is {value}; the most allowed is {bound}")


def check_memory(context: grpc.ServicerContext, metrics: ServiceMetrics, state: CallState, limits: CallLimits) -> None:
    held = state.nbytes
    factor = getattr(state, "peak_factor", PEAK_FACTOR)
    if held * factor > limits.max_call_bytes:
        refuse(
            context,
            metrics,
            "memory_limit",
            f"this call's state holds {held / 2**20:.1f} MiB and may need {factor}x that at its peak, over the "
            f"per-call limit of {limits.max_call_bytes / 2**20:.0f} MiB ({limits.source}). Its size grows with the "
            "distinct keys sent in one call; split the input across calls or replicas, or raise the limit",
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        )


def ingest(
    requests: Iterator[EventRequest],
    context: grpc.ServicerContext,
    metrics: ServiceMetrics,
    needed: tuple[str, ...],
    add: Callable[[EventColumns], None],
    default_top: int,
    state: CallState,
    limits: CallLimits,
    first: Callable[[EventRequest], None] | None = None,
) -> int:
    """Decode every stream message into ``needed`` columns and pass it to ``add``.

    Returns the ``top_n`` the first message asked for; ``first`` reads the first message's other
    settings before its events are added. Bad input ends the call with
    INVALID_ARGUMENT naming the message and the problem; state past ``limits`` ends it with
    RESOURCE_EXHAUSTED. Every refusal is counted by reason.
    """
    top_n = None
    for index, request in enumerate(requests):
        if top_n is None:
            check_bound(context, metrics, "top_n", request.top_n, MAX_TOP_N)
            top_n = request.top_n or default_top
            if first is not None:
                first(request)
        try:
            batch = decode_chunk(request.events, needed)
        except InvalidBatchError as exc:
            refuse(context, metrics, exc.reason, f"message {index}: {exc}")
        start = time.perf_counter()
        add(batch)
        metrics.batch_done(batch.rows, time.perf_counter() - start)
        check_memory(context, metrics, state, limits)
    return top_n or default_top
