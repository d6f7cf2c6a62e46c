"""helm test: check one service's gRPC health ("" and its own name) and reflection listing.

Runs in the chart's own image (grpcio, grpcio-health-checking and grpcio-reflection are runtime
dependencies), so no third-party grpcurl image has to be pulled, trusted and patched.
Usage: python grpc-check.py TARGET HEALTH_SERVICE_NAME [--tls-ca PEM [--tls-cert PEM --tls-key PEM]]
With --tls-ca the call goes over TLS and the server's certificate must be signed by that CA and
name TARGET's host, as for the pipeline's own calls.
"""

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc


def read(path):
    with open(path, "rb") as f:
        return f.read()


def channel_for(args):
    if not args.tls_ca:
        return grpc.insecure_channel(args.target)
    key = read(args.tls_key) if args.tls_key else None
    cert = read(args.tls_cert) if args.tls_cert else None
    credentials = grpc.ssl_channel_credentials(read(args.tls_ca), key, cert)
    return grpc.secure_channel(args.target, credentials)


def main(argv):
    parser = argparse.ArgumentParser(prog="grpc-check")
    parser.add_argument("target")
    parser.add_argument("service")
    parser.add_argument("--tls-ca")
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    args = parser.parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None) or (args.tls_cert and not args.tls_ca):
        parser.error("--tls-cert and --tls-key go together, and with --tls-ca")
    target, service = args.target, args.service
    channel = channel_for(args)
    try:
        grpc.channel_ready_future(channel).result(timeout=30)
    except grpc.FutureTimeoutError:
        how = "over TLS " if args.tls_ca else ""
        print(f"FAIL {target}: not reachable {how}within 30 s", file=sys.stderr)
        return 1
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", service):
        status = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10).status
        if status != health_pb2.HealthCheckResponse.SERVING:
            label = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
            print(f"FAIL {target}: health of {name!r} is {label}", file=sys.stderr)
            return 1
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    reply = next(reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(iter([request]), timeout=10))
    listed = sorted(s.name for s in reply.list_services_response.service)
    missing = {service, "grpc.health.v1.Health"} - set(listed)
    if missing:
        print(f"FAIL {target}: reflection lists {listed}, missing {sorted(missing)}", file=sys.stderr)
        return 1
    how = " (TLS)" if args.tls_ca else ""
    print(f"OK {target}{how}: {service} SERVING; reflection lists {', '.join(listed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
