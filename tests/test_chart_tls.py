"""The chart with TLS on: rendered by Helm's own engine, checked against Kubernetes' schemas and
cert-manager's Certificate schema (vendored in tests/schemas/), then run.

Static checks: the Certificate names every host a client of the chart dials, the probes use the
plaintext health port that no Service exposes and no pod may reach, the Secret is mounted
read-only with only the keys each pod uses, the services get their certificate through the
environment and the Job and the helm test pods through flags. Contradictory TLS values fail the
render with a message saying what to set.

Then the rendered containers run as local processes over TLS with client certificates (mTLS),
with a CA and a certificate issued here from the rendered Certificate (as cert-manager would):
the probes' health port answers in plaintext, the TLS port refuses plaintext and clients
without a certificate, the helm test command and the pipeline Job complete over mTLS.
"""

from __future__ import annotations

import copy
import datetime
import ipaddress
import json
import re
import shlex
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2

from music_analytics.client.demo import free_port
from music_analytics.services.common.contract import SERVICES
from tests.support.chart import (
    CHART,
    COMPONENTS,
    KUBE_VERSIONS,
    MONITORING_APIS,
    MONITORING_NS,
    NAMESPACE,
    OWN_NS,
    RELEASE,
    REVISION,
    allowed,
    assert_restricted,
    by_kind,
    chart,
    deployment_for,
    env_of,
    hooks,
    job_args,
    one,
    pipeline_job,
    pod_specs,
    render_docs,
    selects,
)
from tests.support.rendered_pods import (
    container_env,
    health_status,
    map_paths,
    mount_volumes,
    run_job_container,
    serving_line,
    wait_probe_serving,
)

ROOT = Path(__file__).resolve().parent.parent
CERT_MANAGER_SCHEMA = ROOT / "tests" / "schemas" / "cert-manager-v1.16.5-certificate.json"
TLS_DIR = "/etc/music-analytics/tls"
SECRET = "analytics-tls"
ISSUER = {"name": "internal-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}
VALUE_SETS: dict[str, dict[str, Any]] = {
    "secret": {"tls": {"enabled": True, "secretName": SECRET}},
    "secret-mtls": {"tls": {"enabled": True, "secretName": SECRET, "clientAuth": True}},
    "issuer": {"tls": {"enabled": True, "certManager": {"issuerRef": ISSUER}}},
    "issuer-mtls": {
        "tls": {"enabled": True, "clientAuth": True, "secretName": SECRET, "certManager": {"issuerRef": ISSUER}}
    },
}
HEALTH_PORTS = {"mapreduce": 50052, "userbehavior": 50054, "recommendation": 50056}


def rendered(name: str) -> list[dict[str, Any]]:
    return render_docs(copy.deepcopy(VALUE_SETS[name]))


def client_auth(name: str) -> bool:
    return bool(VALUE_SETS[name]["tls"].get("clientAuth"))


def secret_name(name: str) -> str:
    return VALUE_SETS[name]["tls"].get("secretName") or f"{RELEASE}-music-analytics-tls"


def notes(values: dict[str, Any]) -> str:
    return chart().render(values, name=RELEASE, namespace=NAMESPACE, revision=REVISION)[
        "music-analytics/templates/NOTES.txt"
    ]


def tls_volume(pod: dict[str, Any], container: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """The pod's TLS Secret volume and, for the container's read-only mount of it, path -> key."""
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == TLS_DIR]
    assert mount["readOnly"] is True
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    files = {f"{TLS_DIR}/{item['path']}": item["key"] for item in volume["secret"]["items"]}
    return volume, files


# ---------------------------------------------------------------- schemas


@pytest.mark.parametrize("kube", KUBE_VERSIONS)
@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_tls_manifests_valid_for_kubernetes(name: str, kube: str):
    docs = rendered(name)
    kinds = {d["kind"] for d in docs}
    assert ("Certificate" in kinds) == name.startswith("issuer")
    for doc in docs:
        if doc["kind"] != "Certificate":
            kubernetes_validate.validate(doc, kube, strict=True)


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_tls_values_lint_clean(name: str):
    for kube in KUBE_VERSIONS:
        report = helm.lint(CHART, VALUE_SETS[name], strict=True, namespace=NAMESPACE, kube_version=f"v{kube}.0")
        problems = [m for m in report["messages"] if m["severity"] >= 2] + report.get("errors", [])
        assert not problems, f"{name} on {kube}: {problems}"


def strict_schema(node: Any) -> Any:
    """cert-manager's schema as the API server applies it with strict field validation (kubectl's
    and Helm's default): a field the schema does not declare is an error, not pruned."""
    if isinstance(node, dict):
        out = {k: strict_schema(v) for k, v in node.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [strict_schema(v) for v in node]
    return node


def certificate_validator() -> jsonschema.Draft4Validator:
    schema = strict_schema(json.loads(CERT_MANAGER_SCHEMA.read_text()))
    schema["properties"]["metadata"] = {"type": "object"}  # ObjectMeta: checked by the API server itself
    return jsonschema.Draft4Validator(schema)


@pytest.mark.parametrize("name", ["issuer", "issuer-mtls"])
def test_certificate_valid_for_cert_manager(name: str):
    (cert,) = by_kind(rendered(name), "Certificate")
    assert cert["apiVersion"] == "cert-manager.io/v1"
    errors = sorted(certificate_validator().iter_errors(cert), key=str)
    assert not errors, "\n".join(e.message for e in errors)
    assert cert["spec"]["issuerRef"] == ISSUER
    assert cert["spec"]["secretName"] == secret_name(name)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("spec", "usages"), ["server-auth"]),  # cert-manager spells it "server auth"
        (("spec", "dnsName"), ["x"]),  # a typo
        (("spec", "issuerRef"), {"kind": "ClusterIssuer"}),  # no name
        (("spec", "privateKey", "algorithm"), "DSA"),
    ],
)
def test_certificate_schema_catches_mistakes(path: tuple[str, ...], value: Any):
    """The vendored schema is not a rubber stamp: what cert-manager would refuse, it refuses."""
    (cert,) = by_kind(rendered("issuer"), "Certificate")
    node = cert
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert list(certificate_validator().iter_errors(cert))


