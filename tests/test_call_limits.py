"""A busy, abused or abandoned service stays answerable and counts every call right.

Real services on loopback, real clients: streams that hold every slot, clients that cancel,
deadlines that pass, request fields past their bounds, a call whose state outgrows its limit.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pyarrow as pa
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from music_analytics.api import (
    mapreduce_pb2,
    mapreduce_pb2_grpc,
    recommendation_pb2,
    recommendation_pb2_grpc,
    userbehavior_pb2,
    userbehavior_pb2_grpc,
)
from music_analytics.client.demo import ServiceProcess, start_service
from music_analytics.services.common.config import ServerConfig
from music_analytics.services.common.contract import MAX_TOP_N, MAX_TRENDING_N
from music_analytics.services.common.contract import SERVICES as CONTRACTS
from music_analytics.services.common.interceptor import end_code
from tests.conftest import BIN, ROOT
from tests.oracle import oracle
from tests.support.events import count_plays_request, good_table
from tests.support.metrics import scrape, value
from tests.support.oracle_match import assert_matches_oracle

MR = {"grpc_type": "client_stream", "grpc_service": "music.v1.MapReduceService", "grpc_method": "CountPlays"}
UB = {"grpc_type": "bidi_stream", "grpc_service": "music.v1.UserBehaviorService", "grpc_method": "AnalyzeUsers"}


@pytest.fixture
def service_factory(tmp_path) -> Iterator:
    started: list[ServiceProcess] = []

    def start(name: str, **env: str) -> ServiceProcess:
        process = start_service(name, tmp_path / f"{name}-{len(started)}.log", extra_env=env)
        started.append(process)
        process.wait_serving()
        return process

    yield start
    for process in started:
        assert process.stop() == 0, process.log_path.read_text()[-2000:]
        assert "Traceback" not in process.log_path.read_text()


class HeldStream:
    """A CountPlays stream that has sent one message and then holds its slot until released."""

    def __init__(self, channel: grpc.Channel, timeout: float = 60, release: threading.Event | None = None) -> None:
        self.release = release or threading.Event()
        self.sent = threading.Event()
        stub = mapreduce_pb2_grpc.MapReduceServiceStub(channel)
        self.future = stub.CountPlays.future(self._requests(), timeout=timeout)

    def _requests(self) -> Iterator[mapreduce_pb2.CountPlaysRequest]:
        yield count_plays_request(good_table(3))
        self.sent.set()
        self.release.wait(60)


def check_health(address: str, service: str = "") -> float:
    """Seconds one Health/Check took on a fresh connection (raises if not SERVING within 1 s)."""
    with grpc.insecure_channel(address) as channel:
        start = time.perf_counter()
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=1)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        return time.perf_counter() - start


def wait_for(condition, timeout: float = 10.0, what: str = "condition", state=None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}" + (f": {state()}" if state else "")
        time.sleep(0.02)


@pytest.mark.parametrize("max_streams", [None, 4], ids=["default", "configured"])
def test_health_and_reflection_answer_while_streams_fill_every_slot(service_factory, max_streams):
    """Every application slot held by a stream: health answers in under a second, grpcurl can
    still list, and one stream more is refused at once with RESOURCE_EXHAUSTED, not queued."""
    env = {"MUSIC_ANALYTICS_MAX_STREAMS": str(max_streams)} if max_streams else {}
    mr = service_factory("mapreduce", **env)
    max_streams = max_streams or ServerConfig.max_streams
    before = scrape(mr)
    with grpc.insecure_channel(mr.address) as channel:
        held = [HeldStream(channel) for _ in range(max_streams)]
        try:
            for h in held:
                assert h.sent.wait(10)
            wait_for(lambda: value(scrape(mr), "music_analytics_inflight_streams", service="mapreduce") == max_streams,
                     what="every slot taken")  # fmt: skip
            for _ in range(5):
                assert check_health(mr.address, "music.v1.MapReduceService") < 1.0
            started = time.perf_counter()
            listed = subprocess.run([str(BIN / "grpcurl"), "-plaintext", "-max-time", "5", mr.address, "list"],
                                    capture_output=True, text=True, timeout=30)  # fmt: skip
            assert listed.returncode == 0, listed.stderr
            assert "music.v1.MapReduceService" in listed.stdout
            assert time.perf_counter() - started < 5

            extra = HeldStream(channel)
            with pytest.raises(grpc.RpcError) as refused:
                extra.future.result(timeout=5)
            extra.release.set()
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert f"{max_streams} calls in progress" in refused.value.details()
            assert "MUSIC_ANALYTICS_MAX_STREAMS" in refused.value.details()
        finally:
            for h in held:
                h.release.set()
        for h in held:
            assert h.future.result(timeout=30).events_processed == 3
        # The slots came back: a new call is served.
        stub = mapreduce_pb2_grpc.MapReduceServiceStub(channel)
        assert stub.CountPlays(iter([count_plays_request(good_table(2))]), timeout=10).events_processed == 2
    after = scrape(mr)
    assert value(after, "music_analytics_calls_rejected_total", service="mapreduce", reason="over_capacity") - value(
        before, "music_analytics_calls_rejected_total", service="mapreduce", reason="over_capacity") == 1  # fmt: skip
    assert value(after, "grpc_server_handled_total", **MR, grpc_code="ResourceExhausted") == 1
    # A call ends on the server just after its answer reaches the client.
    wait_for(lambda: value(scrape(mr), "music_analytics_inflight_streams", service="mapreduce") == 0)


def test_cancel_and_deadline_are_recorded_as_go_middleware_spells_them(service_factory):
    """A client that cancels is Canceled, a passed deadline is DeadlineExceeded; neither is
    Unknown (which counts as a server error), and neither keeps its slot."""
    mr = service_factory("mapreduce", MUSIC_ANALYTICS_MAX_STREAMS="2")
    ub = service_factory("userbehavior", MUSIC_ANALYTICS_MAX_STREAMS="2")
    with grpc.insecure_channel(mr.address) as channel:
        for _ in range(3):  # more than the slots: a slot kept by a cancelled call would refuse the third
            cancelled = HeldStream(channel)
            assert cancelled.sent.wait(10)
            wait_for(lambda: value(scrape(mr), "music_analytics_inflight_streams", service="mapreduce") == 1)
            cancelled.future.cancel()
            cancelled.release.set()
            wait_for(lambda: value(scrape(mr), "music_analytics_inflight_streams", service="mapreduce") == 0,
                     what="the cancelled call's end")  # fmt: skip
        late = HeldStream(channel, timeout=0.5)
        with pytest.raises(grpc.RpcError) as passed:
            late.future.result(timeout=30)
        late.release.set()
        assert passed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    with grpc.insecure_channel(mr.address) as channel:
        stub = mapreduce_pb2_grpc.MapReduceServiceStub(channel)

        def slow() -> Iterator[mapreduce_pb2.CountPlaysRequest]:
            yield count_plays_request(good_table(3))
            time.sleep(2)

        with pytest.raises(grpc.RpcError) as deadline:
            stub.CountPlays(slow(), timeout=0.5)
        assert deadline.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    # A response stream abandoned half-way: the client reads one message of many, then cancels.
    many_users = pa.table({"user_id": [f"u{i}" for i in range(50_000)], "song_id": ["s"] * 50_000,
                           "artist": ["A"] * 50_000, "duration": pa.array([1] * 50_000, pa.uint32()),
                           "timestamp": pa.array([0] * 50_000, pa.int64())})  # fmt: skip
    with grpc.insecure_channel(ub.address) as channel:
        stub = userbehavior_pb2_grpc.UserBehaviorServiceStub(channel)
        request = userbehavior_pb2.AnalyzeUsersRequest.FromString(count_plays_request(many_users).SerializeToString())
        responses = stub.AnalyzeUsers(iter([request]), timeout=30)
        next(responses)
        responses.cancel()

    def codes(process: ServiceProcess, labels: dict) -> dict[str, float]:
        samples = scrape(process)
        return {code: value(samples, "grpc_server_handled_total", **labels, grpc_code=code)
                for code in ("OK", "Canceled", "DeadlineExceeded", "Unknown", "Cancelled")}  # fmt: skip

    wait_for(lambda: codes(mr, MR)["DeadlineExceeded"] == 2 and codes(ub, UB)["Canceled"] == 1,
             what="every call's end recorded", state=lambda: (codes(mr, MR), codes(ub, UB)))  # fmt: skip
    mr_codes, ub_codes = codes(mr, MR), codes(ub, UB)
    assert mr_codes == {"OK": 0, "Canceled": 3, "DeadlineExceeded": 2, "Unknown": 0, "Cancelled": 0}, mr_codes
    assert ub_codes == {"OK": 0, "Canceled": 1, "DeadlineExceeded": 0, "Unknown": 0, "Cancelled": 0}, ub_codes
    for process in (mr, ub):
        wait_for(lambda p=process: value(scrape(p), "music_analytics_inflight_streams", service=p.name) == 0)


@pytest.mark.parametrize(
    ("completed", "set_code", "remaining", "raised", "expected"),
    [
        (True, None, 5.0, None, grpc.StatusCode.OK),
        (False, grpc.StatusCode.INVALID_ARGUMENT, 0.0, None, grpc.StatusCode.INVALID_ARGUMENT),
        (False, None, 0.0, None, grpc.StatusCode.DEADLINE_EXCEEDED),
        # The client's cancel for its own deadline, a little ahead of the server's (seen: 1-2 ms
        # when this machine's cores were busy).
        (False, None, 0.002, None, grpc.StatusCode.DEADLINE_EXCEEDED),
        (False, None, 5.0, None, grpc.StatusCode.CANCELLED),
        (False, None, None, None, grpc.StatusCode.CANCELLED),
        (False, None, 5.0, ValueError("a bug"), grpc.StatusCode.UNKNOWN),
    ],
    ids=["finished", "aborted", "deadline", "client-deadline-first", "cancelled", "no-deadline", "raised"],
)
def test_how_a_call_ended_is_told_from_what_the_server_saw(completed, set_code, remaining, raised, expected):
    assert end_code(completed, set_code, remaining, raised) == expected


def rejected(process: ServiceProcess, reason: str) -> float:
    return value(scrape(process), "music_analytics_calls_rejected_total", service=process.name, reason=reason)


def test_request_fields_past_their_bounds_are_invalid_argument_and_counted(service_factory):
    mr = service_factory("mapreduce")
    ub = service_factory("userbehavior")
    rec = service_factory("recommendation")
    for process, stub_class, method, request_class in (
        (mr, mapreduce_pb2_grpc.MapReduceServiceStub, "CountPlays", mapreduce_pb2.CountPlaysRequest),
        (ub, userbehavior_pb2_grpc.UserBehaviorServiceStub, "AnalyzeUsers", userbehavior_pb2.AnalyzeUsersRequest),
    ):
        request = request_class.FromString(count_plays_request(good_table(2), top_n=MAX_TOP_N + 1).SerializeToString())
        with grpc.insecure_channel(process.address) as channel:
            call = getattr(stub_class(channel), method)
            with pytest.raises(grpc.RpcError) as err:
                reply = call(iter([request]), timeout=10)
                list(reply) if not isinstance(reply, mapreduce_pb2.CountPlaysResponse) else None
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert f"top_n is {MAX_TOP_N + 1}; the most allowed is {MAX_TOP_N}" in err.value.details()
            request.top_n = MAX_TOP_N  # the bound itself is allowed
            reply = call(iter([request]), timeout=10)
            replies = [reply] if isinstance(reply, mapreduce_pb2.CountPlaysResponse) else list(reply)
            assert replies[-1].events_processed == 2
        assert rejected(process, "out_of_range") == 1

    songs = [recommendation_pb2.CandidateSong(song=f"A{i} - s", artist=f"A{i}", plays=100 - i) for i in range(40)]
    users = recommendation_pb2.RecommendRequest(
        users=recommendation_pb2.UserProfiles(user_ids=["u1"], top_artist=["A0"])
    )
    with grpc.insecure_channel(rec.address) as channel:
        stub = recommendation_pb2_grpc.RecommendationServiceStub(channel)
        for trending_n in (MAX_TRENDING_N + 1, 40, 2**31):
            first = recommendation_pb2.RecommendRequest(
                candidates=recommendation_pb2.Candidates(songs=songs, trending_n=trending_n)
            )
            with pytest.raises(grpc.RpcError) as err:
                list(stub.Recommend(iter([first, users]), timeout=10))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value
            assert f"candidates.trending_n is {trending_n}; the most allowed is {MAX_TRENDING_N}" in err.value.details()
        first = recommendation_pb2.RecommendRequest(
            candidates=recommendation_pb2.Candidates(songs=songs, trending_n=MAX_TRENDING_N)
        )
        trending, recommended = list(stub.Recommend(iter([first, users]), timeout=10))
        assert len(trending.trending.songs) == MAX_TRENDING_N
        # Every trending song but user u1's own top artist's, the first: bits 1..31.
        assert list(recommended.recommendations.trending_mask) == [(1 << MAX_TRENDING_N) - 2]
        too_many = recommendation_pb2.RecommendRequest(users=recommendation_pb2.UserProfiles(
            user_ids=["u"] * 100_001, top_artist=["A"] * 100_001))  # fmt: skip
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Recommend(iter([first, too_many]), timeout=30))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "message 1: users.user_ids (count) is 100001; the most allowed is 100000" in err.value.details()
    assert rejected(rec, "out_of_range") == 4
    assert check_health(rec.address) < 1.0


def distinct_songs_table(first: int, rows: int) -> pa.Table:
    ids = np.arange(first, first + rows)
    return pa.table({"user_id": ["u"] * rows, "song_id": [f"song-{i:09d}" for i in ids], "artist": ["A"] * rows,
                     "duration": pa.array(np.ones(rows, dtype=np.uint32)),
                     "timestamp": pa.array(np.zeros(rows, dtype=np.int64))})  # fmt: skip


@pytest.mark.parametrize(
    ("env", "limit_mib", "source"),
    [
        ({"MUSIC_ANALYTICS_MAX_CALL_BYTES": "4Mi"}, 4, "MUSIC_ANALYTICS_MAX_CALL_BYTES"),
        ({"MUSIC_ANALYTICS_MEMORY_LIMIT_BYTES": str(8 << 20)}, 4, "half the container's memory limit"),
    ],
)
def test_a_call_past_its_memory_limit_is_refused_and_others_go_on(service_factory, env, limit_mib, source):
    mr = service_factory("mapreduce", **env)
    with grpc.insecure_channel(mr.address) as channel:
        stub = mapreduce_pb2_grpc.MapReduceServiceStub(channel)
        # Each batch brings 50,000 new song ids: about 1.5 MB of strings, ids and indices.
        batches = (count_plays_request(distinct_songs_table(i * 50_000, 50_000)) for i in range(20))
        with pytest.raises(grpc.RpcError) as err:
            stub.CountPlays(batches, timeout=60)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        details = err.value.details()
        assert f"over the per-call limit of {limit_mib} MiB" in details, details
        assert source in details
        assert "distinct keys" in details
        # Under the limit, the same service answers exactly.
        small = stub.CountPlays(iter([count_plays_request(distinct_songs_table(0, 1000))]), timeout=10)
        assert (small.events_processed, small.distinct_songs) == (1000, 1000)
    assert rejected(mr, "memory_limit") == 1


def test_a_pipeline_that_meets_full_services_waits_its_turn_instead_of_failing(service_factory, tmp_path):
    """Services that serve one call each, that call taken: the pipeline's streams and its
    Recommendation call are refused as busy, it retries within --wait-ready, and once the slots
    free up it ends exact."""
    services = {name: service_factory(name, MUSIC_ANALYTICS_MAX_STREAMS="1") for name in CONTRACTS}
    data = ROOT / "data" / "stream_data.csv"
    release = {name: threading.Event() for name in ("mapreduce", "recommendation")}

    def held_recommend() -> Iterator[recommendation_pb2.RecommendRequest]:
        yield recommendation_pb2.RecommendRequest(candidates=recommendation_pb2.Candidates())
        release["recommendation"].wait(60)

    with (
        grpc.insecure_channel(services["mapreduce"].address) as mr_channel,
        grpc.insecure_channel(services["recommendation"].address) as rec_channel,
    ):
        held_mr = HeldStream(mr_channel, release=release["mapreduce"])
        held_rec = recommendation_pb2_grpc.RecommendationServiceStub(rec_channel).Recommend(
            held_recommend(), timeout=60
        )
        for name in release:
            wait_for(lambda n=name: value(scrape(services[n]), "music_analytics_inflight_streams", service=n) == 1,
                     what=f"{name}'s one slot taken")  # fmt: skip
        targets = [arg for name, p in services.items() for arg in (f"--{name}", p.address)]
        run = subprocess.Popen(
            [str(BIN / "music-analytics"), "run", "--data", str(data), "--out", str(tmp_path / "r.json"), "--quiet",
             "--wait-ready", "60", *targets],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            for name in release:  # MapReduce is asked first, Recommendation last
                wait_for(lambda n=name: rejected(services[n], "over_capacity") > 0, 30, f"{name} refusing the run")
                assert run.poll() is None, run.communicate()[1]
                release[name].set()
            _, stderr = run.communicate(timeout=120)
        finally:
            for event in release.values():
                event.set()
            run.kill()
        assert run.returncode == 0, stderr
        assert '"replica busy; retrying"' in stderr
        assert_matches_oracle(json.loads((tmp_path / "r.json").read_text()), oracle(data))
        held_mr.future.result(timeout=30)
        list(held_rec)
