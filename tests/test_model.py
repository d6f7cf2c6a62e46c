"""The recommender model: its rules (never a played artist, exactly min(n, unplayed) each, popularity
fill marked), the neighbour models against a dense numpy computation of their definition, and
determinism (seed, threads, input order)."""

from __future__ import annotations

import os
from collections import Counter

import numpy as np
import pytest

from music_analytics.services.recommendation.model import (
    ALGORITHMS,
    CONTROLS,
    ModelConfig,
    PlayMatrix,
    Recommendations,
    available_cpus,
    popularity,
    train,
)

EVERY_ALGORITHM = (*ALGORITHMS, *CONTROLS)
# Small factor models: these tests are about the rules, not the quality.
FAST = {"factors": 8, "iterations": 5}


def random_matrix(seed: int, users: int, artists: int, pairs: int, *, continuous: bool = False) -> PlayMatrix:
    rng = np.random.default_rng(seed)
    plays = rng.uniform(1, 50, pairs) if continuous else rng.integers(1, 50, pairs)
    return PlayMatrix.from_codes(rng.integers(0, users, pairs), rng.integers(0, artists, pairs), plays, users, artists)


def lists(recs: Recommendations) -> list[list[int]]:
    return [recs.user(i)[0].tolist() for i in range(len(recs.ends))]


def config(algorithm: str, **extra: object) -> ModelConfig:
    return ModelConfig(algorithm=algorithm, **(FAST | extra))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# The rules, for every algorithm
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", EVERY_ALGORITHM)
def test_lists_hold_exactly_the_unplayed_count_never_a_played_artist(algorithm):
    # 60 users over 30 artists, plus a user who played every artist, one who played all but two
    # and two with no history at all.
    rng = np.random.default_rng(5)
    users, artists = 64, 30
    u = list(rng.integers(0, 60, 500)) + [60] * artists + [61] * (artists - 2)
    a = list(rng.integers(0, artists, 500)) + list(range(artists)) + list(range(2, artists))
    matrix = PlayMatrix.from_codes(np.array(u), np.array(a), np.ones(len(u)), users, artists)
    model = train(matrix, config(algorithm))
    for n in (0, 1, 10, artists + 5):
        recs = model.recommend(np.arange(users), n)
        assert recs.ends.dtype == np.uint32 and recs.artists.dtype == np.int32 and recs.scores.dtype == np.float32
        for user, artists_given in enumerate(lists(recs)):
            played = set(matrix.played(user).tolist())
            assert not played & set(artists_given), (user, n)
            assert len(artists_given) == len(set(artists_given)) == min(n, artists - len(played)), (user, n)
            scores = recs.user(user)[1]
            assert np.all(np.diff(scores) <= 0), (user, scores)
    recs = model.recommend(np.array([60, 61]), 10)
    assert lists(recs)[0] == [] and sorted(lists(recs)[1]) == [0, 1]
    assert recs.counts().tolist() == [0, 2]


@pytest.mark.parametrize("algorithm", EVERY_ALGORITHM)
def test_any_batch_of_users_gets_the_lists_they_get_together(algorithm):
    matrix = random_matrix(2, 80, 40, 700)
    model = train(matrix, config(algorithm))
    everyone = lists(model.recommend(np.arange(80), 7))
    picked = np.array([79, 3, 3, 40, 0])
    assert lists(model.recommend(picked, 7)) == [everyone[i] for i in picked]
    assert lists(model.recommend(np.array([], np.int64), 7)) == []


