"""RecommendArtists on a real Recommendation service: what it answers for a small, hand-checkable
set of plays, and a clear INVALID_ARGUMENT for every malformed message, after which it serves on."""

from __future__ import annotations

import grpc
import numpy as np
import pyarrow as pa
import pytest

from music_analytics.api import events_pb2, recommendation_pb2, recommendation_pb2_grpc
from music_analytics.client.listening import strings
from music_analytics.services.common.contract import MAX_PERSONALIZED_N, PERSONALIZED_N
from music_analytics.services.common.events import dictionary_column_message, string_array_message

# Two tastes: a, b, c go together and x, y together; u5 has played only "a".
PLAYS = {
    "u1": {"a": 5, "b": 3, "c": 1},
    "u2": {"a": 2, "b": 4, "c": 6},
    "u3": {"x": 7, "y": 2},
    "u4": {"x": 1, "y": 9, "a": 1},
    "u5": {"a": 1},
}


def users_message(plays: dict[str, dict[str, int]]) -> recommendation_pb2.RecommendArtistsRequest:
    users = list(plays)
    artists = [a for u in users for a in plays[u]]
    counts = [c for u in users for c in plays[u].values()]
    ends = np.cumsum([len(plays[u]) for u in users]).astype("<u4")
    names = pa.array(sorted(set(artists)))
    codes = np.array([names.to_pylist().index(a) for a in artists])
    return recommendation_pb2.RecommendArtistsRequest(
        users=recommendation_pb2.UserArtistPlays(
            user_ids=string_array_message(pa.array(users)),
            plays=events_pb2.ArtistPlays(
                ends=ends.tobytes(),
                artists=dictionary_column_message(names, codes),
                plays=np.array(counts, "<u4").tobytes(),
            ),
        )
    )


def settings(n: int = 0, algorithm: str = "") -> recommendation_pb2.RecommendArtistsRequest:
    return recommendation_pb2.RecommendArtistsRequest(
        settings=recommendation_pb2.ArtistModelSettings(n=n, algorithm=algorithm)
    )


@pytest.fixture
def stub(services):
    with grpc.insecure_channel(services.processes["recommendation"][0].address) as channel:
        yield recommendation_pb2_grpc.RecommendationServiceStub(channel)


def answer(stub, *requests) -> tuple[recommendation_pb2.ArtistModel, dict[str, tuple[list[str], int]]]:
    replies = list(stub.RecommendArtists(iter(requests), timeout=30))
    assert replies[0].WhichOneof("payload") == "model"
    out = {}
    for reply in replies[1:]:
        r = reply.users
        ends = np.frombuffer(r.ends, "<u4")
        names = strings(r.artists.dictionary).to_pylist()
        idx = np.frombuffer(r.artists.indices, "<u4")
        starts = np.concatenate(([0], ends[:-1]))
        for user, a, b, source in zip(strings(r.user_ids).to_pylist(), starts, ends, r.source, strict=True):
            out[user] = ([names[i] for i in idx[a:b]], source)
    return replies[0].model, out


def test_users_get_unplayed_artists_of_their_taste_in_user_id_order(stub):
    model, recs = answer(stub, settings(n=3), users_message(PLAYS))
    assert (model.algorithm, model.users, model.artists, model.pairs) == ("bm25", 5, 5, 12)
    assert model.algorithms[0] == "bm25" and "als" in model.algorithms
    assert list(recs) == sorted(PLAYS)
    for user, (artists, _) in recs.items():
        assert not set(artists) & set(PLAYS[user]), user  # never what they played
        assert len(artists) == min(3, 5 - len(PLAYS[user]))
    # "a" is the one artist played beside x and y (by u4): u3's first; b and c never were.
    assert recs["u3"][0][0] == "a" and recs["u3"][1] != 0
    assert set(recs["u5"][0][:2]) == {"b", "c"}  # a's closest neighbours first


def test_the_same_plays_in_another_order_and_split_give_the_same_answer(stub):
    _, whole = answer(stub, settings(), users_message(PLAYS))
    reordered = dict(reversed(list(PLAYS.items())))
    first, second = dict(list(reordered.items())[:2]), dict(list(reordered.items())[2:])
    _, split = answer(stub, settings(), users_message(second), users_message(first))
    assert split == whole


def test_a_user_sent_twice_has_the_plays_summed(stub):
    u4 = PLAYS["u4"]
    _, whole = answer(stub, settings(), users_message(PLAYS))
    first = {u: p for u, p in PLAYS.items() if u != "u4"} | {"u4": {"x": u4["x"], "y": 4}}
    _, summed = answer(stub, settings(), users_message(first), users_message({"u4": {"y": u4["y"] - 4, "a": u4["a"]}}))
    assert summed == whole


def bad_users(**changes) -> recommendation_pb2.RecommendArtistsRequest:
    request = users_message(PLAYS)
    users = request.users
    for path, value in changes.items():
        target = users
        *parents, name = path.split("__")
        for parent in parents:
            target = getattr(target, parent)
        if isinstance(value, events_pb2.StringArray):
            getattr(target, name).CopyFrom(value)
        else:
            setattr(target, name, value)
    return request


CASES = {
    "users before settings": ([users_message(PLAYS)], "message 0 must carry `settings`"),
    "no users field": ([settings(), recommendation_pb2.RecommendArtistsRequest()], "message 1: expected `users`"),
    "n past the bound": ([settings(n=MAX_PERSONALIZED_N + 1)], f"the most allowed is {MAX_PERSONALIZED_N}"),
    "unknown algorithm": ([settings(algorithm="magic")], "'magic' is not one of"),
    "ends of another count": ([settings(), bad_users(plays__ends=np.array([1], "<u4").tobytes())],
                              "users.plays.ends: expected 5 uint32 values"),
    "ends descending": ([settings(), bad_users(plays__ends=np.array([3, 2, 5, 8, 12], "<u4").tobytes())],
                        "users.plays.ends: not ascending"),
    "zero plays": ([settings(), bad_users(plays__plays=np.array([1] * 11 + [0], "<u4").tobytes())],
                   "users.plays.plays: entry 11 is 0 plays"),
    "artist index out of range": ([settings(), bad_users(plays__artists__indices=np.full(12, 9, "<u4").tobytes())],
                                  "index 9 out of range"),
    "empty user id": ([settings(), bad_users(user_ids=string_array_message(pa.array(["u1", "", "u3", "u4", "u5"])))],
                      "users.user_ids: holds an empty string"),
    "user ids not utf-8": ([settings(), bad_users(user_ids__data=b"\xff" * 10)], "users.user_ids"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_messages_are_invalid_argument_and_the_service_serves_on(stub, case):
    requests, message = CASES[case]
    with pytest.raises(grpc.RpcError) as err:
        list(stub.RecommendArtists(iter(requests), timeout=10))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert message in err.value.details()
    _, recs = answer(stub, settings(), users_message(PLAYS))
    assert len(recs) == len(PLAYS)


def test_an_empty_stream_is_refused(stub):
    with pytest.raises(grpc.RpcError) as err:
        list(stub.RecommendArtists(iter([]), timeout=10))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "send `settings` first" in err.value.details()


def test_settings_alone_train_on_nothing_and_answer_no_users(stub):
    model, recs = answer(stub, settings())
    assert (model.users, model.artists, recs) == (0, 0, {})
    assert PERSONALIZED_N == 10
