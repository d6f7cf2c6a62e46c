"""The replicas of one service: found from its target, health-checked, found anew as they change.

In Kubernetes the client addresses each service through its headless Service, whose DNS name
lists only Ready pods. At the start of a run that list can be empty or short (the Job starts
with the Deployments), and during a run it changes (a rolling restart replaces every pod). So a
name that does not resolve yet is waited for, not an error, and a lost replica's work goes to
whatever replicas the name lists at that moment.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from music_analytics.client.targets import ResolutionError, Target
from music_analytics.client.tls import CA, CERT, KEY, SERVER_NAME, ClientTls
from music_analytics.services.common.contract import BUSY_DETAILS_PREFIX, MAX_MESSAGE_BYTES, ServiceContract

log = logging.getLogger(__name__)

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # The client polls services it waits for. gRPC's default reconnect backoff grows to 120 s, so
    # a service that comes up late in a long wait would go unnoticed for a good part of it.
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 1000),
]
# Codes that mean "this replica is gone", as opposed to "this request is wrong".
REPLICA_LOST = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED}
# How often a wait says what it is still waiting for.
REPORT_EVERY_SECONDS = 5.0


T = TypeVar("T")


class ServiceError(Exception):
    """A service is unreachable, lost every replica, or refused our requests. Exit code 1."""


class CallOverLimitError(ServiceError):
    """A service refused one call as larger than it may hold (RESOURCE_EXHAUSTED, not busy):
    asking again, of this replica or another, would be refused the same way."""


@dataclass(frozen=True)
class ServiceInfo:
    name: str
    health_name: str
    method: str
    columns: tuple[str, ...] = ()  # the event columns the service reads

    @classmethod
    def of(cls, contract: ServiceContract, columns: tuple[str, ...] = ()) -> ServiceInfo:
        """The client's view of a service of the contract: the service's own name is its health name."""
        return cls(contract.name, contract.full_name, contract.method, columns)


class Endpoint:
    """One replica's address and channel; ``alive`` once it answered SERVING, until it fails."""

    def __init__(
        self, service: ServiceInfo, address: str, tls: ClientTls | None = None, dialled_name: str | None = None
    ) -> None:
        self.service = service
        self.address = address
        self.tls = tls
        if tls is None:
            self.channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
        else:
            options = CHANNEL_OPTIONS + tls.channel_options(dialled_name)
            self.channel = grpc.secure_channel(address, tls.credentials, options=options)
        # The name the service's certificate must hold, for saying so when it does not.
        self.checked_name = (tls.server_name if tls else None) or dialled_name or address.rpartition(":")[0].strip("[]")
        self.alive = False
        self.status = "not checked yet"

    def check(self, timeout: float) -> bool:
        """Ask the replica's health once; sets and returns ``alive``.

        Not wait_for_ready: a replica that cannot be reached answers at once with why (nothing
        listening, a failed TLS handshake), which the caller's next poll retries; waiting for
        readiness instead would only ever report DEADLINE_EXCEEDED.
        """
        stub = health_pb2_grpc.HealthStub(self.channel)
        timeout = max(timeout, 0.05)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=self.service.health_name), timeout=timeout)
            self.status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            self.alive = reply.status == health_pb2.HealthCheckResponse.SERVING
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                self.status = f"DEADLINE_EXCEEDED: no answer to a health check within {timeout:.2g}s"
            else:
                self.status = unreachable_reason(exc, self.tls, self.checked_name)
            self.alive = False
        return self.alive

    def close(self) -> None:
        self.channel.close()


