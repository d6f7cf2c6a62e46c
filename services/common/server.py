"""The one way every service starts: gRPC server, health, reflection, metrics, signals, shutdown."""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from music_analytics.services.common import logging as json_logging
from music_analytics.services.common.config import SETTINGS, CallLimits, ConfigError, ServerConfig
from music_analytics.services.common.contract import HEALTH_SERVICE, ServiceContract
from music_analytics.services.common.interceptor import CallInterceptor
from music_analytics.services.common.metrics import ServiceMetrics

log = logging.getLogger(__name__)

# Threads beyond the application streams: health checks and refusals must always find one
# free, whatever the streams are doing (a probe that times out restarts the pod mid-run).
RESERVED_THREADS = 6
# Reflection streams last a whole grpcurl session; a few at once is all tooling needs.
MAX_REFLECTION_STREAMS = 2


# How soon a signal that reached another thread than the main one is acted on (see serve).
SIGNAL_POLL_SECONDS = 0.25


class StartError(OSError):
    """The service could not start (a port in use, say); the message says which and why."""


@dataclass(frozen=True)
class ServiceSpec:
    """What is particular to one service: its contract and how to attach its servicer."""

    contract: ServiceContract
    # Adds the servicer to the server, given the service's metrics and per-call limits.
    attach: Callable[[grpc.Server, ServiceMetrics, CallLimits], None]

    @property
    def name(self) -> str:
        return self.contract.name

    @property
    def descriptor(self) -> Any:
        return self.contract.descriptor

    @property
    def full_name(self) -> str:
        return self.contract.full_name

    @property
    def grpc_port(self) -> int:
        return self.contract.grpc_port

    @property
    def metrics_port(self) -> int:
        return self.contract.metrics_port


def _check_port_free(host: str, port: int, what: str) -> None:
    """Fail with one clear line if ``port`` is taken, before gRPC's C core logs its own error."""
    if port == 0:
        return
    bind_host = _http_host(host)
    family = socket.AF_INET6 if ":" in bind_host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((bind_host, port))
        except OSError as exc:
            raise StartError(f"cannot bind the {what} port {host}:{port}: {exc.strerror}") from None


