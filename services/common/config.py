"""The service's settings: each from a flag or the environment, every value checked before start."""

from __future__ import annotations

import argparse
import math
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from music_analytics.services.common.contract import MAX_MESSAGE_BYTES, SERVICES, ServiceContract

DEFAULT_MAX_CALL_BYTES = 2 << 30


class ConfigError(ValueError):
    """A setting the service cannot use; the message names the setting, its source and value."""


@dataclass(frozen=True)
class CallLimits:
    """What one call may cost the process; servicers check it as the call's state grows."""

    max_call_bytes: int = DEFAULT_MAX_CALL_BYTES
    # Where the limit came from, to tell a refused client how it can be raised.
    source: str = "the default"
    # Where a call's state past its memory budget is set aside (None: the system's temporary directory).
    spill_dir: str | None = None
    spill_after_bytes: int | None = None

    @property
    def memory_budget(self) -> int:
        """What a call's counters and lists may hold in memory before the rest goes to disk: by
        default a thirty-second of the limit: what the call holds besides (strings, ids, messages
        waiting to be mapped) and the temporaries of merging and of building the answer come on
        top (measured at 100M events, 1.1M users, with the default 2Gi: a peak under 1 GB)."""
        return self.spill_after_bytes if self.spill_after_bytes is not None else self.max_call_bytes // 32


def _port(text: str) -> int:
    value = _integer(text)
    if not 0 <= value <= 65535:
        raise ValueError(f"{value} is not a port number (0-65535; 0 picks a free port)")
    return value


def _integer(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not an integer") from None


def _positive_int(text: str) -> int:
    value = _integer(text)
    if value < 1:
        raise ValueError(f"{value} must be at least 1")
    return value


def _writable_dir(text: str) -> str:
    path = text.strip()
    if not os.path.isdir(path):
        raise ValueError(f"{path!r} is not a directory")
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"{path!r} is not writable by this process")
    return path


def _seconds(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a number of seconds") from None
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{text!r} must be a finite number of seconds, 0 or more")
    return value


_BYTE_SUFFIXES = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "ki": 1 << 10, "mi": 1 << 20, "gi": 1 << 30}


def _bytes(text: str) -> int:
    """A byte count, plain or with a Kubernetes-style suffix (512Mi, 2Gi, 1G)."""
    number = text.strip().rstrip("KkMmGgi")
    suffix = text.strip()[len(number) :].lower()
    try:
        value = int(number) * _BYTE_SUFFIXES[suffix]
    except (ValueError, KeyError):
        raise ValueError(f"{text!r} is not a byte count (e.g. 1073741824, 512Mi, 2Gi)") from None
    if value < 1 << 20:
        raise ValueError(f"{text!r} is below the smallest useful limit, 1Mi")
    return value


def _readable_file(text: str) -> str:
    path = Path(text)
    try:
        with path.open("rb") as f:
            f.read(1)
    except OSError as exc:
        raise ValueError(f"cannot read {text}: {exc.strerror}") from None
    return text


def _log_level(text: str) -> str:
    if text.lower() not in ("debug", "info", "warning", "error"):
        raise ValueError(f"{text!r} is not one of debug, info, warning, error")
    return text.lower()


def _host(text: str) -> str:
    if not text.strip():
        raise ValueError("the address must not be empty")
    return text.strip()


@dataclass(frozen=True)
class Setting:
    """One setting: its flag, its environment variable and how its text is checked."""

    field: str
    flag: str | None
    env: str
    parse: Callable[[str], Any]
    help: str