class Replicas:
    """Every replica the target has listed so far, by address."""

    def __init__(self, service: ServiceInfo, target: Target, tls: ClientTls | None = None) -> None:
        self.service = service
        self.target = target
        self.tls = tls
        self.endpoints: dict[str, Endpoint] = {}
        self._unresolved = ""  # why the last resolution found nothing, if it did
        self._turn = 0

    def refresh(self) -> None:
        """Resolve the target again and add the replicas it lists now (a removed one stays known:
        its failed calls say so, and it may come back)."""
        try:
            addresses = self.target.resolve()
        except ResolutionError as exc:
            self._unresolved = str(exc)
            return
        self._unresolved = ""
        for address in addresses:
            if address not in self.endpoints:
                dialled = self.target.host if self.target.dynamic else None
                self.endpoints[address] = Endpoint(self.service, address, self.tls, dialled)

    def live(self) -> list[Endpoint]:
        return [e for _, e in sorted(self.endpoints.items()) if e.alive]

    def waiting_for(self, expected: int | None) -> str:
        """What a wait is still waiting for, in words."""
        if not self.endpoints:
            why = self._unresolved or f"{self.target.text!r}: no address yet"
            hint = " (a headless Service lists a pod only once it is Ready)" if self.target.dynamic else ""
            return f"{why}{hint}"
        want = expected or len(self.endpoints)
        not_serving = "; ".join(f"{e.address}: {e.status}" for _, e in sorted(self.endpoints.items()) if not e.alive)
        return f"{len(self.live())} of {want} replica(s) SERVING" + (f"; {not_serving}" if not_serving else "")

    def wait(self, deadline: float, expected: int | None = None) -> list[Endpoint]:
        """Wait until ``expected`` replicas serve (None: every listed one, at least one), or the
        deadline (``time.monotonic()``); then go on with the serving ones if any serve.

        Raises ServiceError naming what it waited for when none serves by the deadline.
        """
        started = time.monotonic()
        report_at = started + REPORT_EVERY_SECONDS
        while True:
            self.refresh()
            for endpoint in self.endpoints.values():
                if not endpoint.alive:
                    endpoint.check(min(1.0, deadline - time.monotonic()))
            live = self.live()
            want = expected or max(len(self.endpoints), 1)
            if len(live) >= want:
                return live
            now = time.monotonic()
            if now >= deadline:
                if live:
                    log.warning(
                        "going on with the replicas that serve",
                        extra={"service": self.service.name, "detail": self.waiting_for(expected)},
                    )
                    return live
                raise ServiceError(
                    f"{self.service.name}: not serving after {now - started:.0f}s: {self.waiting_for(expected)}"
                )
            if now >= report_at:
                log.warning(
                    "waiting for replicas", extra={"service": self.service.name, "detail": self.waiting_for(expected)}
                )
                report_at = now + REPORT_EVERY_SECONDS
            time.sleep(min(0.25, max(deadline - now, 0.0)))

    def pick(self, wait: float) -> Endpoint:
        """A serving replica to take over a lost replica's work, taking turns among them.

        The target is resolved again first, so pods that became Ready during the run (a rolling
        restart's new pods, a scale-up) are used. Waits up to ``wait`` seconds for one.
        """
        deadline = time.monotonic() + wait
        while True:
            self.refresh()
            # Known-good replicas first; then the others (behind one ClusterIP address, a new
            # connection may reach another pod; a restarted pod may answer again).
            for endpoint in self.live() + [e for _, e in sorted(self.endpoints.items()) if not e.alive]:
                if endpoint.check(min(2.0, max(deadline - time.monotonic(), 0.05))):
                    live = self.live()
                    self._turn += 1
                    return live[self._turn % len(live)]
            if time.monotonic() >= deadline:
                raise ServiceError(
                    f"{self.service.name}: every replica is unreachable after {wait:g}s: {self.waiting_for(None)}"
                )
            time.sleep(0.25)

    def close(self) -> None:
        for endpoint in self.endpoints.values():
            endpoint.close()


def describe(exc: BaseException | None) -> str:
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        return f"{exc.code().name}: {exc.details()}"
    return repr(exc)