@pytest.mark.parametrize("name", ["issuer", "issuer-mtls"])
def test_certificate_names_every_host_a_client_dials(name: str):
    docs = rendered(name)
    (cert,) = by_kind(docs, "Certificate")
    names = cert["spec"]["dnsNames"]
    assert len(names) == len(set(names))
    # Server auth for the services, client auth for the Job and the test pods under mTLS.
    assert {"server auth", "client auth"} <= set(cert["spec"]["usages"])
    dialled = []
    for component in COMPONENTS:
        target = job_args(pipeline_job(docs))[f"--{component}"]
        dialled.append(target.removeprefix("dns:///").rsplit(":", 1)[0])
    for pod in hooks(docs, "test"):
        dialled.append(pod["spec"]["containers"][0]["args"][0].rsplit(":", 1)[0])
    dialled += re.findall(r"-authority (\S+)", notes(VALUE_SETS[name]))
    assert len(dialled) == 8
    assert not set(dialled) - set(names), sorted(set(dialled) - set(names))
    # Every Service of the release, in every form a client in the cluster may use; nothing else.
    expected = set()
    for svc in by_kind(docs, "Service"):
        host = svc["metadata"]["name"]
        expected |= {host, f"{host}.{NAMESPACE}", f"{host}.{NAMESPACE}.svc", f"{host}.{NAMESPACE}.svc.cluster.local"}
    assert set(names) == expected
    assert len(by_kind(docs, "Service")) == 2 * len(COMPONENTS)


def test_certificate_follows_the_release_namespace_and_cluster_domain():
    values = copy.deepcopy(VALUE_SETS["issuer"]) | {"clusterDomain": "corp.example"}
    docs = render_docs(values, namespace="other")
    (cert,) = by_kind(docs, "Certificate")
    target = job_args(pipeline_job(docs))["--mapreduce"].removeprefix("dns:///").rsplit(":", 1)[0]
    assert target.endswith(".other.svc.corp.example") and target in cert["spec"]["dnsNames"]


