"""Every call passes here: admitted or refused, counted and timed, its end recorded exactly once.

Admission: a sync gRPC server runs each call on a thread of one pool, queueing calls when the
pool is busy. Event streams hold their thread for a whole run, so without a limit a busy server
queues health checks behind them and Kubernetes restarts it mid-run. Application calls are
limited to ``max_calls`` (more are refused at once with RESOURCE_EXHAUSTED, not queued) and the
pool is sized larger, so health checks and refusals always find a thread.

Ends: a call's end is recorded from the RPC's termination callback, which fires however it
ends: answered, aborted, cancelled by the client, past its deadline, or its handler left
suspended when the client went away (a response stream gRPC stops pulling from). Recording it
there, once, is what keeps the slot count, the in-flight gauge and grpc_server_handled_total
right in every case.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from grpc import _server as grpc_server

from music_analytics.services.common.contract import BUSY_DETAILS_PREFIX
from music_analytics.services.common.metrics import ServiceMetrics, code_name, grpc_type

_HEALTH = "grpc.health.v1.Health"
_REFLECTION_PREFIX = "grpc.reflection."


class _Slots:
    """A count of calls in progress with a ceiling; ``idle`` is set while none are."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.active = 0
        self._lock = threading.Lock()
        self.idle = threading.Event()
        self.idle.set()

    def take(self) -> bool:
        with self._lock:
            if self.limit is not None and self.active >= self.limit:
                return False
            self.active += 1
            self.idle.clear()
            return True

    def give_back(self) -> None:
        with self._lock:
            self.active -= 1
            if self.active == 0:
                self.idle.set()


class _Call:
    """One call's bookkeeping, from its start to its single recorded end."""

    def __init__(
        self,
        interceptor: CallInterceptor,
        labels: tuple[str, str, str] | None,
        slots: _Slots | None,
        context: grpc.ServicerContext,
    ) -> None:
        self.interceptor = interceptor
        self.labels = labels  # None: not measured (reflection)
        self.slots = slots  # None: not limited (health checks)
        self.context = context
        self.start = time.perf_counter()
        self.completed = False
        self.raised: BaseException | None = None
        self._ended = False
        self._lock = threading.Lock()
        self._admitted = False

    def admit(self) -> None:
        """Take a slot, or abort the call with RESOURCE_EXHAUSTED saying why."""
        i = self.interceptor
        if self.labels is not None:
            i.metrics.started.labels(*self.labels).inc()
        if self.slots is not None and not self.slots.take():
            if self.slots is i.application:
                i.metrics.reject("over_capacity")
                message = (
                    f"{BUSY_DETAILS_PREFIX}: {self.slots.limit} calls in progress, the most it serves at once; "
                    f"retry later, or raise --max-streams / MUSIC_ANALYTICS_MAX_STREAMS (the chart's maxStreams)"
                )
            else:
                message = f"{BUSY_DETAILS_PREFIX}: {self.slots.limit} reflection streams in progress; retry later"
            self._end_now()
            self.context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, message)
        self._admitted = self.slots is not None
        if self.slots is i.application:
            i.metrics.inflight.labels(i.metrics.service).inc()
        if not self.context.add_callback(self.end):
            self.end()  # the RPC had already terminated

    def _end_now(self) -> None:
        """Record a refusal: it never took a slot, and abort() is about to end it."""
        with self._lock:
            self._ended = True
        self._record(grpc.StatusCode.RESOURCE_EXHAUSTED)

    def _record(self, code: grpc.StatusCode) -> None:
        if self.labels is not None:
            m = self.interceptor.metrics
            m.handled.labels(*self.labels, code_name(code)).inc()
            m.handling.labels(*self.labels).observe(time.perf_counter() - self.start)

    def end(self) -> None:
        with self._lock:
            if self._ended:
                return
            self._ended = True
        i = self.interceptor
        self._record(self._final_code())
        if self._admitted:
            if self.slots is i.application:
                i.metrics.inflight.labels(i.metrics.service).dec()
            self.slots.give_back()  # type: ignore[union-attr]

    def _final_code(self) -> grpc.StatusCode:
        # A handler that finished on a call the core reports cancelled did not answer: it read the
        # cancel as the end of the request stream (see _core_cancelled).
        completed = self.completed and not _core_cancelled(self.context)
        return end_code(completed, self.context.code(), self.context.time_remaining(), self.raised)


def _core_cancelled(context: grpc.ServicerContext) -> bool:
    """Whether gRPC's core reported the ended call cancelled (by the client, its deadline, or the
    server stopping). grpc's sync server can hand a handler the end of a client's request stream
    when the client in fact cancelled (its empty read can complete before the cancel is seen), so
    the handler finishes as if answered; only the core's report of the close, which the
    termination callback always follows, tells. No public API exposes it, hence the private read;
    on a grpc without it the answer is False, what it was before."""
    state = getattr(context, "_state", None)
    return getattr(state, "client", None) == _GRPC_CANCELLED


_GRPC_CANCELLED = getattr(grpc_server, "_CANCELLED", object())


