"""The client's Recommendation call against a peer that answers outside the contract.

The peer is a small RecommendationService written here, served by a real gRPC server on loopback
with a real health service: what is under test is the client's reading of its answers (trending
songs, one bit mask per user), which must stay bounded and refuse what it cannot represent.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pyarrow as pa
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from music_analytics.api import mapreduce_pb2, recommendation_pb2, recommendation_pb2_grpc
from music_analytics.client.listening import strings
from music_analytics.client.merge import UserResult
from music_analytics.client.pipeline import RECOMMENDATION
from music_analytics.client.recommend import recommend
from music_analytics.client.replicas import Replicas, ServiceError
from music_analytics.client.targets import parse_target
from music_analytics.services.common.contract import MAX_TRENDING_N
from music_analytics.services.common.events import dictionary_column_message, string_array_message
from tests.conftest import cli

Answer = Callable[[list[str]], list[recommendation_pb2.RecommendResponse]]


class ScriptedRecommendation(recommendation_pb2_grpc.RecommendationServiceServicer):
    """Reads the whole request stream, then answers what ``answer(user_ids)`` returns."""

    def __init__(self) -> None:
        self.answer: Answer = lambda users: []
        self.artist_answer: Callable[[list[str]], list[recommendation_pb2.RecommendArtistsResponse]] = lambda u: []

    def RecommendArtists(  # noqa: N802 - the generated servicer's method name
        self, request_iterator: Iterator[recommendation_pb2.RecommendArtistsRequest], context: grpc.ServicerContext
    ) -> Iterator[recommendation_pb2.RecommendArtistsResponse]:
        users = [
            u
            for r in request_iterator
            if r.WhichOneof("payload") == "users"
            for u in strings(r.users.user_ids).to_pylist()
        ]
        yield from self.artist_answer(users)

    def Recommend(  # noqa: N802 - the generated servicer's method name
        self, request_iterator: Iterator[recommendation_pb2.RecommendRequest], context: grpc.ServicerContext
    ) -> Iterator[recommendation_pb2.RecommendResponse]:
        users = [u for r in request_iterator if r.WhichOneof("payload") == "users" for u in r.users.user_ids]
        yield from self.answer(users)


class Peer:
    def __init__(self) -> None:
        self.servicer = ScriptedRecommendation()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        recommendation_pb2_grpc.add_RecommendationServiceServicer_to_server(self.servicer, self.server)
        status = health.HealthServicer()
        status.set(RECOMMENDATION.health_name, health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(status, self.server)
        self.address = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()


@pytest.fixture(scope="module")
def peer() -> Iterator[Peer]:
    running = Peer()
    yield running
    running.server.stop(None)


def trending(n: int) -> recommendation_pb2.RecommendResponse:
    songs = [recommendation_pb2.CandidateSong(song=f"Artist{j} - s{j}", artist=f"Artist{j}", plays=1000 - j)
             for j in range(n)]  # fmt: skip
    return recommendation_pb2.RecommendResponse(trending=recommendation_pb2.Trending(songs=songs))


def masks(users: list[str], mask_of: Callable[[int], int]) -> recommendation_pb2.RecommendResponse:
    return recommendation_pb2.RecommendResponse(
        recommendations=recommendation_pb2.Recommendations(
            user_ids=users, trending_mask=[mask_of(i) for i in range(len(users))]
        )
    )


USERS = [UserResult(f"u{i:03d}", 60, f"Artist{i % 7}") for i in range(200)]
TOP_SONGS = [mapreduce_pb2.SongCount(song=f"Artist{j} - s{j}", artist=f"Artist{j}", plays=1000 - j) for j in range(40)]


def ask(peer: Peer) -> tuple[list, dict[str, list[str]]]:
    replicas = Replicas(RECOMMENDATION, parse_target(peer.address))
    try:
        return recommend(replicas, 5.0, TOP_SONGS, USERS)
    finally:
        replicas.close()


@pytest.mark.timeout(60)
def test_the_most_trending_songs_a_mask_can_name_are_decoded_for_every_user(peer):
    n = MAX_TRENDING_N
    # Many distinct masks, the widest included: a table of every possible mask would have 2**32 rows.
    peer.servicer.answer = lambda users: [trending(n), masks(users, lambda i: (0xFFFFFFFF >> (i % n)) ^ i)]
    started = time.monotonic()
    songs, recommendations = ask(peer)
    assert time.monotonic() - started < 10
    names = [s.song for s in songs]
    assert len(names) == n
    for i, user in enumerate(USERS):
        mask = (0xFFFFFFFF >> (i % n)) ^ i
        assert recommendations[user.user_id] == [names[j] for j in range(n) if mask & (1 << j)]


@pytest.mark.timeout(60)
def test_more_trending_songs_than_a_mask_can_name_are_refused_naming_the_replica(peer):
    peer.servicer.answer = lambda users: [trending(40), masks(users, lambda i: (1 << 40) - 1 & 0xFFFFFFFF)]
    started = time.monotonic()
    with pytest.raises(ServiceError) as refused:
        ask(peer)
    assert time.monotonic() - started < 10
    assert str(refused.value) == (
        f"recommendation at {peer.address} answered 40 trending songs; a mask of recommendations can name "
        f"at most {MAX_TRENDING_N}"
    )


@pytest.mark.timeout(60)
def test_a_mask_naming_songs_beyond_the_trending_list_is_refused(peer):
    peer.servicer.answer = lambda users: [trending(3), masks(users, lambda i: 0b1000 if i == 150 else 0b101)]
    with pytest.raises(ServiceError) as refused:
        ask(peer)
    assert str(refused.value) == (
        f"recommendation at {peer.address} answered a recommendation mask 0x8 naming songs beyond its 3 trending songs"
    )


@pytest.mark.timeout(60)
def test_recommendations_before_the_trending_songs_are_refused(peer):
    peer.servicer.answer = lambda users: [masks(users, lambda i: 0), trending(3)]
    with pytest.raises(ServiceError, match=f"recommendation at {peer.address} answered recommendations before"):
        ask(peer)


@pytest.mark.timeout(60)
def test_fewer_masks_than_users_are_refused(peer):
    def short(users: list[str]) -> list[recommendation_pb2.RecommendResponse]:
        reply = masks(users, lambda i: 1)
        del reply.recommendations.trending_mask[-1]
        return [trending(3), reply]

    peer.servicer.answer = short
    with pytest.raises(ServiceError) as refused:
        ask(peer)
    assert str(refused.value) == (f"recommendation at {peer.address} answered 200 users with 199 recommendation masks")


def test_run_against_such_a_peer_fails_with_one_line_naming_it(peer, services, tmp_path: Path):
    peer.servicer.answer = lambda users: [trending(40), masks(users, lambda i: 1)]
    data = tmp_path / "events.csv"
    data.write_text("user_id,song_id,artist,duration,timestamp\nu1,s1,a,10,2024-01-01T00:00:00Z\n")
    proc = cli("run", "--data", str(data), "--out", str(tmp_path / "r.json"), "--wait-ready", "5",
               "--mapreduce", services.target("mapreduce"), "--userbehavior", services.target("userbehavior"),
               "--recommendation", peer.address, "--personalized-n", "0", timeout=60)  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: recommendation at {peer.address} answered 40 trending songs; a mask of recommendations can name "
        f"at most {MAX_TRENDING_N}"
    ]
    assert not (tmp_path / "r.json").exists()


def model_message(users: list[str]) -> recommendation_pb2.RecommendArtistsResponse:
    return recommendation_pb2.RecommendArtistsResponse(
        model=recommendation_pb2.ArtistModel(algorithm="bm25", users=len(users), artists=1, pairs=len(users))
    )


def artists_message(
    users: list[str], source: int = 0, ends_short: bool = False
) -> recommendation_pb2.RecommendArtistsResponse:
    ends = np.arange(1, len(users) + (0 if ends_short else 1), dtype="<u4")
    return recommendation_pb2.RecommendArtistsResponse(
        users=recommendation_pb2.ArtistRecommendations(
            user_ids=string_array_message(pa.array(users, pa.string())),
            ends=ends.tobytes(),
            artists=dictionary_column_message(pa.array(["Artist X"]), np.zeros(len(users), dtype=np.int64)),
            scores=np.ones(len(users), dtype="<f4").tobytes(),
            source=bytes([source]) * len(users),
        )
    )


ARTIST_ANSWERS = {
    "users before the model": (lambda users: [artists_message(users)], "did not answer with the model first"),
    "a second model": (lambda users: [model_message(users), model_message(users)], "a second model instead of users"),
    "ends of another count": (
        lambda users: [model_message(users), artists_message(users, ends_short=True)],
        "whose columns disagree in length",
    ),
    "an unknown source": (
        lambda users: [model_message(users), artists_message(users, source=3)],
        "outside the contract",
    ),
    "users out of order": (
        lambda users: [model_message(users), artists_message(users[::-1])],
        "reached 'u2' where 'u1' was due",
    ),
    "too few users": (lambda users: [model_message(users), artists_message(users[:1])], "reached 1 users of the 2"),
    "a user too many": (
        lambda users: [model_message(users), artists_message([*users, "u3"])],
        "name more users than the 2 there are",
    ),
}


@pytest.mark.parametrize("case", list(ARTIST_ANSWERS))
def test_personalized_answers_outside_the_contract_fail_the_run_naming_the_peer(peer, services, tmp_path, case):
    answer, message = ARTIST_ANSWERS[case]
    peer.servicer.artist_answer = answer
    data = tmp_path / "events.csv"
    data.write_text(
        "user_id,song_id,artist,duration,timestamp\nu1,s1,a,10,2024-01-01T00:00:00Z\nu2,s2,b,10,2024-01-01T00:00:00Z\n"
    )
    proc = cli("run", "--data", str(data), "--out", str(tmp_path / "r.json"), "--wait-ready", "5",
               "--mapreduce", services.target("mapreduce"), "--userbehavior", services.target("userbehavior"),
               "--recommendation", peer.address, timeout=60)  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("error: ") and message in line, line
    assert not (tmp_path / "r.json").exists() and not (tmp_path / "r.users.jsonl").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["events.csv"]  # no part or spool left behind