# ---------------------------------------------------------------- services, Job, test pods


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_probes_use_the_plain_health_port(name: str):
    docs = rendered(name)
    for component, spec in SERVICES.items():
        dep = deployment_for(docs, component)
        (container,) = dep["spec"]["template"]["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {"grpc": spec.grpc_port, "metrics": spec.metrics_port, "health": HEALTH_PORTS[component]}
        assert env_of(container)["MUSIC_ANALYTICS_HEALTH_PORT"] == str(ports["health"])
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"] == {"port": ports["health"], "service": spec.full_name}, probe
        # No Service exposes the health port: clients only ever reach the TLS port.
        labels = dep["spec"]["template"]["metadata"]["labels"]
        for svc in by_kind(docs, "Service"):
            if selects({"matchLabels": svc["spec"]["selector"]}, labels):
                assert {p["targetPort"] for p in svc["spec"]["ports"]} <= {"grpc", "metrics"}
                assert ports["health"] not in {p["port"] for p in svc["spec"]["ports"]}


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_services_get_their_certificate_through_the_environment(name: str):
    docs = rendered(name)
    for component in COMPONENTS:
        pod = deployment_for(docs, component)["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        volume, files = tls_volume(pod, container)
        assert volume["secret"]["secretName"] == secret_name(name)
        env = env_of(container)
        assert files[env["MUSIC_ANALYTICS_TLS_CERT"]] == "tls.crt"
        assert files[env["MUSIC_ANALYTICS_TLS_KEY"]] == "tls.key"
        if client_auth(name):
            assert files[env["MUSIC_ANALYTICS_TLS_CLIENT_CA"]] == "ca.crt"
            assert sorted(files.values()) == ["ca.crt", "tls.crt", "tls.key"]
        else:
            assert "MUSIC_ANALYTICS_TLS_CLIENT_CA" not in env
            assert sorted(files.values()) == ["tls.crt", "tls.key"]


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_job_passes_the_tls_flags(name: str):
    job = pipeline_job(rendered(name))
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    volume, files = tls_volume(pod, container)
    assert volume["secret"]["secretName"] == secret_name(name)
    args = job_args(job)
    assert files[args["--tls-ca"]] == "ca.crt"
    if client_auth(name):
        assert (files[args["--tls-cert"]], files[args["--tls-key"]]) == ("tls.crt", "tls.key")
    else:
        # No client certificate wanted: the private key stays out of the Job's pod.
        assert "--tls-cert" not in args and "--tls-key" not in args
        assert sorted(files.values()) == ["ca.crt"]
    assert not [e for e in container["env"] if "TLS" in e["name"]]


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_helm_test_pods_check_the_tls_port_with_the_ca(name: str):
    docs = rendered(name)
    tests = hooks(docs, "test")
    assert len(tests) == len(COMPONENTS)
    for pod in tests:
        (container,) = pod["spec"]["containers"]
        _volume, files = tls_volume(pod["spec"], container)
        target, health_name, *flags = container["args"]
        svc = one(docs, "Service", target.split(".")[0])
        component = svc["metadata"]["labels"]["app.kubernetes.io/component"]
        # The real service path: the ClusterIP Service's TLS port, not the health port.
        assert int(target.rsplit(":", 1)[1]) == SERVICES[component].grpc_port
        assert health_name == SERVICES[component].full_name
        options = dict(zip(flags[::2], flags[1::2], strict=True))
        expected = {"--tls-ca": "ca.crt"} | (
            {"--tls-cert": "tls.crt", "--tls-key": "tls.key"} if client_auth(name) else {}
        )
        assert {flag: files[path] for flag, path in options.items()} == expected


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_every_pod_stays_restricted_with_tls(name: str):
    for owner, pod, _labels in pod_specs(rendered(name)):
        assert_restricted(owner, pod)


@pytest.mark.parametrize("cidrs", [[], ["10.0.0.0/24", "fd00::/64"]])
def test_no_pod_reaches_the_health_port(cidrs: list[str]):
    """The health port is for the kubelet: no pod of the release, no monitoring pod, no stranger
    may connect to it, while the Job and the test pods still reach the TLS port. Node addresses
    listed in networkPolicy.probes.cidrs are admitted to the health port and nothing else."""
    values = copy.deepcopy(VALUE_SETS["secret-mtls"]) | {"networkPolicy": {"probes": {"cidrs": cidrs}}}
    docs = render_docs(values)
    policies = by_kind(docs, "NetworkPolicy")
    pods = pod_specs(docs)
    sources = [(labels, OWN_NS) for _o, _s, labels in pods]
    sources += [({"app.kubernetes.io/name": "prometheus"}, MONITORING_NS), ({"app": "stranger"}, OWN_NS)]
    for component in COMPONENTS:
        dep = deployment_for(docs, component)
        labels = dep["spec"]["template"]["metadata"]["labels"]
        named = {p["name"]: p["containerPort"] for p in dep["spec"]["template"]["spec"]["containers"][0]["ports"]}
        for src in sources:
            assert not allowed(policies, src, (labels, OWN_NS), named["health"], named), (src, component)
        job_labels = pipeline_job(docs)["spec"]["template"]["metadata"]["labels"]
        assert allowed(policies, (job_labels, OWN_NS), (labels, OWN_NS), named["grpc"], named)
        address_rules = [
            rule
            for p in policies
            if selects(p["spec"]["podSelector"], labels)
            for rule in p["spec"].get("ingress", [])
            if any("ipBlock" in peer for peer in rule["from"])
        ]
        if not cidrs:
            assert not address_rules
        else:
            (rule,) = address_rules
            assert [peer["ipBlock"]["cidr"] for peer in rule["from"]] == cidrs
            assert rule["ports"] == [{"port": "health", "protocol": "TCP"}]
    # Without TLS the same node addresses get the gRPC port, where the probes then are.
    plain = render_docs({"networkPolicy": {"probes": {"cidrs": ["10.0.0.0/24"]}}})
    rules = [
        r for p in by_kind(plain, "NetworkPolicy") for r in p["spec"].get("ingress", []) if "ipBlock" in r["from"][0]
    ]
    assert len(rules) == len(COMPONENTS) and all(r["ports"] == [{"port": "grpc", "protocol": "TCP"}] for r in rules)


def test_metrics_stay_plain_http_with_tls():
    values = copy.deepcopy(VALUE_SETS["secret-mtls"]) | {"monitoring": {"serviceMonitor": {"enabled": True}}}
    docs = render_docs(values, api_versions=MONITORING_APIS)
    (monitor,) = by_kind(docs, "ServiceMonitor")
    assert [e["scheme"] for e in monitor["spec"]["endpoints"]] == ["http"]
    assert "tlsConfig" not in monitor["spec"]["endpoints"][0]
    for component, spec in SERVICES.items():
        template = deployment_for(docs, component)["spec"]["template"]
        assert template["metadata"]["annotations"]["prometheus.io/port"] == str(spec.metrics_port)


def test_tls_off_leaves_no_trace():
    docs = render_docs({})
    assert not by_kind(docs, "Certificate")
    for owner, pod, _labels in pod_specs(docs):
        assert not [v for v in pod.get("volumes", []) if "secret" in v], owner
        for c in pod["containers"]:
            assert not [e for e in c.get("env", []) if "TLS" in e["name"] or "HEALTH" in e["name"]], owner
            assert "health" not in {p["name"] for p in c.get("ports", [])}, owner
            assert not [a for a in c.get("args", []) if a.startswith("--tls")], owner
    text = notes({})
    assert "grpcurl -plaintext" in text and "-cacert" not in text


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_notes_give_the_grpcurl_recipe_for_tls(name: str):
    text = notes(VALUE_SETS[name])
    lines = [line.strip() for line in text.splitlines() if line.strip().startswith("grpcurl ")]
    assert len(lines) == 2
    for line in lines:
        assert "-plaintext" not in line and "-cacert ca.crt" in line
        assert ("-cert tls.crt -key tls.key" in line) == client_auth(name)
        assert f"-authority {RELEASE}-music-analytics-mapreduce.{NAMESPACE}.svc" in line
    assert f"get secret {secret_name(name)} -o jsonpath='{{.data.ca\\.crt}}'" in text
    assert ("{.data.tls\\.key}" in text) == client_auth(name)


# ---------------------------------------------------------------- values that cannot work


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"tls": {"enabled": True}}, "tls.enabled=true needs the certificate's Secret: set tls.secretName"),
        ({"tls": {"enabled": True, "clientAuth": True}}, "or tls.certManager.issuerRef.name"),
        ({"tls": {"clientAuth": True}}, "tls.clientAuth=true requires tls.enabled=true"),
        ({"tls": {"secretName": SECRET, "clientAuth": True}}, "tls.clientAuth=true requires tls.enabled=true"),
        ({"tls": {"certManager": {"issuerRef": {"name": "ca"}}}}, "issuerRef.name is set but tls.enabled=false"),
        (
            {"tls": {"enabled": True, "secretName": SECRET}, "services": {"userbehavior": {"healthPort": 50053}}},
            "services.userbehavior.healthPort (50053) must differ from its grpcPort and metricsPort",
        ),
    ],
)
def test_contradictory_tls_values_fail_with_a_message(values: dict[str, Any], message: str):
    chart().validate_schema(values)  # well-formed: it is the combination that cannot work
    with pytest.raises(helm.HelmError, match=message.replace(".", r"\.").replace("(", r"\(").replace(")", r"\)")):
        render_docs(values)