def test_popularity_ranks_by_distinct_listeners_then_code():
    # Artist 2: three listeners (one of them with many plays); 0 and 4: two each; 1: one; 3: none.
    pairs = [(0, 2, 1), (1, 2, 1), (2, 2, 90), (0, 4, 5), (3, 4, 1), (1, 0, 1), (2, 0, 1), (3, 1, 7), (3, 1, 1)]
    u, a, p = (np.array(c) for c in zip(*pairs, strict=True))
    matrix = PlayMatrix.from_codes(u, a, p, 5, 5)
    listeners = Counter(artist for _, artist in {(user, artist) for user, artist, _ in pairs})
    expected = sorted(range(5), key=lambda artist: (-listeners.get(artist, 0), artist))
    assert popularity(matrix).tolist() == expected == [2, 0, 4, 1, 3]
    baseline = train(matrix, ModelConfig(algorithm="popularity")).recommend(np.arange(5), 3)
    assert lists(baseline) == [[0, 1, 3], [4, 1, 3], [4, 1, 3], [2, 0, 3], [2, 0, 4]]
    assert baseline.by_popularity.all() and not baseline.from_model.any()


def test_users_short_of_candidates_are_filled_from_popularity_and_marked():
    # Artists 0-3 are played by a crowd; artist 8 only by user 2, with 5 and 6; artist 9 only by user 0.
    crowd = [(user, artist) for user in range(3, 13) for artist in range(4)]
    crowd += [(user, 4 + user % 2) for user in range(3, 13)]
    pairs = [*crowd, (0, 9), (1, 8), (2, 8), (2, 5), (2, 6)]
    u, a = (np.array(c) for c in zip(*pairs, strict=True))
    matrix = PlayMatrix.from_codes(u, a, np.ones(len(u)), 13, 10)
    ranking = popularity(matrix).tolist()
    model = train(matrix, ModelConfig(algorithm="bm25", neighbours=5))
    recs = model.recommend(np.array([0, 1]), 6)
    # User 0's only artist has no neighbour but itself: every entry is popular.
    assert recs.from_model[0] == 0 and recs.by_popularity[0]
    assert lists(recs)[0] == [x for x in ranking if x != 9][:6]
    # User 1 gets 8's neighbours (5 and 6, by score) from the model, then popular artists.
    given = lists(recs)[1]
    assert recs.from_model[1] == 2 and recs.by_popularity[1]
    assert sorted(given[:2]) == [5, 6]
    assert given[2:] == [x for x in ranking if x not in (8, 5, 6)][:4]
    _, scores = recs.user(1)
    assert 0 < scores[2] < scores[1] and np.all(np.diff(scores) <= 0)
    # A user of the crowd has enough candidates for one: nothing from popularity.
    enough = model.recommend(np.array([3]), 1)
    assert enough.from_model[0] == 1 and not enough.by_popularity[0]


# ---------------------------------------------------------------------------------------------
# The neighbour models against their definition, computed densely
# ---------------------------------------------------------------------------------------------


def dense_similarity(plays: np.ndarray, algorithm: str, k1: float, b: float) -> np.ndarray:
    """Artist x artist similarity: weighted artist vectors (over users) multiplied together.
    The weights are implicit's definitions: artists are the documents, users the terms."""
    artists_by_users = plays.T
    n_docs = artists_by_users.shape[0]
    idf = np.log(n_docs) - np.log1p((artists_by_users > 0).sum(axis=0))
    if algorithm == "bm25":
        length = artists_by_users.sum(axis=1)
        norm = (1 - b) + b * length / length.mean()
        weights = artists_by_users * (k1 + 1) / (k1 * norm[:, None] + artists_by_users) * idf[None, :]
    else:
        weights = np.sqrt(artists_by_users) * idf[None, :] if algorithm == "tfidf" else artists_by_users.copy()
        norms = np.linalg.norm(weights, axis=1, keepdims=True)
        weights /= np.where(norms > 0, norms, 1)
    weights[artists_by_users == 0] = 0
    return weights @ weights.T


HISTORY = {"plays": lambda plays: plays, "log": np.log1p, "binary": lambda plays: (plays > 0).astype(float)}


