"""TLS for the client's channels: the CA that signed the services' certificates, optionally the
client's own certificate and key (mutual TLS), and the name to check in the services' certificates.

The files are checked before any service is contacted, so a wrong path or a file that holds no
certificate is one clear error (exit 2) rather than every service failing its handshake.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

# grpc and ssl are imported where they are used: the command line reads this module's flags
# (run --help, every run without TLS), which need neither.
if TYPE_CHECKING:
    import grpc

__all__ = ["CA", "CERT", "KEY", "SERVER_NAME", "ClientTls", "TlsOption", "TlsSettingError", "load_client_tls"]


class TlsSettingError(ValueError):
    """A TLS setting the client cannot use; the message names the flag (or variable) and file."""


@dataclass(frozen=True)
class TlsOption:
    """One TLS setting of ``run``: its flag and the environment variable it falls back to."""

    flag: str
    env: str
    help: str


CA = TlsOption(
    "--tls-ca",
    "MUSIC_ANALYTICS_TLS_CA",
    "PEM CA certificate(s) that signed the services' certificates: talk TLS to every service",
)
# Not MUSIC_ANALYTICS_TLS_CERT/KEY: those are a service's own certificate, and `demo` passes its
# environment on to the services it starts.
CERT = TlsOption(
    "--tls-cert",
    "MUSIC_ANALYTICS_CLIENT_TLS_CERT",
    "PEM client certificate, for services that require one (mutual TLS); needs --tls-key and --tls-ca",
)
KEY = TlsOption("--tls-key", "MUSIC_ANALYTICS_CLIENT_TLS_KEY", "PEM private key of --tls-cert (not encrypted)")
SERVER_NAME = TlsOption(
    "--tls-server-name",
    "MUSIC_ANALYTICS_TLS_SERVER_NAME",
    "the name to check in the services' certificates instead of the target's host name (for ipv4:/ipv6: "
    "targets and any address a certificate does not name); needs --tls-ca",
)


@dataclass(frozen=True)
class ClientTls:
    """The client's TLS, checked: PEM bytes as gRPC takes them (no client certificate: plain TLS)."""

    root_certificates: bytes
    certificate_chain: bytes | None = None
    private_key: bytes | None = None
    server_name: str | None = None

    @cached_property
    def credentials(self) -> grpc.ChannelCredentials:
        """One credentials object for every channel (made once: it holds the parsed certificates)."""
        import grpc

        return grpc.ssl_channel_credentials(self.root_certificates, self.private_key, self.certificate_chain)

    def channel_options(self, dialled_name: str | None) -> list[tuple[str, str]]:
        """Options of a channel to one replica. ``dialled_name`` is the name the target gave
        before the client resolved it to this replica's address (``dns:`` targets): that name,
        not the pod's IP, is what a service certificate names, so it is the one checked unless
        --tls-server-name says otherwise."""
        name = self.server_name or dialled_name
        return [("grpc.ssl_target_name_override", name)] if name else []


def load_client_tls(ca: str | None, cert: str | None, key: str | None, server_name: str | None) -> ClientTls | None:
    """The client's TLS from the flags' values (None: unset, then the environment is read);
    None means plaintext. Raises TlsSettingError naming the flag or variable and the file."""
    ca_path, ca_from = _given(ca, CA)
    cert_path, cert_from = _given(cert, CERT)
    key_path, key_from = _given(key, KEY)
    name, name_from = _given(server_name, SERVER_NAME)
    if ca_path is None:
        for path, source in ((cert_path, cert_from), (key_path, key_from), (name, name_from)):
            if path is not None:
                raise TlsSettingError(f"{source} needs {CA.flag} (the CA that signed the services' certificates)")
        return None
    if (cert_path is None) != (key_path is None):
        given, missing = (cert_from, KEY.flag) if key_path is None else (key_from, CERT.flag)
        raise TlsSettingError(f"{given} needs {missing}: a client certificate goes with its private key")
    if name is not None and not name.strip():
        raise TlsSettingError(f"{name_from}: the server name must not be empty")
    roots = _certificates(ca_path, ca_from)
    chain = private_key = None
    if cert_path is not None and key_path is not None:
        chain = _certificates(cert_path, cert_from)
        private_key = _private_key(key_path, key_from)
        _check_pair(cert_path, cert_from, key_path, key_from)
    return ClientTls(roots, chain, private_key, name.strip() if name else None)


def _given(value: str | None, option: TlsOption) -> tuple[str | None, str]:
    """The value and where it came from, as an error message should name it."""
    if value is not None:
        return value, option.flag
    from_env = os.environ.get(option.env)
    # An empty variable is how a chart leaves a setting off.
    return (from_env or None), option.env


def _read(path: str, source: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise TlsSettingError(f"{source} {path}: cannot read it: {exc.strerror}") from None


def _certificates(path: str, source: str) -> bytes:
    import ssl

    pem = _read(path, source)
    if b"-----BEGIN CERTIFICATE-----" not in pem:
        raise TlsSettingError(f"{source} {path}: no PEM certificate in it (expected -----BEGIN CERTIFICATE-----)")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=pem.decode("ascii"))
    except (ssl.SSLError, ValueError, UnicodeDecodeError) as exc:
        raise TlsSettingError(f"{source} {path}: not a valid PEM certificate ({_reason(exc)})") from None
    return pem


def _private_key(path: str, source: str) -> bytes:
    pem = _read(path, source)
    if b"ENCRYPTED" in pem:
        raise TlsSettingError(f"{source} {path}: the private key is encrypted; gRPC needs it unencrypted")
    if b"PRIVATE KEY-----" not in pem:
        raise TlsSettingError(f"{source} {path}: no PEM private key in it (expected -----BEGIN ... PRIVATE KEY-----)")
    return pem


def _check_pair(cert_path: str, cert_from: str, key_path: str, key_from: str) -> None:
    import ssl

    try:
        # A password callback, so OpenSSL never stops to prompt on the terminal.
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(cert_path, key_path, password=lambda: b"")
    except ssl.SSLError as exc:
        raise TlsSettingError(
            f"{key_from} {key_path}: not a usable private key for the certificate in {cert_from} {cert_path} "
            f"({_reason(exc)})"
        ) from None


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason).lower().replace("_", " ") if reason else str(exc)