@pytest.mark.parametrize(
    "values",
    [
        {"tls": {"enable": True}},
        {"tls": {"enabled": "yes"}},
        {"tls": {"secretName": "Not_A_Name"}},
        {"tls": {"certManager": {"issuerRef": {"name": "ca", "kind": "Issuers"}}}},
        {"tls": {"certManager": {"issuer": {"name": "ca"}}}},
        {"services": {"mapreduce": {"healthPort": 70000}}},
        {"default": {"healthPort": 50052}},  # per service only
        {"networkPolicy": {"probes": {"cidrs": ["10.0.0.1"]}}},
    ],
)
def test_schema_rejects_bad_tls_values(values: dict[str, Any]):
    with pytest.raises(helm.HelmError):
        chart().validate_schema(values)


def test_external_issuer_kinds_are_allowed():
    """cert-manager.io issuers are Issuer or ClusterIssuer; an external issuer has its own kind."""
    ref = {"name": "pca", "kind": "AWSPCAClusterIssuer", "group": "awspca.cert-manager.io"}
    (cert,) = by_kind(render_docs({"tls": {"enabled": True, "certManager": {"issuerRef": ref}}}), "Certificate")
    assert cert["spec"]["issuerRef"] == ref


# ---------------------------------------------------------------- the rendered containers, run over mTLS


