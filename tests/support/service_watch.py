"""Watching running service processes from outside: health probes and resident memory."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def rss_kib(pid: int) -> int:
    """Resident set size of process ``pid`` in KiB, as the kernel reports it (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise LookupError(f"no VmRSS for pid {pid} (a zombie has none)")


@dataclass
class ProbeFailure:
    replica: str
    seconds: float  # since probing started
    error: str


@dataclass
class _Probe:
    replica: str
    address: str
    health_name: str
    excluded: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    checks: int = 0
    slowest: float = 0.0


class HealthProber:
    """Asks grpc.health.v1.Health/Check of every watched replica every ``period`` seconds, each
    call with a ``deadline``, as a Kubernetes gRPC probe would, and records every answer that is
    not SERVING in time.

    One thread per replica, so one slow replica does not delay the checks of the others. A
    replica about to be signalled is ``exclude``d first: a check that ends after that moment is
    not counted (its failure would be the signal's doing, which is the point of the signal).
    """

    def __init__(self, period: float = 0.25, deadline: float = 1.0) -> None:
        self.period = period
        self.deadline = deadline
        self.failures: list[ProbeFailure] = []
        self._probes: dict[str, _Probe] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._started = time.monotonic()

    def watch(self, replica: str, address: str, health_name: str) -> None:
        """Start probing ``address`` for ``health_name``'s status; ``replica`` names it in failures."""
        probe = _Probe(replica, address, health_name)
        probe.thread = threading.Thread(target=self._run, args=(probe,), daemon=True, name=f"probe-{replica}")
        self._probes[replica] = probe
        probe.thread.start()

    def exclude(self, replica: str) -> None:
        """Stop counting ``replica``'s checks from now on (call it before signalling the replica)."""
        self._probes[replica].excluded.set()

    @property
    def checks(self) -> int:
        with self._lock:
            return sum(p.checks for p in self._probes.values())

    def slowest(self) -> dict[str, float]:
        """The longest a counted check took, by replica (seconds)."""
        with self._lock:
            return {name: round(p.slowest, 3) for name, p in self._probes.items()}

    def stop(self) -> None:
        self._stop.set()
        for probe in self._probes.values():
            probe.thread.join(self.deadline + 5)

    def _run(self, probe: _Probe) -> None:
        request = health_pb2.HealthCheckRequest(service=probe.health_name)
        with grpc.insecure_channel(probe.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            next_check = time.monotonic()
            while not (self._stop.is_set() or probe.excluded.is_set()):
                start = time.monotonic()
                try:
                    status = stub.Check(request, timeout=self.deadline).status
                    error = "" if status == health_pb2.HealthCheckResponse.SERVING else (
                        health_pb2.HealthCheckResponse.ServingStatus.Name(status)
                    )  # fmt: skip
                except grpc.RpcError as exc:
                    error = f"{exc.code().name}: {exc.details()}"
                took = time.monotonic() - start
                if probe.excluded.is_set():
                    return
                with self._lock:
                    probe.checks += 1
                    probe.slowest = max(probe.slowest, took)
                    if error:
                        failure = ProbeFailure(probe.replica, round(start - self._started, 3), error)
                        self.failures.append(failure)
                next_check = max(next_check + self.period, time.monotonic())
                self._stop.wait(next_check - time.monotonic())
