"""helm test: check one service's gRPC health ("" and its own name) and reflection listing.

Runs in the chart's own image (grpcio, grpcio-health-checking and grpcio-reflection are runtime
dependencies), so no third-party grpcurl image has to be pulled, trusted and patched.
Usage: python grpc-check.py TARGET HEALTH_SERVICE_NAME
"""

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc


def main(target: str, service: str) -> int:
    channel = grpc.insecure_channel(target)
    try:
        grpc.channel_ready_future(channel).result(timeout=30)
    except grpc.FutureTimeoutError:
        print(f"FAIL {target}: not reachable within 30 s", file=sys.stderr)
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
    print(f"OK {target}: {service} SERVING; reflection lists {', '.join(listed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