def issue_certificate(dns_names: list[str], usages: list[str]) -> dict[str, bytes]:
    """A CA and a certificate for dns_names, as cert-manager's CA issuer writes them into the Secret
    (tls.crt, tls.key, ca.crt). 127.0.0.1 is added: here the Services' names lead to loopback."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "music-analytics test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )  # keyCertSign, cRLSign
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    eku = {"server auth": ExtendedKeyUsageOID.SERVER_AUTH, "client auth": ExtendedKeyUsageOID.CLIENT_AUTH}
    names = [x509.DNSName(n) for n in dns_names] + [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=True)
        .add_extension(x509.ExtendedKeyUsage([eku[u] for u in usages if u in eku]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return {
        "tls.crt": cert.public_bytes(pem),
        "tls.key": key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        "ca.crt": ca.public_bytes(pem),
    }


@pytest.fixture(scope="module")
def mtls_deployed(tmp_path_factory: pytest.TempPathFactory):
    """The rendered services (TLS, client certificates required) as local processes, with the
    Secret cert-manager would write for the rendered Certificate."""
    docs = render_docs(copy.deepcopy(VALUE_SETS["issuer-mtls"]))
    (certificate,) = by_kind(docs, "Certificate")
    spec = certificate["spec"]
    secrets = {spec["secretName"]: issue_certificate(spec["dnsNames"], spec["usages"])}
    root = tmp_path_factory.mktemp("mtls")
    running: dict[str, dict[str, Any]] = {}
    try:
        for component in COMPONENTS:
            dep = deployment_for(docs, component)
            pod = dep["spec"]["template"]["spec"]
            (container,) = pod["containers"]
            mounts = mount_volumes(pod, container, docs, root / component, secrets)
            ports = {p["containerPort"]: free_port() for p in container["ports"]}  # pod port -> local port
            rendered_env = env_of(container)
            env = container_env(container, {"MUSIC_ANALYTICS_HOST": "127.0.0.1", "TMPDIR": str(mounts["/tmp"])})
            for variable in (
                "MUSIC_ANALYTICS_GRPC_PORT",
                "MUSIC_ANALYTICS_METRICS_PORT",
                "MUSIC_ANALYTICS_HEALTH_PORT",
            ):
                env[variable] = str(ports[int(rendered_env[variable])])
            for variable in ("MUSIC_ANALYTICS_TLS_CERT", "MUSIC_ANALYTICS_TLS_KEY", "MUSIC_ANALYTICS_TLS_CLIENT_CA"):
                env[variable] = map_paths(rendered_env[variable], mounts)
            log = root / f"{component}.log"
            process = subprocess.Popen(
                [*container["command"], *container["args"]],
                env=env,
                cwd=mounts["/tmp"],
                stdout=subprocess.DEVNULL,
                stderr=log.open("wb"),
            )
            running[component] = {"container": container, "ports": ports, "process": process, "log": log}
        for component, r in running.items():
            # The kubelet's way: plaintext gRPC to the probe's port (the plain health port under TLS).
            probe = r["container"]["readinessProbe"]["grpc"]
            wait_probe_serving(component, r["process"], r["log"], r["ports"][probe["port"]], probe["service"])
        yield docs, running, secrets, root
    finally:
        for r in running.values():
            if r["process"].poll() is None:
                r["process"].kill()
                r["process"].wait()


def test_tls_port_refuses_plaintext_and_clients_without_a_certificate(mtls_deployed):
    _docs, running, secrets, _root = mtls_deployed
    (data,) = secrets.values()
    for component, r in running.items():
        grpc_port = r["ports"][SERVICES[component].grpc_port]
        name = SERVICES[component].full_name
        with pytest.raises(grpc.RpcError):
            health_status(grpc_port, name)
        with pytest.raises(grpc.RpcError):
            health_status(grpc_port, name, grpc.ssl_channel_credentials(data["ca.crt"]))
        with_cert = grpc.ssl_channel_credentials(data["ca.crt"], data["tls.key"], data["tls.crt"])
        assert health_status(grpc_port, name, with_cert) == health_pb2.HealthCheckResponse.SERVING
        # /metrics stays plain HTTP for Prometheus.
        url = f"http://127.0.0.1:{r['ports'][SERVICES[component].metrics_port]}/metrics"
        with urllib.request.urlopen(url, timeout=5) as metrics:
            assert b"grpc_server_handled_total" in metrics.read()
        record = serving_line(r["log"])
        assert (record["tls"], record["health_port"]) == ("mutual", r["ports"][HEALTH_PORTS[component]])


def test_helm_test_commands_pass_over_mtls(mtls_deployed):
    docs, running, secrets, root = mtls_deployed
    for pod in hooks(docs, "test"):
        (container,) = pod["spec"]["containers"]
        mounts = mount_volumes(pod["spec"], container, docs, root / pod["metadata"]["name"], secrets)
        target, *rest = container["args"]
        component = one(docs, "Service", target.split(".")[0])["metadata"]["labels"]["app.kubernetes.io/component"]
        local = f"127.0.0.1:{running[component]['ports'][int(target.rsplit(':', 1)[1])]}"
        result = subprocess.run(
            [*container["command"], local, *(map_paths(a, mounts) for a in rest)],
            env=container_env(container, {}),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"OK {local} (TLS)"), result.stdout


def test_job_command_completes_the_pipeline_over_mtls(mtls_deployed):
    docs, running, secrets, root = mtls_deployed
    job = pipeline_job(docs)
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    mounts = mount_volumes(pod, container, docs, root / "job", secrets)
    args = []
    for arg in container["args"]:
        if arg.startswith("dns:///"):
            host, port = arg.removeprefix("dns:///").rsplit(":", 1)
            component = one(docs, "Service", host.split(".")[0])["spec"]["selector"]["app.kubernetes.io/component"]
            arg = f"ipv4:127.0.0.1:{running[component]['ports'][int(port)]}"
        args.append(map_paths(arg, mounts))
    parsed = job_args(job)
    _, stored = run_job_container(docs, job, container, args, mounts, root)
    assert json.loads(stored["data"]["summary.json"])
    results = json.loads(Path(map_paths(parsed["--out"], mounts)).read_text())
    assert results["events_processed"] > 0


def test_notes_grpcurl_recipe_works_over_mtls(mtls_deployed, tmp_path: Path):
    """NOTES' grpcurl lines, run with the real grpcurl as printed, in a directory holding the files
    the printed kubectl commands write; only the port-forward's local port is this machine's."""
    _docs, running, secrets, _root = mtls_deployed
    (data,) = secrets.values()
    for key, value in data.items():
        (tmp_path / key).write_bytes(value)
    text = notes(copy.deepcopy(VALUE_SETS["issuer-mtls"]))
    lines = [line.strip() for line in text.splitlines() if line.strip().startswith("grpcurl ")]
    local = f"127.0.0.1:{running['mapreduce']['ports'][SERVICES['mapreduce'].grpc_port]}"
    grpcurl = str(Path(sys.executable).parent / "grpcurl")
    outputs = []
    for line in lines:
        argv = shlex.split(line.replace(f"localhost:{SERVICES['mapreduce'].grpc_port}", local))
        result = subprocess.run([grpcurl, *argv[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, f"{line}\n{result.stderr}"
        outputs.append(result.stdout)
    assert SERVICES["mapreduce"].full_name in outputs[0]
    assert json.loads(outputs[1]) == {"status": "SERVING"}
