"""gRPC targets to the list of replica addresses the client shards work across."""

from __future__ import annotations

import socket


class TargetError(ValueError):
    """A target the client cannot use; names the service and the target."""


def resolve(target: str) -> list[str]:
    """Addresses behind ``target``.

    ``host:port`` is one address (a ClusterIP Service balances connections itself);
    ``ipv4:a:p,b:p`` / ``ipv6:[a]:p,...`` list replicas explicitly; ``dns:///name:port``
    resolves every A/AAAA record, as a headless Service publishes one per ready pod.
    """
    target = target.strip()
    if not target:
        raise TargetError("empty target")
    if target.startswith(("ipv4:", "ipv6:")):
        addresses = [a.strip() for a in target.split(":", 1)[1].split(",") if a.strip()]
        if not addresses:
            raise TargetError(f"{target!r} lists no address")
        for a in addresses:
            _split_host_port(a, target)
        return addresses
    if target.startswith("dns:"):
        rest = target[4:]
        if rest.startswith("//"):
            rest = rest[2:].split("/", 1)[1] if "/" in rest[2:] else ""
        host, port = _split_host_port(rest, target)
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise TargetError(f"cannot resolve {host!r} from {target!r}: {exc.strerror}") from None
        seen: list[str] = []
        for family, _, _, _, sockaddr in infos:
            address = f"[{sockaddr[0]}]:{port}" if family == socket.AF_INET6 else f"{sockaddr[0]}:{port}"
            if address not in seen:
                seen.append(address)
        return sorted(seen)
    if target.startswith("unix:"):
        return [target]
    _split_host_port(target, target)
    return [target]


def _split_host_port(address: str, target: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise TargetError(f"{target!r}: expected HOST:PORT, got {address!r}")
    return host.strip("[]"), int(port)
