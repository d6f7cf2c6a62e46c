"""gRPC targets to the list of replica addresses the client shards work across."""

from __future__ import annotations

import socket
from dataclasses import dataclass


class TargetError(ValueError):
    """A target the client cannot use however long it waits (bad syntax); names the target."""


class ResolutionError(Exception):
    """A well-formed target that resolves to no address now; it may later (a headless Service
    lists a pod only once it is Ready)."""


@dataclass(frozen=True)
class Target:
    """A parsed target. ``dynamic`` targets (``dns:``) are resolved anew whenever asked, so
    replicas that become Ready later are found."""

    text: str
    addresses: tuple[str, ...] = ()  # fixed addresses (ipv4:/ipv6:/host:port/unix:)
    host: str = ""  # the name to resolve, for dns: targets
    port: int = 0

    @property
    def dynamic(self) -> bool:
        return bool(self.host)

    def resolve(self) -> list[str]:
        """The addresses behind the target now; raises ResolutionError if a name resolves to none."""
        if not self.dynamic:
            return list(self.addresses)
        try:
            infos = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise ResolutionError(f"{self.text!r} resolves to no address ({exc.strerror})") from None
        seen: list[str] = []
        for family, _, _, _, sockaddr in infos:
            address = f"[{sockaddr[0]}]:{self.port}" if family == socket.AF_INET6 else f"{sockaddr[0]}:{self.port}"
            if address not in seen:
                seen.append(address)
        return sorted(seen)


def parse_target(target: str) -> Target:
    """Check ``target``'s syntax; raises TargetError.

    ``host:port`` is one address (a ClusterIP Service balances connections itself);
    ``ipv4:a:p,b:p`` / ``ipv6:[a]:p,...`` list replicas explicitly; ``dns:///name:port``
    resolves every A/AAAA record, as a headless Service publishes one per ready pod.
    """
    text = target.strip()
    if not text:
        raise TargetError("empty target")
    if text.startswith(("ipv4:", "ipv6:")):
        addresses = [a.strip() for a in text.split(":", 1)[1].split(",") if a.strip()]
        if not addresses:
            raise TargetError(f"{text!r} lists no address")
        for a in addresses:
            _split_host_port(a, text)
        return Target(text, addresses=tuple(addresses))
    if text.startswith("dns:"):
        rest = text[4:]
        if rest.startswith("//"):
            rest = rest[2:].split("/", 1)[1] if "/" in rest[2:] else ""
        host, port = _split_host_port(rest, text)
        return Target(text, host=host, port=port)
    if text.startswith("unix:"):
        return Target(text, addresses=(text,))
    _split_host_port(text, text)
    return Target(text, addresses=(text,))


def _split_host_port(address: str, target: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise TargetError(f"{target!r}: expected HOST:PORT, got {address!r}")
    return host.strip("[]"), int(port)