def dense_recommend(
    plays: np.ndarray, algorithm: str, neighbours: int, n: int, k1: float, b: float, weight: str
) -> list[list[int]]:
    similarity = dense_similarity(plays, algorithm, k1, b)
    kept = np.zeros_like(similarity)
    for artist, row in enumerate(similarity):
        top = np.argsort(-row, kind="stable")[:neighbours]
        kept[artist, top] = row[top]
    listeners = (plays > 0).sum(axis=0)
    ranking = sorted(range(plays.shape[1]), key=lambda artist: (-listeners[artist], artist))
    out = []
    for history in plays:
        scores = HISTORY[weight](history) @ kept
        candidates = [a for a in range(plays.shape[1]) if history[a] == 0 and scores[a] > 0]
        chosen = sorted(candidates, key=lambda a: (-scores[a], a))[:n]
        chosen += [a for a in ranking if history[a] == 0 and a not in chosen][: n - len(chosen)]
        out.append(chosen)
    return out


@pytest.mark.parametrize(
    "algorithm,k1,b,weight",
    [
        ("bm25", 10.0, 0.5, "plays"),
        ("bm25", 100.0, 0.8, "log"),
        ("bm25", 1.2, 0.75, "binary"),
        ("tfidf", 0.0, 0.0, "plays"),
        ("cosine", 0.0, 0.0, "log"),
    ],
)
def test_neighbour_models_match_their_dense_definition(algorithm, k1, b, weight):
    # Continuous play counts: no two scores are equal, so the lists are fully determined.
    matrix = random_matrix(11, 40, 25, 260, continuous=True)
    plays = matrix.csr.toarray().astype(np.float64)
    config = ModelConfig(algorithm=algorithm, neighbours=6, bm25_k1=k1, bm25_b=b, history_weight=weight)
    got = lists(train(matrix, config).recommend(np.arange(40), 5))
    assert got == dense_recommend(plays, algorithm, 6, 5, k1, b, weight)


def test_equal_scores_are_ordered_by_artist_code():
    # User 0 played artist 0 only; artists 1-4 each have the same co-listening with it.
    pairs = [(0, 0)] + [(user, artist) for user in (1, 2) for artist in range(5)]
    u, a = (np.array(c) for c in zip(*pairs, strict=True))
    matrix = PlayMatrix.from_codes(u, a, np.ones(len(u)), 3, 5)
    recs = train(matrix, ModelConfig(algorithm="cosine", neighbours=5)).recommend(np.array([0]), 4)
    artists, scores = recs.user(0)
    assert len(set(scores.tolist())) == 1
    assert artists.tolist() == [1, 2, 3, 4]


# ---------------------------------------------------------------------------------------------
# Determinism
# ---------------------------------------------------------------------------------------------


def same(a: Recommendations, b: Recommendations) -> bool:
    return all(np.array_equal(getattr(a, f), getattr(b, f)) for f in ("ends", "artists", "scores", "from_model"))


@pytest.mark.parametrize("algorithm", EVERY_ALGORITHM)
def test_threads_do_not_change_the_result(algorithm):
    # More users than one scoring task takes, so two threads really split them.
    matrix = random_matrix(3, 9000, 200, 60_000)
    rows = np.arange(matrix.n_users)
    one = train(matrix, config(algorithm, threads=1)).recommend(rows, 10)
    two = train(matrix, config(algorithm, threads=2)).recommend(rows, 10)
    assert same(one, two)


@pytest.mark.parametrize("algorithm", ["als", "bpr", "random"])
def test_the_seed_decides_a_seeded_model(algorithm):
    matrix = random_matrix(4, 300, 60, 3000)
    rows = np.arange(matrix.n_users)
    first = train(matrix, config(algorithm, seed=1)).recommend(rows, 10)
    assert same(first, train(matrix, config(algorithm, seed=1)).recommend(rows, 10))
    assert not same(first, train(matrix, config(algorithm, seed=2)).recommend(rows, 10))


def test_the_matrix_does_not_depend_on_input_order_and_sums_repeated_pairs():
    rng = np.random.default_rng(8)
    u, a, p = rng.integers(0, 30, 400), rng.integers(0, 20, 400), rng.integers(1, 9, 400)
    order = rng.permutation(400)
    first = PlayMatrix.from_codes(u, a, p, 30, 20).csr
    second = PlayMatrix.from_codes(u[order], a[order], p[order], 30, 20).csr
    assert all(np.array_equal(getattr(first, f), getattr(second, f)) for f in ("indptr", "indices", "data"))
    totals: Counter = Counter()
    for user, artist, plays in zip(u.tolist(), a.tolist(), p.tolist(), strict=True):
        totals[user, artist] += plays
    dense = first.toarray()
    assert {(int(x), int(y)): float(dense[x, y]) for x, y in zip(*dense.nonzero(), strict=True)} == totals


