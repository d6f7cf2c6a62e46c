"""Starting the services as separate local processes: for `demo`, the tests and the benchmark."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from music_analytics.client.tls import ClientTls
from music_analytics.services.common.contract import SERVICES


def free_port(preferred: int | None = None) -> int:
    """``preferred`` if nothing listens there, else a free port the kernel picks."""
    if preferred:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", preferred))
                return preferred
            except OSError:
                pass
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _preferred_or_any(port: int) -> int:
    """``port`` if free now, else 0: the service then binds a port of the kernel's choosing
    itself, which no other process can take between our check and its bind."""
    return port if free_port(port) == port else 0


def _serving_line(log_path: Path, offset: int = 0) -> dict | None:
    """The service's "serving" log line (its ports), once it has written it past ``offset``: a
    log appended to by an earlier process holds that one's line, with ports long gone."""
    try:
        with log_path.open("rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except FileNotFoundError:
        return None
    for line in text.splitlines():
        if '"message": "serving"' in line:
            return json.loads(line)
    return None


@dataclass
class ServiceProcess:
    name: str
    grpc_port: int  # 0 until the service has announced the port it bound
    metrics_port: int
    process: subprocess.Popen
    log_path: Path
    host: str = "127.0.0.1"  # any loopback address: replicas on 127.0.0.2, .3 can share a port
    health_port: int | None = None  # the plaintext health-only port, if the service was given one
    tls: ClientTls | None = None  # how to reach the gRPC port when it speaks TLS
    log_offset: int = 0  # where this process's lines start in ``log_path``

    @property
    def address(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def wait_serving(self, timeout: float = 30.0) -> None:
        health_name = SERVICES[self.name].full_name
        deadline = time.monotonic() + timeout
        while True:
            serving = _serving_line(self.log_path, self.log_offset)
            if serving:
                self.grpc_port, self.metrics_port = serving["grpc_port"], serving["metrics_port"]
                self.health_port = serving.get("health_port")
                break
            if self.process.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-1000:]
                raise RuntimeError(f"{self.name} exited with code {self.process.returncode} while starting: {tail}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start within {timeout:g}s")
            time.sleep(0.02)
        if self.tls is None:
            channel = grpc.insecure_channel(self.address)
        else:
            channel = grpc.secure_channel(self.address, self.tls.credentials, self.tls.channel_options(None))
        with channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with code {self.process.returncode} while starting")
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(service=health_name), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} on {self.address} not SERVING after {timeout:g}s")
                time.sleep(0.05)

    def stop(self, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.wait_stopped(timeout)

    def wait_stopped(self, timeout: float = 30.0) -> int:
        """The exit code, once the process has stopped; killed if it takes over ``timeout``."""
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        return self.process.returncode


def start_service(
    name: str,
    log_path: Path,
    grpc_port: int = 0,
    metrics_port: int = 0,
    extra_env: dict[str, str] | None = None,
    shutdown_delay: float = 0.0,
    host: str = "127.0.0.1",
    extra_args: Sequence[str] = (),
    tls: ClientTls | None = None,
) -> ServiceProcess:
    """Start ``name`` as a process logging to ``log_path``; port 0 lets the service pick one.

    ``shutdown_delay`` is 0 by default: on loopback nothing routes to a process after it is told
    to stop, so waiting for endpoint removal (as a pod must) would only slow every stop down.
    ``extra_args`` go to ``serve`` as they are (``--tls-cert``, ``--health-port``...); ``tls`` is
    how ``wait_serving`` reaches a service that serves TLS.

    Call ``wait_serving()`` before using the ports.
    """
    log = open(log_path, "ab")  # noqa: SIM115 - handed to the child
    offset = log.tell()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "music_analytics.client",
            "serve",
            name,
            "--host",
            host,
            "--port",
            str(grpc_port),
            "--metrics-port",
            str(metrics_port),
            "--shutdown-delay-seconds",
            str(shutdown_delay),
            *extra_args,
        ],
        stdout=log,
        stderr=log,
        env=os.environ | (extra_env or {}),
    )
    log.close()
    return ServiceProcess(name, grpc_port, metrics_port, process, log_path, host, tls=tls, log_offset=offset)


class LocalServices:
    """N replicas of the streaming services and one Recommendation, as processes on loopback."""

    def __init__(self, replicas: int = 1, log_dir: Path | None = None, names: Iterable[str] = tuple(SERVICES)) -> None:
        self.processes: dict[str, list[ServiceProcess]] = {}
        self._replicas = replicas
        self._log_dir = log_dir
        self._names = tuple(names)

    def __enter__(self) -> LocalServices:
        self.start()
        return self

    def start(self) -> None:
        """Start every process and wait until each reports SERVING (stops them all on failure)."""
        try:
            for name in self._names:
                count = 1 if name == "recommendation" else self._replicas
                self.processes[name] = []
                for i in range(count):
                    # The first replica gets the well-known ports when they are free.
                    spec = SERVICES[name]
                    grpc_port = _preferred_or_any(spec.grpc_port) if i == 0 else 0
                    metrics_port = _preferred_or_any(spec.metrics_port) if i == 0 else 0
                    log = self._log_dir / f"{name}-{i}.log"
                    self.processes[name].append(start_service(name, log, grpc_port, metrics_port))
            for process in self.all():
                process.wait_serving()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def all(self) -> list[ServiceProcess]:
        return [p for group in self.processes.values() for p in group]

    def target(self, name: str) -> str:
        group = self.processes[name]
        if len(group) == 1:
            return group[0].address
        return "ipv4:" + ",".join(p.address for p in group)

    def stop(self) -> dict[str, int]:
        """SIGTERM every process at once (they drain in parallel), then wait for each."""
        for process in self.all():
            if process.process.poll() is None:
                process.process.send_signal(signal.SIGTERM)
        return {f"{p.name}:{p.grpc_port}": p.wait_stopped() for p in self.all()}