class RunningService:
    """A started service; ``stop()`` does what SIGTERM does."""

    def __init__(self, spec: ServiceSpec, config: ServerConfig) -> None:
        self.spec = spec
        self.config = config
        for port, what in ((config.grpc_port, "gRPC"), (config.metrics_port, "metrics")):
            _check_port_free(config.host, port, what)
        if config.health_port:
            _check_port_free(config.host, config.health_port, "health")
        self.metrics = ServiceMetrics(spec.name)
        self.interceptor = CallInterceptor(
            self.metrics, max_calls=config.max_streams, max_tooling_calls=MAX_REFLECTION_STREAMS
        )
        self.health = health.HealthServicer(
            experimental_non_blocking=True,
            experimental_thread_pool=futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="health-watch"),
        )
        self.server = grpc.server(
            futures.ThreadPoolExecutor(
                max_workers=config.max_streams + MAX_REFLECTION_STREAMS + RESERVED_THREADS,
                thread_name_prefix=spec.name,
            ),
            interceptors=[self.interceptor],
            options=[
                ("grpc.max_receive_message_length", config.max_message_bytes),
                ("grpc.max_send_message_length", config.max_message_bytes),
                ("grpc.so_reuseport", 0),
            ],
        )
        spec.attach(self.server, self.metrics, config.call_limits)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection((spec.full_name, HEALTH_SERVICE, reflection.SERVICE_NAME), self.server)
        self.metrics.register_methods(spec.descriptor)
        self.metrics.register_methods(health_pb2.DESCRIPTOR.services_by_name["Health"])
        self.grpc_port = self._bind(self.server, config.grpc_port, config.server_credentials(), "gRPC")
        self.health_server = None
        self.health_port = None
        if config.health_port is not None:
            # A server of its own: probes reach it whatever the main port's TLS and load.
            self.health_server = grpc.server(
                futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="health"),
                options=[("grpc.so_reuseport", 0)],
            )
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self.health_server)
            self.health_port = self._bind(self.health_server, config.health_port, None, "health")
        try:
            self._metrics_server, _ = start_http_server(
                config.metrics_port, addr=_http_host(config.host), registry=self.metrics.registry
            )
        except OSError as exc:
            raise StartError(
                f"cannot bind the metrics port {config.host}:{config.metrics_port}: {exc.strerror}"
            ) from None
        self.metrics_port = self._metrics_server.server_port
        self._stopped = threading.Event()

    def _bind(self, server: grpc.Server, port: int, credentials: grpc.ServerCredentials | None, what: str) -> int:
        address = f"{self.config.host}:{port}"
        try:
            bound = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
        except RuntimeError:
            bound = 0
        if bound == 0:
            raise StartError(f"cannot bind the {what} port {address}")
        return bound

    def start(self) -> None:
        self.server.start()
        if self.health_server is not None:
            self.health_server.start()
        self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        self.health.set(self.spec.full_name, health_pb2.HealthCheckResponse.SERVING)
        limits = self.config.call_limits
        log.info(
            "serving",
            extra={
                "grpc_port": self.grpc_port,
                "metrics_port": self.metrics_port,
                "health_port": self.health_port,
                "grpc_service": self.spec.full_name,
                "tls": "mutual" if self.config.tls_client_ca else bool(self.config.tls_cert),
                "max_streams": self.config.max_streams,
                "max_call_bytes": limits.max_call_bytes,
                "spill_after_bytes": limits.memory_budget,
                "spill_dir": limits.spill_dir or tempfile.gettempdir(),
            },
        )

    def stop(self) -> None:
        """NOT_SERVING first, so probes and load balancers stop sending us work; then drain.

        For ``shutdown_delay_seconds`` the server keeps accepting new calls (the cluster is
        still routing some to it); then, while calls are in flight (up to ``drain_seconds``),
        it still answers, so a health check sees NOT_SERVING rather than a refused connection;
        then ``server.stop`` gives what is left ``grace_seconds`` before cancelling it.
        """
        if self._stopped.is_set():
            return
        self._stopped.set()
        log.info(
            "shutting down",
            extra={
                "in_flight": self.interceptor.active_calls,
                "shutdown_delay_seconds": self.config.shutdown_delay_seconds,
                "drain_seconds": self.config.drain_seconds,
                "grace_seconds": self.config.grace_seconds,
            },
        )
        self.health.enter_graceful_shutdown()
        time.sleep(self.config.shutdown_delay_seconds)
        self.interceptor.idle.wait(self.config.drain_seconds)
        self.server.stop(self.config.grace_seconds).wait()
        if self.health_server is not None:
            self.health_server.stop(0).wait()
        self._metrics_server.shutdown()
        log.info("stopped")

    def wait(self) -> None:
        self.server.wait_for_termination()


def _http_host(grpc_host: str) -> str:
    return "0.0.0.0" if grpc_host in ("[::]", "::") else grpc_host.strip("[]")


def serve(spec: ServiceSpec, config: ServerConfig) -> None:
    """Run ``spec`` until SIGTERM or SIGINT, then shut down gracefully. Raises StartError."""
    json_logging.configure(spec.name, config.log_level)
    service = RunningService(spec, config)
    stopping = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal received", extra={"signal": signal.Signals(signum).name})
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    service.start()
    # Python runs a signal's handler in the main thread, and only between bytecodes; the kernel may
    # deliver SIGTERM to any of gRPC's threads, which leaves a main thread blocked in an untimed
    # wait asleep and the signal unhandled (seen: a replica that never stopped). A timed wait wakes.
    while not stopping.wait(SIGNAL_POLL_SECONDS):
        pass
    # One signal stops the service; a second (a supervisor repeating itself) must not kill it
    # mid-drain, nor after "stopped", when the interpreter's exit restores the default handler.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    service.stop()


def serve_from_args(args: argparse.Namespace) -> int:
    """Run the service ``args`` names until a signal; the exit code of ``music-analytics serve``:
    2 for a setting it cannot use or a port it cannot bind (one line on stderr), else 0."""
    from music_analytics.services.registry import SERVICES

    spec = SERVICES[args.service]
    try:
        config = ServerConfig.from_env(spec.contract, {s.field: getattr(args, s.field) for s in SETTINGS if s.flag})
        serve(spec, config)
    except (ConfigError, StartError) as exc:
        print(f"music-analytics serve {args.service}: {exc}", file=sys.stderr)
        return 2
    return 0
