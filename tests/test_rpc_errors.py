"""Malformed RPC input gets INVALID_ARGUMENT or RESOURCE_EXHAUSTED with a useful message; serving goes on."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from music_analytics.api import events_pb2, mapreduce_pb2, mapreduce_pb2_grpc, userbehavior_pb2, userbehavior_pb2_grpc
from music_analytics.client.encoding import encode_batch
from tests.support.events import good_table, set_fields


def batch_request(**changes) -> mapreduce_pb2.CountPlaysRequest:
    request = mapreduce_pb2.CountPlaysRequest.FromString(encode_batch(good_table()))
    set_fields(request.events.batch, **changes)
    return request


CASES = {
    "no payload": (mapreduce_pb2.CountPlaysRequest(), "carries no events"),
    "empty batch": (mapreduce_pb2.CountPlaysRequest(events=events_pb2.EventChunk(batch=events_pb2.EventBatch())),
                    "empty batch"),
    "empty records": (mapreduce_pb2.CountPlaysRequest(events=events_pb2.EventChunk(records=events_pb2.PlayEvents())),
                      "empty records"),
    "rows disagree with indices": (batch_request(num_rows=5), "expected 5 uint32 indices"),
    "index out of range": (batch_request(artist__indices=np.array([0, 0, 7], "<u4").tobytes()), "index 7 out of range"),
    "offsets not int32": (batch_request(song_id__dictionary__offsets=b"\x00\x00\x00"), "offsets must hold"),
    "offsets past data": (batch_request(song_id__dictionary__offsets=np.array([0, 99], "<i4").tobytes()),
                          "song_id.dictionary"),
    "invalid utf-8": (batch_request(artist__dictionary__data=b"\xff"), "artist.dictionary"),
    "empty string in dictionary": (batch_request(artist__dictionary__offsets=np.array([0, 0], "<i4").tobytes(),
                                                 artist__dictionary__data=b""), "must not be empty"),
}  # fmt: skip


@pytest.fixture
def mapreduce(services):
    with grpc.insecure_channel(services.processes["mapreduce"][0].address) as channel:
        yield mapreduce_pb2_grpc.MapReduceServiceStub(channel)


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_batch_is_invalid_argument_and_service_keeps_serving(mapreduce, case):
    request, message = CASES[case]
    good = batch_request()
    with pytest.raises(grpc.RpcError) as err:
        mapreduce.CountPlays(iter([good, request]), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "message 1" in err.value.details() and message in err.value.details()
    reply = mapreduce.CountPlays(iter([good]), timeout=10)
    assert reply.events_processed == 3


def test_oversized_message_is_resource_exhausted(mapreduce):
    huge = mapreduce_pb2.CountPlaysRequest(events=events_pb2.EventChunk(batch=events_pb2.EventBatch(
        num_rows=1, duration=b"\x00" * (17 * 1024 * 1024))))  # fmt: skip
    with pytest.raises(grpc.RpcError) as err:
        mapreduce.CountPlays(iter([huge]), timeout=30)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in err.value.details()
    assert mapreduce.CountPlays(iter([batch_request()]), timeout=10).events_processed == 3


def test_userbehavior_rejects_a_batch_without_durations(services):
    request = userbehavior_pb2.AnalyzeUsersRequest.FromString(encode_batch(good_table()))
    request.events.batch.duration = b""
    with grpc.insecure_channel(services.processes["userbehavior"][0].address) as channel:
        stub = userbehavior_pb2_grpc.UserBehaviorServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            list(stub.AnalyzeUsers(iter([request]), timeout=10))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "duration: expected 3 uint32 values" in err.value.details()