# ---------------------------------------------------------------------------------------------
# Bad inputs: a ValueError naming what is wrong
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "u,a,p,fragment",
    [
        ([0, 1], [0], [1, 1], "differ in length"),
        ([0, 5], [0, 0], [1, 1], "user_codes: code 5 outside 0..2"),
        ([0, 1], [0, -1], [1, 1], "artist_codes: code -1 outside 0..3"),
        ([0.5], [0], [1], "user_codes: expected integer codes"),
        ([0, 1], [0, 1], [1, 0], "plays: every count must be a finite number above 0, got 0"),
        ([0], [1], [float("nan")], "plays: every count must be a finite number above 0, got nan"),
    ],
)
def test_bad_codes_or_plays_are_refused(u, a, p, fragment):
    with pytest.raises(ValueError, match=fragment.replace(".", r"\.")):
        PlayMatrix.from_codes(np.array(u), np.array(a), np.array(p), 3, 4)


@pytest.mark.parametrize(
    "field,value,fragment",
    [
        ("algorithm", "svd", "algorithm: unknown 'svd'"),
        ("history_weight", "squared", "history_weight: unknown 'squared'"),
        ("neighbours", 0, "neighbours: must be at least 1, got 0"),
        ("factors", 0, "factors: must be at least 1"),
        ("iterations", -1, "iterations: must be at least 1"),
        ("threads", -1, "threads: must be 0"),
        ("bm25_b", 1.5, "bm25_b: must be between 0 and 1"),
        ("bm25_k1", -1.0, "bm25_k1: must be 0 or more"),
        ("regularization", float("nan"), "regularization: must be 0 or more"),
        ("learning_rate", 0.0, "learning_rate: must be more than 0"),
        ("alpha", -2.0, "alpha: must be more than 0"),
    ],
)
def test_bad_configuration_is_refused(field, value, fragment):
    with pytest.raises(ValueError, match=fragment):
        ModelConfig(**{field: value})


def test_bad_recommend_arguments_are_refused():
    model = train(random_matrix(1, 10, 5, 30), ModelConfig(algorithm="cosine"))
    with pytest.raises(ValueError, match=r"rows: user code 10 outside 0\.\.9"):
        model.recommend(np.array([1, 10]), 3)
    with pytest.raises(ValueError, match="rows: expected a 1-D array"):
        model.recommend(np.zeros((2, 2), np.int64), 3)
    with pytest.raises(ValueError, match="rows: expected integer user codes"):
        model.recommend(np.array([0.0]), 3)
    with pytest.raises(ValueError, match="n: must be 0 or more, got -1"):
        model.recommend(np.array([0]), -1)


def test_an_empty_matrix_trains_and_answers_nothing():
    matrix = PlayMatrix.from_codes(np.array([], np.int64), np.array([], np.int64), np.array([]), 2, 0)
    for algorithm in ("bm25", "popularity"):
        recs = train(matrix, ModelConfig(algorithm=algorithm)).recommend(np.arange(2), 5)
        assert recs.counts().tolist() == [0, 0]


# ---------------------------------------------------------------------------------------------
# CPUs available
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content,limit",
    [
        ("max 100000\n", None),
        ("50000 100000\n", 1),
        ("150000 100000\n", 2),
        ("100000000 100000\n", None),
        ("garbage\n", None),
        ("", None),
    ],
)
def test_available_cpus_is_capped_by_the_cgroup_quota(tmp_path, content, limit):
    affinity = len(os.sched_getaffinity(0))
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text(content)
    assert available_cpus(cpu_max) == (affinity if limit is None else min(affinity, limit))
    assert available_cpus(tmp_path / "absent") == affinity