def unreachable_reason(exc: grpc.RpcError, tls: ClientTls | None = None, checked_name: str = "") -> str:
    """Why a replica did not answer, in words: gRPC's text buries the one fact that matters (a
    refused connection, a certificate that does not verify) under "failed to connect to all
    addresses", and a closed connection means something only next to how the client connected."""
    details = exc.details() or ""
    if "Connection refused" in details:
        return "nothing listening there (connection refused)"
    if "before receiving SETTINGS frame" in details:
        return "connections are accepted but nothing answers gRPC on them (no HTTP/2 SETTINGS frame)"
    if "CERTIFICATE_VERIFY_FAILED" in details:
        why = details.split("CERTIFICATE_VERIFY_FAILED:", 1)[1].split(":", 1)[0].strip()
        return f"TLS handshake failed: the service's certificate does not verify against {CA.flag} ({why})"
    if "Hostname Verification Check failed" in details:
        return (
            f"TLS handshake failed: the service's certificate does not name {checked_name!r} "
            f"(the host dialled, or {SERVER_NAME.flag})"
        )
    if "Socket closed" in details:
        if tls is None:
            return (
                "the service closed the connection without answering (a service that serves TLS does that to a "
                f"plaintext client: give {CA.flag})"
            )
        if tls.certificate_chain is None:
            return (
                "the service closed the connection after the TLS handshake (a service that requires client "
                f"certificates does that: give {CERT.flag} and {KEY.flag})"
            )
        return (
            "the service closed the connection after the TLS handshake (a service that does not trust the CA "
            f"that signed {CERT.flag} does that)"
        )
    return f"{exc.code().name}: {details}"


def replica_lost(exc: BaseException | None) -> bool:
    return isinstance(exc, grpc.RpcError) and hasattr(exc, "code") and exc.code() in REPLICA_LOST


def replica_busy(exc: BaseException | None) -> bool:
    """The replica refused the call for capacity (all its slots taken): worth retrying later."""
    return (
        isinstance(exc, grpc.RpcError)
        and hasattr(exc, "code")
        and exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        and (exc.details() or "").startswith(BUSY_DETAILS_PREFIX)
    )


class BusyBackoff:
    """Waits between retries of calls refused as busy, until ``wait`` seconds have passed.

    A busy replica is healthy: the call is retried (on whichever replica is picked next) after
    a growing pause, instead of failing a run that would fit a moment later.
    """

    def __init__(self, service: str, wait: float) -> None:
        self.service = service
        self.deadline = time.monotonic() + wait
        self.wait = wait
        self._pause = 0.2

    def pause(self, exc: BaseException) -> None:
        """Sleep before the next retry; raises ServiceError once the wait is over."""
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise ServiceError(f"{self.service}: every replica stayed busy for {self.wait:g}s: {describe(exc)}")
        log.warning("replica busy; retrying", extra={"service": self.service, "detail": describe(exc)})
        time.sleep(min(self._pause, remaining))
        self._pause = min(self._pause * 2, 2.0)


def ask_one_replica(replicas: Replicas, wait: float, ask: Callable[[Endpoint, str], T]) -> T:
    """``ask(endpoint, source)`` of one replica, for a call that holds no state worth keeping: a
    lost replica's call is asked again of another, as many times as there are replicas and a few
    more, and a busy one's again later. ``source`` names the replica for messages.

    Raises ServiceError naming the replica when a call fails for good (``ask`` cancels its call
    before it lets a ServiceError of its own through).
    """
    errors: list[str] = []
    busy = BusyBackoff(replicas.service.name, wait)
    while len(errors) < 3 * max(len(replicas.endpoints), 1):
        endpoint = replicas.pick(wait)
        source = f"{replicas.service.name} at {endpoint.address}"
        try:
            return ask(endpoint, source)
        except grpc.RpcError as exc:
            if replica_busy(exc):
                busy.pause(exc)
                continue
            if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise CallOverLimitError(f"{source} refused the call: {describe(exc)}") from None
            if not replica_lost(exc):
                raise ServiceError(f"{source} failed: {describe(exc)}") from None
            endpoint.alive = False
            errors.append(f"{endpoint.address}: {describe(exc)}")
    raise ServiceError(f"{replicas.service.name}: gave up after {len(errors)} failed calls ({'; '.join(errors)})")
