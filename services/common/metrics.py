"""Prometheus metrics: the standard gRPC server metrics and the domain metrics.

The gRPC metric names and labels are those of grpc-ecosystem/go-grpc-middleware's
prometheus provider, so community dashboards work unchanged. Every method's series are
pre-created at zero so panels never show "No data" before the first call.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

# Codes are reported in CamelCase, as Go's codes.Code.String() does.
_CODE_NAMES = {code: "".join(part.capitalize() for part in code.name.split("_")) for code in grpc.StatusCode}
_CODE_NAMES[grpc.StatusCode.OK] = "OK"

LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
BATCH_SIZE_BUCKETS = (1, 10, 100, 1_000, 4_096, 16_384, 32_768, 65_536, 131_072)

# Why a service refused stream input. (Messages over the size limit are refused by gRPC before
# any handler runs: they show as grpc_code="ResourceExhausted" in grpc_server_handled_total.)
REJECT_REASONS = ("empty_field", "invalid_batch")


def grpc_type(request_streaming: bool, response_streaming: bool) -> str:
    """The middleware's ``grpc_type`` label for a method's streaming shape."""
    if request_streaming and response_streaming:
        return "bidi_stream"
    if request_streaming:
        return "client_stream"
    if response_streaming:
        return "server_stream"
    return "unary"


def code_name(code: grpc.StatusCode | None) -> str:
    return _CODE_NAMES[code or grpc.StatusCode.OK]


class ServiceMetrics:
    """All metrics of one service process, in a registry of its own."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        r = self.registry
        labels = ("grpc_type", "grpc_service", "grpc_method")
        self.started = Counter(
            "grpc_server_started_total", "Total number of RPCs started on the server.", labels, registry=r
        )
        self.handled = Counter(
            "grpc_server_handled_total",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            (*labels, "grpc_code"),
            registry=r,
        )
        self.msg_received = Counter(
            "grpc_server_msg_received_total",
            "Total number of RPC stream messages received on the server.",
            labels,
            registry=r,
        )
        self.msg_sent = Counter(
            "grpc_server_msg_sent_total",
            "Total number of gRPC stream messages sent by the server.",
            labels,
            registry=r,
        )
        self.handling = Histogram(
            "grpc_server_handling_seconds",
            "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.events = Counter(
            "music_analytics_events_processed_total", "Listening events aggregated.", ("service",), registry=r
        )
        self.batches = Counter(
            "music_analytics_batches_received_total",
            "Event batches (stream messages) received.",
            ("service",),
            registry=r,
        )
        self.batch_size = Histogram(
            "music_analytics_batch_size_events",
            "Events per received batch.",
            ("service",),
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.rejected = Counter(
            "music_analytics_rows_rejected_total",
            "Events or batches refused as invalid, by reason.",
            ("service", "reason"),
            registry=r,
        )
        self.aggregation = Histogram(
            "music_analytics_aggregation_seconds",
            "Time spent aggregating one batch or producing results.",
            ("service",),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.distinct_keys = Gauge(
            "music_analytics_distinct_keys",
            "Distinct keys held by the most recently updated aggregation.",
            ("service", "kind"),
            registry=r,
        )
        self.inflight = Gauge(
            "music_analytics_inflight_streams", "Streaming calls in progress.", ("service",), registry=r
        )
        self.events.labels(service)
        self.batches.labels(service)
        self.batch_size.labels(service)
        self.aggregation.labels(service)
        self.inflight.labels(service)
        for reason in REJECT_REASONS:
            self.rejected.labels(service, reason)

    def batch_done(self, rows: int, seconds: float) -> None:
        """Record one stream message of ``rows`` items that took ``seconds`` to aggregate."""
        self.aggregation.labels(self.service).observe(seconds)
        self.events.labels(self.service).inc(rows)
        self.batches.labels(self.service).inc()
        self.batch_size.labels(self.service).observe(rows)

    def register_methods(self, service_descriptor: Any) -> None:
        """Pre-create the zero series of every method of ``service_descriptor``."""
        for method in service_descriptor.methods:
            labels = (
                grpc_type(method.client_streaming, method.server_streaming),
                service_descriptor.full_name,
                method.name,
            )
            for metric in (self.started, self.msg_received, self.msg_sent, self.handling):
                metric.labels(*labels)
            for code in (
                "OK",
                "InvalidArgument",
                "ResourceExhausted",
                "Internal",
                "Cancelled",
                "Unavailable",
            ):
                self.handled.labels(*labels, code)


class MetricsInterceptor(grpc.ServerInterceptor):
    """Records the standard gRPC server metrics for every call."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self.m = metrics
        self._active = 0
        self._lock = threading.Lock()

    @property
    def active_calls(self) -> int:
        """Application calls in progress (health and reflection excluded): what shutdown waits for."""
        return self._active

    def _track(self, delta: int) -> None:
        with self._lock:
            self._active += delta

    def intercept_service(self, continuation: Callable, handler_call_details: grpc.HandlerCallDetails):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        full = handler_call_details.method.lstrip("/")
        service, _, method = full.rpartition("/")
        if service.startswith("grpc.reflection."):
            # Reflection streams stay open for a whole grpcurl session; they are tooling, not traffic.
            return handler
        application = not service.startswith("grpc.health.")
        labels = (grpc_type(handler.request_streaming, handler.response_streaming), service, method)
        m = self.m

        def count_in(requests: Iterator) -> Iterator:
            counter = m.msg_received.labels(*labels)
            for request in requests:
                counter.inc()
                yield request

        def finish(context: grpc.ServicerContext, start: float, error: BaseException | None) -> None:
            code = context.code() if hasattr(context, "code") else None
            if error is not None and code in (None, grpc.StatusCode.OK):
                code = grpc.StatusCode.UNKNOWN
            m.handled.labels(*labels, code_name(code)).inc()
            m.handling.labels(*labels).observe(time.perf_counter() - start)

        def wrap(behavior: Callable) -> Callable:
            def unary_result(request_or_iterator: Any, context: grpc.ServicerContext) -> Any:
                if application:
                    self._track(1)
                try:
                    return counted_unary(request_or_iterator, context)
                finally:
                    if application:
                        self._track(-1)

            def counted_unary(request_or_iterator: Any, context: grpc.ServicerContext) -> Any:
                start = time.perf_counter()
                m.started.labels(*labels).inc()
                if handler.request_streaming:
                    request_or_iterator = count_in(request_or_iterator)
                else:
                    m.msg_received.labels(*labels).inc()
                try:
                    result = behavior(request_or_iterator, context)
                except BaseException as exc:
                    finish(context, start, exc)
                    raise
                m.msg_sent.labels(*labels).inc()
                finish(context, start, None)
                return result

            def stream_result(request_or_iterator: Any, context: grpc.ServicerContext) -> Iterator:
                if application:
                    self._track(1)
                try:
                    yield from counted_stream(request_or_iterator, context)
                finally:
                    if application:
                        self._track(-1)

            def counted_stream(request_or_iterator: Any, context: grpc.ServicerContext) -> Iterator:
                start = time.perf_counter()
                m.started.labels(*labels).inc()
                if handler.request_streaming:
                    request_or_iterator = count_in(request_or_iterator)
                else:
                    m.msg_received.labels(*labels).inc()
                sent = m.msg_sent.labels(*labels)
                try:
                    for response in behavior(request_or_iterator, context):
                        sent.inc()
                        yield response
                except BaseException as exc:
                    finish(context, start, exc)
                    raise
                finish(context, start, None)

            return stream_result if handler.response_streaming else unary_result

        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                wrap(handler.unary_unary), handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                wrap(handler.unary_stream), handler.request_deserializer, handler.response_serializer
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                wrap(handler.stream_unary), handler.request_deserializer, handler.response_serializer
            )
        return grpc.stream_stream_rpc_method_handler(
            wrap(handler.stream_stream), handler.request_deserializer, handler.response_serializer
        )
