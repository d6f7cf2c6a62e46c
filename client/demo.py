"""Starting the services as separate local processes: for `demo`, the tests and the benchmark."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from music_analytics.services.registry import SERVICES


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


@dataclass
class ServiceProcess:
    name: str
    grpc_port: int
    metrics_port: int
    process: subprocess.Popen

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def wait_serving(self, timeout: float = 30.0) -> None:
        health_name = SERVICES[self.name].full_name
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"{self.name} exited with code {self.process.returncode} while starting"
                    )
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
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_service(
    name: str,
    grpc_port: int | None = None,
    metrics_port: int | None = None,
    log_path: Path | None = None,
    extra_env: dict[str, str] | None = None,
) -> ServiceProcess:
    spec = SERVICES[name]
    grpc_port = grpc_port or free_port(spec.grpc_port)
    metrics_port = metrics_port or free_port(spec.metrics_port)
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115 - owned by the child
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "music_analytics.client",
            "serve",
            name,
            "--host",
            "127.0.0.1",
            "--port",
            str(grpc_port),
            "--metrics-port",
            str(metrics_port),
        ],
        stdout=log,
        stderr=log,
        env=os.environ | (extra_env or {}),
    )
    return ServiceProcess(name, grpc_port, metrics_port, process)


class LocalServices:
    """N replicas of the streaming services and one Recommendation, as processes on loopback."""

    def __init__(
        self, replicas: int = 1, log_dir: Path | None = None, names: Iterable[str] = tuple(SERVICES)
    ) -> None:
        self.processes: dict[str, list[ServiceProcess]] = {}
        self._replicas = replicas
        self._log_dir = log_dir
        self._names = tuple(names)

    def __enter__(self) -> LocalServices:
        try:
            for name in self._names:
                count = 1 if name == "recommendation" else self._replicas
                self.processes[name] = []
                for i in range(count):
                    log = self._log_dir / f"{name}-{i}.log" if self._log_dir else None
                    # The first replica gets the well-known port when it is free.
                    grpc_port = free_port(SERVICES[name].grpc_port if i == 0 else None)
                    metrics_port = free_port(SERVICES[name].metrics_port if i == 0 else None)
                    self.processes[name].append(start_service(name, grpc_port, metrics_port, log))
            for process in self.all():
                process.wait_serving()
        except BaseException:
            self.stop()
            raise
        return self

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
        for process in self.all():
            if process.process.poll() is None:
                process.process.send_signal(signal.SIGTERM)
        return {f"{p.name}:{p.grpc_port}": p.stop() for p in self.all()}