SETTINGS = (
    Setting("host", "--host", "MUSIC_ANALYTICS_HOST", _host, "address to bind (default [::])"),
    Setting("grpc_port", "--port", "MUSIC_ANALYTICS_GRPC_PORT", _port, "gRPC port (default: the service's)"),
    Setting("metrics_port", "--metrics-port", "MUSIC_ANALYTICS_METRICS_PORT", _port, "Prometheus /metrics port"),
    Setting(
        "health_port",
        "--health-port",
        "MUSIC_ANALYTICS_HEALTH_PORT",
        _port,
        "also serve grpc.health.v1 alone, in plain text, on this port: for Kubernetes' gRPC probes, which "
        "cannot speak TLS (default: no such port)",
    ),
    Setting(
        "max_streams",
        "--max-streams",
        "MUSIC_ANALYTICS_MAX_STREAMS",
        _positive_int,
        "application calls served at once; more are refused with RESOURCE_EXHAUSTED (default 16). Health "
        "checks and reflection have threads of their own",
    ),
    Setting(
        "max_call_bytes",
        "--max-call-bytes",
        "MUSIC_ANALYTICS_MAX_CALL_BYTES",
        _bytes,
        "memory one call's state may hold (bytes, or 512Mi, 2Gi); past it the call gets RESOURCE_EXHAUSTED "
        "(default: half of MUSIC_ANALYTICS_MEMORY_LIMIT_BYTES when set, else 2Gi)",
    ),
    Setting(
        "spill_dir",
        "--spill-dir",
        "MUSIC_ANALYTICS_SPILL_DIR",
        _writable_dir,
        "where a call's state past its memory budget (--spill-after-bytes) is set aside on disk, in "
        "unnamed files gone when the call ends (default: the system's temporary directory, TMPDIR)",
    ),
    Setting(
        "spill_after_bytes",
        "--spill-after-bytes",
        "MUSIC_ANALYTICS_SPILL_AFTER_BYTES",
        _bytes,
        "what a call's counters and per-user lists may hold in memory before the rest is set aside in "
        "--spill-dir (bytes, or 256Mi; default: a thirty-second of the per-call limit)",
    ),
    Setting(
        "memory_limit_bytes",
        None,
        "MUSIC_ANALYTICS_MEMORY_LIMIT_BYTES",
        _bytes,
        "the container's memory limit (the chart sets it from limits.memory)",
    ),
    Setting("tls_cert", "--tls-cert", "MUSIC_ANALYTICS_TLS_CERT", _readable_file, "PEM certificate: serve TLS"),
    Setting("tls_key", "--tls-key", "MUSIC_ANALYTICS_TLS_KEY", _readable_file, "PEM private key of --tls-cert"),
    Setting(
        "tls_client_ca",
        "--tls-client-ca",
        "MUSIC_ANALYTICS_TLS_CLIENT_CA",
        _readable_file,
        "PEM CA certificates: require client certificates they signed (mutual TLS)",
    ),
    Setting(
        "grace_seconds",
        "--grace-seconds",
        "MUSIC_ANALYTICS_GRACE_SECONDS",
        _seconds,
        "how long in-flight calls may finish after SIGTERM (default 30)",
    ),
    Setting(
        "drain_seconds",
        None,
        "MUSIC_ANALYTICS_DRAIN_SECONDS",
        _seconds,
        "after SIGTERM and the shutdown delay, how long to wait for calls in flight (default 10)",
    ),
    Setting(
        "shutdown_delay_seconds",
        "--shutdown-delay-seconds",
        "MUSIC_ANALYTICS_SHUTDOWN_DELAY_SECONDS",
        _seconds,
        "after SIGTERM, keep accepting calls this long with health NOT_SERVING, so the cluster stops "
        "routing to us first (default 5)",
    ),
    Setting("log_level", "--log-level", "MUSIC_ANALYTICS_LOG_LEVEL", _log_level, "debug, info, warning or error"),
)
# Settings once read and now replaced: naming one is an error, not silently ignored.
RETIRED = {"MUSIC_ANALYTICS_WORKERS": "MUSIC_ANALYTICS_MAX_STREAMS (application calls at once)"}


