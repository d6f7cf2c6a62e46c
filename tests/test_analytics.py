"""The analytics as plain functions, without gRPC: edge cases, and the bulk paths against the oracle."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from music_analytics.client.csv_source import read_events
from music_analytics.client.encoding import batches
from music_analytics.client.generate import generate
from music_analytics.services.common import columns
from music_analytics.services.common.columns import KeyCounter, drop_unused
from music_analytics.services.mapreduce.analytics import PlayCounter
from music_analytics.services.recommendation.analytics import Candidate, Recommender, trending
from music_analytics.services.userbehavior.analytics import UserStats
from tests.oracle import oracle


def test_two_splits_of_one_key_count_as_one_song():
    counter = PlayCounter()
    counter.add_events([("A - B", "C"), ("A", "B - C"), ("A", "B - C"), ("X", "y")])
    top = counter.top(10)
    assert [(s.song, s.plays) for s in top] == [("A - B - C", 3), ("X - y", 1)]
    assert (top[0].artist, top[0].song_id) == ("A", "B - C")  # the split with the smallest artist


def test_song_ties_by_key_and_top_n_cut():
    counter = PlayCounter()
    counter.add_events([(a, "s") for a in ["b", "a", "c", "a", "b", "d"]])
    assert [(s.song, s.plays) for s in counter.top(3)] == [("a - s", 2), ("b - s", 2), ("c - s", 1)]


def _add(stats: UserStats, rows: list[tuple[str, str, int]]) -> None:
    """(user, artist, duration) rows, all of one song at one instant."""
    columns_ = ([r[0] for r in rows], [r[1] for r in rows], ["s"] * len(rows))
    encoded = [pa.array(col).dictionary_encode() for col in columns_]
    stats.add_columns(
        *(part for e in encoded for part in (e.dictionary, e.indices.to_numpy())),
        np.array([r[2] for r in rows], dtype=np.uint32),
        np.zeros(len(rows), dtype=np.int64),
    )


def test_user_totals_are_exact_at_the_largest_durations():
    stats = UserStats()
    big = 2**32 - 1
    for _ in range(3):
        _add(stats, [("u", "A", big)] * 70_000)
    [chunk] = list(stats.summaries())
    assert chunk.total_time == [big * 210_000]  # far past 2^53: float sums would round


def test_top_artist_ties_by_name_and_top_users_by_id():
    stats = UserStats()
    _add(stats, [("u2", "b", 5), ("u2", "a", 5), ("u1", "Z", 5), ("u1", "é", 5), ("u3", "x", 10)])
    [chunk] = list(stats.summaries())
    assert dict(zip(chunk.user_ids, chunk.top_artist, strict=True)) == {"u2": "a", "u1": "Z", "u3": "x"}
    assert stats.top_users(2) == [("u1", 10), ("u2", 10)]


def test_recommendations_match_the_artist_exactly():
    top = trending(
        [Candidate("Abba - s1", "Abba", 9), Candidate("Ab - s2", "Ab", 8), Candidate("Abba - s3", "Abba", 7)]
    )
    rec = Recommender(top)
    assert rec.for_user("Ab") == ["Abba - s1", "Abba - s3"]
    assert rec.for_user("Abba") == ["Ab - s2"]
    assert rec.for_user("Queen") == ["Abba - s1", "Ab - s2", "Abba - s3"]
    assert rec.mask_for("Ab") == 0b101


def test_unused_dictionary_entries_are_dropped():
    dictionary = pa.array(["a", "b", "c", "d"])
    kept, idx = drop_unused(dictionary, np.array([3, 1, 3], dtype=np.uint32))
    assert kept.to_pylist() == ["b", "d"] and idx.tolist() == [1, 0, 1]


def test_key_counter_folds_to_the_same_counts():
    rng = np.random.default_rng(1)
    keys = rng.integers(0, 5000, size=200_000)
    counter = KeyCounter()
    counter.RUN_ROWS = 1000
    for part in np.array_split(keys, 97):
        counter.add(part)
    expected_keys, expected_counts = np.unique(keys, return_counts=True)
    for rows in (10, 777, 1 << 20):
        parts = list(counter.merged(rows=rows, align_bits=4))
        got_keys = np.concatenate([k for k, _ in parts])
        assert got_keys.tolist() == expected_keys.tolist()  # ascending, each key once
        assert np.concatenate([c for _, c in parts]).tolist() == expected_counts.tolist()
        # Aligned ranges never split keys that share their high bits.
        highs = [set((k >> 4).tolist()) for k, _ in parts]
        assert sum(len(h) for h in highs) == len(set().union(*highs))
    assert len(counter) == len(expected_keys)


@pytest.fixture
def small_flushes(monkeypatch):
    """Force many bulk mappings and folds on a small input, as 10M events would."""
    monkeypatch.setattr(columns.PendingBatches, "MIN_ROWS", 3000)
    monkeypatch.setattr(columns.KeyCounter, "RUN_ROWS", 5000)


def test_bulk_paths_equal_the_oracle(tmp_path, small_flushes):
    data = tmp_path / "events.csv"
    generate(data, 60_000, seed=5, tricky=True)
    counter, stats = PlayCounter(), UserStats()
    for chunk in read_events(data, chunk_bytes=300_000):
        for table in batches(chunk.table, rows=4096):
            cols = {c: table[c].combine_chunks() for c in ("user_id", "song_id", "artist")}
            cols = {c: a if pa.types.is_dictionary(a.type) else a.dictionary_encode() for c, a in cols.items()}
            counter.add_columns(
                cols["artist"].dictionary, cols["artist"].indices.to_numpy(),
                cols["song_id"].dictionary, cols["song_id"].indices.to_numpy(),
            )  # fmt: skip
            stats.add_columns(
                cols["user_id"].dictionary, cols["user_id"].indices.to_numpy(),
                cols["artist"].dictionary, cols["artist"].indices.to_numpy(),
                cols["song_id"].dictionary, cols["song_id"].indices.to_numpy(),
                table["duration"].combine_chunks().to_numpy(),
                table["timestamp"].combine_chunks().to_numpy(),
            )  # fmt: skip
    expected = oracle(data)
    assert [[s.song, s.plays] for s in counter.top(10)] == [list(x) for x in expected["top_songs"]]
    assert counter.distinct_songs == len(expected["song_counts"])
    users = {}
    for chunk in stats.summaries(1000):
        for u, t, a in zip(chunk.user_ids, chunk.total_time, chunk.top_artist, strict=True):
            users[u] = {"total_time": t, "top_artist": a}
    assert users == expected["users"]
    assert [u for u, _ in stats.top_users(5)] == expected["top_users"]


@pytest.mark.parametrize(("spread", "scale"), [(40, 1), (2**30, 2**28)], ids=["one-sort", "too-wide-for-one-key"])
def test_top_per_group_is_the_best_k_per_group_by_count_then_name(spread, scale):
    from music_analytics.services.userbehavior.analytics import top_per_group

    rng = np.random.default_rng(7)
    groups = np.sort(rng.choice(rng.integers(0, spread, size=40), size=3000))
    items = rng.integers(0, 50, size=3000)
    counts = rng.integers(1, 6, size=3000).astype(np.int64) * scale
    rank = rng.permutation(50)  # item -> position in name order
    got = top_per_group(groups, items, counts, rank, 4)
    expected = []
    for g in np.unique(groups):
        members = np.flatnonzero(groups == g)
        expected += sorted(members.tolist(), key=lambda i: (-counts[i], rank[items[i]]))[:4]
    assert [(groups[i], counts[i], rank[items[i]]) for i in got] == [
        (groups[i], counts[i], rank[items[i]]) for i in expected
    ]


def test_partitioned_counter_counts_as_one_counter_and_drains():
    from music_analytics.services.common.columns import PartitionedCounter

    rng = np.random.default_rng(3)
    keys = (rng.integers(0, 40, size=100_000) << 10) | rng.integers(0, 300, size=100_000)
    counter = PartitionedCounter(shift=10 + 3, run_rows=500)  # 8 high values per partition
    for part in np.array_split(keys, 61):
        counter.add(part)
    expected_keys, expected_counts = np.unique(keys, return_counts=True)
    for read in (counter.merged, counter.drain):
        parts = list(read(rows=777, align_bits=10))
        assert np.concatenate([k for k, _ in parts]).tolist() == expected_keys.tolist()
        assert np.concatenate([c for _, c in parts]).tolist() == expected_counts.tolist()
    assert len(counter) == 0 and counter.nbytes == 0  # drained