# A client's deadline runs from when it sent the call, the server's from when the headers arrived,
# so the client's fires first and its cancel reaches the server a millisecond or two before the
# server's own deadline (gRPC's core, deciding with no margin, then says CANCELLED). A call that
# ends this close to its deadline ended by it.
DEADLINE_MARGIN_SECONDS = 0.1


def end_code(
    completed: bool, set_code: grpc.StatusCode | None, remaining: float | None, raised: BaseException | None
) -> grpc.StatusCode:
    """The code a call ended with: what the handler set if it finished or aborted; else, with its
    deadline (``remaining`` seconds away) at hand DEADLINE_EXCEEDED, a client gone or a request
    stream broken off CANCELLED, and UNKNOWN for a bug that raised."""
    if completed:
        return set_code or grpc.StatusCode.OK
    if set_code not in (None, grpc.StatusCode.OK):
        return set_code  # the handler aborted with it
    if remaining is not None and remaining <= DEADLINE_MARGIN_SECONDS:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    if raised is None or isinstance(raised, grpc.RpcError):
        # Still running when the RPC ended, or the request stream broke off: a cancel.
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN


class CallInterceptor(grpc.ServerInterceptor):
    """Admission limits and the standard gRPC server metrics, for every call."""

    def __init__(self, metrics: ServiceMetrics, max_calls: int | None, max_tooling_calls: int | None) -> None:
        self.metrics = metrics
        self.application = _Slots(max_calls)
        self.tooling = _Slots(max_tooling_calls)

    @property
    def active_calls(self) -> int:
        """Application calls in progress (health and reflection excluded): what shutdown waits for."""
        return self.application.active

    @property
    def idle(self) -> threading.Event:
        """Set while no application call is in progress."""
        return self.application.idle

    def intercept_service(self, continuation: Callable, handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        service, _, method = handler_call_details.method.lstrip("/").rpartition("/")
        if service == _HEALTH and method == "Watch":
            # Left as it is: wrapped, it would lose its non-blocking form and hold a thread per watcher.
            return handler
        labels = (grpc_type(handler.request_streaming, handler.response_streaming), service, method)
        if service.startswith(_REFLECTION_PREFIX):
            # Tooling, not traffic: limited so grpcurl sessions cannot take the threads, not measured.
            return _wrap(handler, self, None, self.tooling)
        return _wrap(handler, self, labels, None if service == _HEALTH else self.application)


class _Undecodable:
    """Stands for a request message that did not parse, so the call can say so itself.

    gRPC answers INTERNAL ("Exception deserializing request!") when a request deserializer
    raises, before any handler runs; a message that is not the method's request type is the
    caller's error, INVALID_ARGUMENT.
    """

    def __init__(self, error: Exception) -> None:
        self.error = error


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # the protobuf runtime's DecodeError, or a codec's own error
            return _Undecodable(exc)

    return deserialize


def _wrap(handler: Any, interceptor: CallInterceptor, labels: tuple | None, slots: _Slots | None) -> Any:
    metrics = interceptor.metrics
    received = metrics.msg_received.labels(*labels) if labels else None
    sent = metrics.msg_sent.labels(*labels) if labels else None

    def refuse_undecodable(request: Any, index: int, context: grpc.ServicerContext) -> Any:
        if isinstance(request, _Undecodable):
            if slots is interceptor.application:
                metrics.reject("invalid_batch")
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"message {index}: not a valid request message for this method ({request.error})",
            )
        return request

    def checked(requests: Iterator, context: grpc.ServicerContext) -> Iterator:
        for index, request in enumerate(requests):
            if received is not None:
                received.inc()
            yield refuse_undecodable(request, index, context)

    def begin(request: Any, context: grpc.ServicerContext) -> tuple[_Call, Any]:
        call = _Call(interceptor, labels, slots, context)
        call.admit()
        if handler.request_streaming:
            request = checked(request, context)
        else:
            if received is not None:
                received.inc()
            request = refuse_undecodable(request, 0, context)
        return call, request

    def unary_response(behavior: Callable) -> Callable:
        def run(request: Any, context: grpc.ServicerContext) -> Any:
            call, request = begin(request, context)
            try:
                response = behavior(request, context)
            except BaseException as exc:
                call.raised = exc
                raise
            call.completed = True
            if sent is not None:
                sent.inc()
            return response

        return run

    def stream_response(behavior: Callable) -> Callable:
        def run(request: Any, context: grpc.ServicerContext) -> Iterator:
            call, request = begin(request, context)
            try:
                for response in behavior(request, context):
                    if sent is not None:
                        sent.inc()
                    yield response
            except BaseException as exc:
                call.raised = exc
                raise
            call.completed = True

        return run

    make = {
        "unary_unary": (grpc.unary_unary_rpc_method_handler, unary_response),
        "unary_stream": (grpc.unary_stream_rpc_method_handler, stream_response),
        "stream_unary": (grpc.stream_unary_rpc_method_handler, unary_response),
        "stream_stream": (grpc.stream_stream_rpc_method_handler, stream_response),
    }
    for kind, (factory, wrapper) in make.items():
        behavior = getattr(handler, kind)
        if behavior is not None:
            return factory(wrapper(behavior), _tolerant(handler.request_deserializer), handler.response_serializer)
    raise ValueError(f"handler of {labels} has no behavior")
