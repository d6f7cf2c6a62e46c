"""Prometheus metrics: the standard gRPC server metrics and the domain metrics.

The gRPC metric names and labels are those of grpc-ecosystem/go-grpc-middleware's
prometheus provider, so community dashboards work unchanged. Every method's series are
pre-created at zero so panels never show "No data" before the first call.
"""

from __future__ import annotations

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

# Codes as go-grpc-middleware reports them: Go's codes.Code.String(). Spelled out, not derived
# from Python's names, because Go writes CANCELLED as "Canceled".
CODE_NAMES = {
    grpc.StatusCode.OK: "OK",
    grpc.StatusCode.CANCELLED: "Canceled",
    grpc.StatusCode.UNKNOWN: "Unknown",
    grpc.StatusCode.INVALID_ARGUMENT: "InvalidArgument",
    grpc.StatusCode.DEADLINE_EXCEEDED: "DeadlineExceeded",
    grpc.StatusCode.NOT_FOUND: "NotFound",
    grpc.StatusCode.ALREADY_EXISTS: "AlreadyExists",
    grpc.StatusCode.PERMISSION_DENIED: "PermissionDenied",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "ResourceExhausted",
    grpc.StatusCode.FAILED_PRECONDITION: "FailedPrecondition",
    grpc.StatusCode.ABORTED: "Aborted",
    grpc.StatusCode.OUT_OF_RANGE: "OutOfRange",
    grpc.StatusCode.UNIMPLEMENTED: "Unimplemented",
    grpc.StatusCode.INTERNAL: "Internal",
    grpc.StatusCode.UNAVAILABLE: "Unavailable",
    grpc.StatusCode.DATA_LOSS: "DataLoss",
    grpc.StatusCode.UNAUTHENTICATED: "Unauthenticated",
}
# Pre-created for every method: the codes this service's own paths produce.
EXPECTED_CODES = (
    grpc.StatusCode.OK,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
)

LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
BATCH_SIZE_BUCKETS = (1, 10, 100, 1_000, 4_096, 16_384, 32_768, 65_536, 131_072)

# Why a service refused a call. Each refusal ends its call, so calls are what is counted.
# (Messages over the size limit are refused by gRPC before any handler runs: they show only
# as grpc_code="ResourceExhausted" in grpc_server_handled_total.)
REJECT_REASONS = (
    "empty_field",  # an event with an empty user_id, song_id or artist
    "invalid_batch",  # a message that does not describe valid events
    "out_of_range",  # a request field past its bound (top_n, trending_n, candidates, rows)
    "unknown_timezone",  # a time zone that is not an IANA name
    "unknown_algorithm",  # a recommender algorithm the service does not have
    "memory_limit",  # the call's state outgrew the per-call memory limit
    "spill_failed",  # the call's state could not be set aside on disk (no space, no directory)
    "over_capacity",  # more application calls at once than --max-streams
)


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
    return CODE_NAMES[code or grpc.StatusCode.OK]


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
            "music_analytics_calls_rejected_total",
            "Calls refused by the service, by reason; a refusal ends the call.",
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

    def reject(self, reason: str) -> None:
        """Count one refused call."""
        self.rejected.labels(self.service, reason).inc()

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
            for code in EXPECTED_CODES:
                self.handled.labels(*labels, code_name(code))