@dataclass(frozen=True)
class ServerConfig:
    host: str = "[::]"
    grpc_port: int = 0
    metrics_port: int = 0
    health_port: int | None = None
    grace_seconds: float = 30.0
    drain_seconds: float = 10.0
    # Kubernetes removes a terminating pod from Endpoints asynchronously: kube-proxy rules, DNS
    # answers and clients' connection pools still send it new calls for a few seconds after
    # SIGTERM. Serving them (health NOT_SERVING) for this long turns them into answers, not errors.
    shutdown_delay_seconds: float = 5.0
    max_streams: int = 16
    max_call_bytes: int | None = None
    memory_limit_bytes: int | None = None
    spill_dir: str | None = None
    spill_after_bytes: int | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    max_message_bytes: int = MAX_MESSAGE_BYTES
    log_level: str = "info"

    @classmethod
    def from_env(cls, contract: ServiceContract, flags: dict[str, str | None] | None = None) -> ServerConfig:
        """Flags (None meaning unset) win over the environment, which wins over the defaults.

        Every value is checked here, before anything starts; a bad one raises ConfigError naming
        the flag or variable and what is wrong. Environment names carry a MUSIC_ANALYTICS_
        prefix: Kubernetes injects ``<SERVICE>_PORT`` variables of its own into every pod, which
        must never be mistaken for ours.
        """
        env = os.environ
        for name, replacement in RETIRED.items():
            if name in env:
                raise ConfigError(f"{name} is no longer read: use {replacement}")
        flags = flags or {}
        values: dict[str, Any] = {"grpc_port": contract.grpc_port, "metrics_port": contract.metrics_port}
        for setting in SETTINGS:
            text, source = flags.get(setting.field), setting.flag
            if text is None:
                text, source = env.get(setting.env), setting.env
            if text is None or (source == setting.env and text == ""):
                continue
            try:
                values[setting.field] = setting.parse(str(text))
            except ValueError as exc:
                raise ConfigError(f"{source}={text}: {exc}") from None
        config = cls(**values)
        config.check()
        return config

    def check(self) -> None:
        """The rules between settings."""
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("--tls-cert and --tls-key (MUSIC_ANALYTICS_TLS_CERT/_KEY) go together: set both")
        if self.tls_client_ca and not self.tls_cert:
            raise ConfigError("--tls-client-ca requires --tls-cert and --tls-key: client certificates need TLS")
        ports = [p for p in (self.grpc_port, self.metrics_port, self.health_port) if p]
        if len(ports) != len(set(ports)):
            raise ConfigError(
                f"the gRPC, metrics and health ports must differ: {self.grpc_port}, {self.metrics_port}, "
                f"{self.health_port}"
            )
        if self.tls_cert:
            _check_tls_files(self.tls_cert, self.tls_key, self.tls_client_ca)

    @property
    def call_limits(self) -> CallLimits:
        if self.max_call_bytes:
            limit, source = self.max_call_bytes, "--max-call-bytes / MUSIC_ANALYTICS_MAX_CALL_BYTES"
        elif self.memory_limit_bytes:
            limit = max(self.memory_limit_bytes // 2, 1 << 20)
            source = "half the container's memory limit (raise limits.memory, or set MUSIC_ANALYTICS_MAX_CALL_BYTES)"
        else:
            limit = DEFAULT_MAX_CALL_BYTES
            source = "the default (set --max-call-bytes / MUSIC_ANALYTICS_MAX_CALL_BYTES)"
        return CallLimits(limit, source, self.spill_dir, self.spill_after_bytes)

    def server_credentials(self) -> grpc.ServerCredentials | None:
        if not self.tls_cert:
            return None
        key, cert = Path(self.tls_key).read_bytes(), Path(self.tls_cert).read_bytes()  # type: ignore[arg-type]
        ca = Path(self.tls_client_ca).read_bytes() if self.tls_client_ca else None
        return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)


def _check_tls_files(cert: str, key: str | None, client_ca: str | None) -> None:
    """Load the PEM files as a TLS server would, so a wrong file fails now with its name.

    gRPC reads them only when the port is bound, and then reports a bad file as a bare
    "Failed to bind" with the reason buried in its C core's log.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"--tls-cert {cert} / --tls-key {key}: not a PEM certificate and its key ({exc})") from None
    if client_ca:
        try:
            context.load_verify_locations(cafile=client_ca)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"--tls-client-ca {client_ca}: not PEM CA certificates ({exc})") from None


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``serve`` command's flags; each overrides its MUSIC_ANALYTICS_* environment variable.

    Flags are taken as text and checked with the environment's values by ServerConfig.from_env,
    so a bad value reads the same whichever way it came.
    """
    # Here, beside the settings, and with the contract's names rather than the servicers: building
    # the command line (every `music-analytics` run does) then imports no server machinery.
    parser.add_argument("service", choices=tuple(SERVICES))
    for setting in SETTINGS:
        if setting.flag:
            parser.add_argument(
                setting.flag,
                dest=setting.field,
                default=None,
                metavar="VALUE",
                help=f"{setting.help} (env {setting.env})",
            )
