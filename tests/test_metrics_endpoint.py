"""/metrics over HTTP, parsed: the standard gRPC series count the calls just made."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from music_analytics.api import mapreduce_pb2, mapreduce_pb2_grpc
from music_analytics.client.encoding import encode_batch
from tests.support.events import good_table
from tests.support.metrics import scrape, value
from tests.support.waiting import wait_until

MR = {"grpc_type": "client_stream", "grpc_service": "music.v1.MapReduceService", "grpc_method": "CountPlays"}


def test_handled_total_counts_the_calls_just_made(services):
    process = services.processes["mapreduce"][0]
    before = scrape(process)
    # Series exist at zero before any traffic: dashboards never show "No data".
    assert ("grpc_server_handled_total", tuple(sorted((MR | {"grpc_code": "InvalidArgument"}).items()))) in before
    with grpc.insecure_channel(process.address) as channel:
        stub = mapreduce_pb2_grpc.MapReduceServiceStub(channel)
        request = mapreduce_pb2.CountPlaysRequest.FromString(encode_batch(good_table(4)))
        for _ in range(3):
            stub.CountPlays(iter([request, request]), timeout=10)
        with pytest.raises(grpc.RpcError) as refused:
            stub.CountPlays(iter([mapreduce_pb2.CountPlaysRequest()]), timeout=10)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    # A call's end is recorded when the RPC has ended on the server, just after the client has
    # its answer: wait until the last one (the health check) is in.
    health_ok = {"grpc_type": "unary", "grpc_service": "grpc.health.v1.Health", "grpc_method": "Check",
                 "grpc_code": "OK"}  # fmt: skip

    def scraped_after_health_check() -> dict | None:
        samples = scrape(process)
        done = value(samples, "grpc_server_handled_total", **health_ok)
        return samples if done > value(before, "grpc_server_handled_total", **health_ok) else None

    after = wait_until("the health check's end recorded", scraped_after_health_check, 10)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("grpc_server_started_total", **MR) == 4
    assert delta("grpc_server_handled_total", **MR, grpc_code="OK") == 3
    assert delta("grpc_server_handled_total", **MR, grpc_code="InvalidArgument") == 1
    assert delta("grpc_server_msg_received_total", **MR) == 7
    assert delta("grpc_server_msg_sent_total", **MR) == 3
    assert delta("grpc_server_handling_seconds_count", **MR) == 4
    assert delta("grpc_server_handled_total", grpc_type="unary", grpc_service="grpc.health.v1.Health",
                 grpc_method="Check", grpc_code="OK") == 1  # fmt: skip
    assert delta("music_analytics_events_processed_total", service="mapreduce") == 24
    assert delta("music_analytics_batches_received_total", service="mapreduce") == 6
    assert delta("music_analytics_calls_rejected_total", service="mapreduce", reason="invalid_batch") == 1
    assert value(after, "process_resident_memory_bytes") > 0
