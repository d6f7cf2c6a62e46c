"""The one way every service starts: gRPC server, health, reflection, metrics, signals, shutdown."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
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
from music_analytics.services.common.metrics import MetricsInterceptor, ServiceMetrics

log = logging.getLogger(__name__)

# A 64k-row batch with long strings stays under ~4 MB; 16 MB leaves room without inviting abuse.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class ServiceSpec:
    """What is particular to one service: its name, default ports and how to attach its servicer."""

    name: str  # short name used on the command line and in logs: "mapreduce"
    descriptor: Any  # protobuf ServiceDescriptor
    grpc_port: int
    metrics_port: int
    # Called with the server and the service's metrics; adds the servicer to the server.
    attach: Callable[[grpc.Server, ServiceMetrics], None]

    @property
    def full_name(self) -> str:
        return self.descriptor.full_name


@dataclass(frozen=True)
class ServerConfig:
    host: str = "[::]"
    grpc_port: int = 0
    metrics_port: int = 0
    grace_seconds: float = 30.0
    drain_seconds: float = 10.0
    # Kubernetes removes a terminating pod from Endpoints asynchronously: kube-proxy rules, DNS
    # answers and clients' connection pools still send it new calls for a few seconds after
    # SIGTERM. Serving them (health NOT_SERVING) for this long turns them into answers, not errors.
    shutdown_delay_seconds: float = 5.0
    workers: int = 16
    max_message_bytes: int = MAX_MESSAGE_BYTES
    log_level: str = "info"

    @classmethod
    def from_env(cls, spec: ServiceSpec, **overrides: Any) -> ServerConfig:
        """Flags (``overrides``, None meaning unset) win over environment, which wins over defaults.

        Environment names carry a MUSIC_ANALYTICS_ prefix: Kubernetes injects ``<SERVICE>_PORT``
        variables of its own into every pod, which must never be mistaken for ours.
        """
        env = os.environ
        values: dict[str, Any] = {
            "host": env.get("MUSIC_ANALYTICS_HOST", cls.host),
            "grpc_port": int(env.get("MUSIC_ANALYTICS_GRPC_PORT", spec.grpc_port)),
            "metrics_port": int(env.get("MUSIC_ANALYTICS_METRICS_PORT", spec.metrics_port)),
            "grace_seconds": float(env.get("MUSIC_ANALYTICS_GRACE_SECONDS", cls.grace_seconds)),
            "drain_seconds": float(env.get("MUSIC_ANALYTICS_DRAIN_SECONDS", cls.drain_seconds)),
            "shutdown_delay_seconds": float(
                env.get("MUSIC_ANALYTICS_SHUTDOWN_DELAY_SECONDS", cls.shutdown_delay_seconds)
            ),
            "workers": int(env.get("MUSIC_ANALYTICS_WORKERS", cls.workers)),
            "log_level": env.get("MUSIC_ANALYTICS_LOG_LEVEL", cls.log_level),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


class RunningService:
    """A started service; ``stop()`` does what SIGTERM does."""

    def __init__(self, spec: ServiceSpec, config: ServerConfig) -> None:
        self.spec = spec
        self.config = config
        self.metrics = ServiceMetrics(spec.name)
        self.interceptor = MetricsInterceptor(self.metrics)
        self.health = health.HealthServicer(
            experimental_non_blocking=True,
            experimental_thread_pool=futures.ThreadPoolExecutor(max_workers=2),
        )
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix=spec.name),
            interceptors=[self.interceptor],
            options=[
                ("grpc.max_receive_message_length", config.max_message_bytes),
                ("grpc.max_send_message_length", config.max_message_bytes),
                ("grpc.so_reuseport", 0),
            ],
        )
        spec.attach(self.server, self.metrics)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (
                spec.full_name,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            self.server,
        )
        self.metrics.register_methods(spec.descriptor)
        self.metrics.register_methods(health_pb2.DESCRIPTOR.services_by_name["Health"])
        self.grpc_port = self.server.add_insecure_port(f"{config.host}:{config.grpc_port}")
        if self.grpc_port == 0:
            raise OSError(f"{spec.name}: cannot bind gRPC port {config.host}:{config.grpc_port}")
        self._metrics_server, _ = start_http_server(
            config.metrics_port, addr=_http_host(config.host), registry=self.metrics.registry
        )
        self.metrics_port = self._metrics_server.server_port
        self._stopped = threading.Event()

    def start(self) -> None:
        self.server.start()
        self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        self.health.set(self.spec.full_name, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "serving",
            extra={
                "grpc_port": self.grpc_port,
                "metrics_port": self.metrics_port,
                "grpc_service": self.spec.full_name,
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
        time.sleep(max(self.config.shutdown_delay_seconds, 0.0))
        deadline = time.monotonic() + self.config.drain_seconds
        while self.interceptor.active_calls and time.monotonic() < deadline:
            time.sleep(0.05)
        self.server.stop(self.config.grace_seconds).wait()
        self._metrics_server.shutdown()
        log.info("stopped")

    def wait(self) -> None:
        self.server.wait_for_termination()


def _http_host(grpc_host: str) -> str:
    return "0.0.0.0" if grpc_host in ("[::]", "::") else grpc_host.strip("[]")


def serve(spec: ServiceSpec, config: ServerConfig) -> None:
    """Run ``spec`` until SIGTERM or SIGINT, then shut down gracefully."""
    json_logging.configure(spec.name, config.log_level)
    service = RunningService(spec, config)
    stopping = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal received", extra={"signal": signal.Signals(signum).name})
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    service.start()
    stopping.wait()
    service.stop()


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``serve`` command's flags (each overrides its MUSIC_ANALYTICS_* environment variable)."""
    from music_analytics.services.registry import SERVICES

    parser.add_argument("service", choices=tuple(SERVICES))
    parser.add_argument("--host", default=None, help="address to bind (default [::], env MUSIC_ANALYTICS_HOST)")
    parser.add_argument("--port", type=int, default=None, help="gRPC port (env MUSIC_ANALYTICS_GRPC_PORT)")
    parser.add_argument(
        "--metrics-port", type=int, default=None, help="Prometheus /metrics port (env MUSIC_ANALYTICS_METRICS_PORT)"
    )
    parser.add_argument(
        "--grace-seconds",
        type=float,
        default=None,
        help="how long in-flight calls may finish after SIGTERM (env MUSIC_ANALYTICS_GRACE_SECONDS)",
    )
    parser.add_argument(
        "--shutdown-delay-seconds",
        type=float,
        default=None,
        help="after SIGTERM, keep accepting calls this long with health NOT_SERVING, so the cluster stops "
        "routing to us first (default 5; env MUSIC_ANALYTICS_SHUTDOWN_DELAY_SECONDS)",
    )


def serve_from_args(args: argparse.Namespace) -> int:
    """Run the service ``args`` name until a signal; the exit code of ``music-analytics serve``."""
    from music_analytics.services.registry import SERVICES

    spec = SERVICES[args.service]
    config = ServerConfig.from_env(
        spec,
        host=args.host,
        grpc_port=args.port,
        metrics_port=args.metrics_port,
        grace_seconds=args.grace_seconds,
        shutdown_delay_seconds=args.shutdown_delay_seconds,
    )
    try:
        serve(spec, config)
    except OSError as exc:
        print(f"music-analytics serve {args.service}: {exc}", file=sys.stderr)
        return 1
    return 0
