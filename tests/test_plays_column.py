"""Rows that stand for many plays (a `plays` column): the services count a row of k plays as k
rows of one. The oracle is the same events expanded, one row per play."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pytest

from music_analytics.api import events_pb2
from music_analytics.services.common.columns import InvalidBatchError, KeyCounter, PartitionedCounter
from music_analytics.services.common.events import decode_chunk
from music_analytics.services.mapreduce.analytics import PlayCounter
from music_analytics.services.userbehavior.analytics import UserStats


def _events(seed: int, rows: int = 3000) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "user": rng.integers(0, 40, rows),
        "artist": rng.integers(0, 15, rows),
        "song": rng.integers(0, 6, rows),
        "duration": rng.integers(0, 400, rows).astype(np.uint32),
        "timestamp": rng.integers(1_600_000_000, 1_700_000_000, rows),
        "plays": rng.integers(1, 6, rows).astype(np.uint32),
    }


def _expanded(ev: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One row per play; the row's duration goes with its first play."""
    repeat = ev["plays"].astype(np.int64)
    out = {k: np.repeat(v, repeat) for k, v in ev.items() if k != "plays"}
    first = np.concatenate(([0], np.cumsum(repeat)[:-1]))
    duration = np.zeros(int(repeat.sum()), dtype=np.uint32)
    duration[first] = ev["duration"]
    out["duration"] = duration
    return out


def _dictionary(values: np.ndarray, prefix: str) -> tuple[pa.Array, np.ndarray]:
    encoded = pa.array([f"{prefix}{v}" for v in values]).dictionary_encode()
    return encoded.dictionary, encoded.indices.to_numpy().astype(np.uint32)


def _user_stats(ev: dict[str, np.ndarray], plays: np.ndarray | None) -> UserStats:
    stats = UserStats("Europe/Berlin")
    stats.artist_plays = True
    for lo in range(0, len(ev["user"]), 1000):
        part = {k: v[lo : lo + 1000] for k, v in ev.items()}
        stats.add_columns(
            *_dictionary(part["user"], "u"),
            *_dictionary(part["artist"], "a"),
            *_dictionary(part["song"], "s"),
            part["duration"],
            part["timestamp"],
            None if plays is None else plays[lo : lo + 1000],
        )
    return stats


def _plain(stats: UserStats) -> list[dict]:
    out = []
    for chunk in stats.summaries(7):
        row = dataclasses.asdict(chunk)
        # Ids are first-seen order, which differs between the two inputs: compare names.
        names = {
            "top_artists": chunk.artists,
            "artist_plays": chunk.artists,
            "top_songs": chunk.songs.key,
            "daily_activity": None,
            "monthly_activity": None,
        }
        for name, values in names.items():
            lists = getattr(chunk, name)
            keys = lists.keys.tolist() if values is None else values.take(pa.array(lists.keys)).to_pylist()
            entries = list(zip(keys, lists.counts.tolist(), strict=True))
            per_user = np.split(np.arange(len(entries)), lists.ends[:-1].astype(np.int64))
            # artist_plays is in no particular order within a user
            row[name] = [
                sorted(entries[i] for i in user) if name == "artist_plays" else [entries[i] for i in user]
                for user in per_user
            ]
        row.pop("artists"), row.pop("songs")
        out.append(row)
    return out


@pytest.mark.parametrize("seed", [1, 2])
def test_user_behaviour_counts_a_row_of_k_plays_as_k_plays(seed):
    ev = _events(seed)
    weighted = _user_stats(ev, ev["plays"])
    expanded = _user_stats(_expanded(ev), None)
    assert _plain(weighted) == _plain(expanded)
    w, e = weighted.site_activity(), expanded.site_activity()
    assert w.daily_activity.tolist() == e.daily_activity.tolist()
    assert w.day_counts.tolist() == e.day_counts.tolist()
    assert w.artist_counts.tolist() == e.artist_counts.tolist()
    assert weighted.top_users(5) == expanded.top_users(5)


def test_map_reduce_counts_a_row_of_k_plays_as_k_plays():
    ev = _events(3)
    weighted, expanded = PlayCounter(), PlayCounter()
    weighted.add_columns(*_dictionary(ev["artist"], "a"), *_dictionary(ev["song"], "s"), ev["plays"])
    ex = _expanded(ev)
    expanded.add_columns(*_dictionary(ex["artist"], "a"), *_dictionary(ex["song"], "s"))
    assert weighted.top(1000) == expanded.top(1000)
    assert weighted.events == len(ev["user"])  # rows received, as the client counts what it sent


def test_weighted_counts_pass_32_bits_exactly():
    counter = KeyCounter()
    counter.RUN_ROWS = 4
    counter.add(np.array([7, 7, 3], dtype=np.int64))  # sealed later as uint32 counts
    big = np.full(3, 2**32 - 1, dtype=np.uint32)
    for _ in range(3):
        counter.add(np.array([7, 7, 9], dtype=np.int64), big)
    [(keys, counts)] = list(counter.merged())
    assert keys.tolist() == [3, 7, 9]
    assert counts.tolist() == [1, 2 + 6 * (2**32 - 1), 3 * (2**32 - 1)]


def test_partitioned_counter_keeps_weights_with_their_keys():
    counter = PartitionedCounter(shift=4)
    keys = np.array([1, 17, 2, 33, 17, 1], dtype=np.int64)
    counter.add(keys, np.array([5, 1, 2, 7, 3, 1], dtype=np.uint32))
    merged = [(k.tolist(), c.tolist()) for k, c in counter.merged()]
    assert merged == [([1, 2], [6, 2]), ([17], [4]), ([33], [7])]


def _batch(plays: bytes) -> events_pb2.EventChunk:
    dictionary = events_pb2.StringArray(offsets=np.array([0, 1], dtype="<i4").tobytes(), data=b"x")
    column = events_pb2.DictionaryColumn(dictionary=dictionary, indices=np.zeros(2, dtype="<u4").tobytes())
    return events_pb2.EventChunk(
        batch=events_pb2.EventBatch(num_rows=2, user_id=column, song_id=column, artist=column, plays=plays)
    )


def test_a_plays_column_is_decoded_and_checked():
    decoded = decode_chunk(_batch(np.array([3, 1], dtype="<u4").tobytes()), ("artist",))
    assert decoded.plays.tolist() == [3, 1]
    assert decode_chunk(_batch(np.ones(2, dtype="<u4").tobytes()), ("artist",)).plays is None  # all ones: plain
    with pytest.raises(InvalidBatchError, match=r"plays: row 1 stands for 0 plays"):
        decode_chunk(_batch(np.array([3, 0], dtype="<u4").tobytes()), ("artist",))
    with pytest.raises(InvalidBatchError, match=r"plays: expected 2 uint32 values"):
        decode_chunk(_batch(b"\x01\x00\x00\x00"), ("artist",))


def test_records_carry_plays_and_zero_means_one():
    records = events_pb2.PlayEvents(
        events=[
            events_pb2.PlayEvent(user_id="u", song_id="s", artist="a", timestamp="2024-01-01T00:00:00Z", plays=4),
            events_pb2.PlayEvent(user_id="u", song_id="s", artist="a", timestamp="2024-01-01T00:00:00Z"),
        ]
    )
    decoded = decode_chunk(events_pb2.EventChunk(records=records), ("artist",))
    assert decoded.plays.tolist() == [4, 1]


def test_summaries_split_so_no_message_carries_too_many_artist_entries():
    ev = _events(4)
    stats = _user_stats(ev, None)
    chunks = list(stats.summaries(chunk=1000, entries=25))
    sizes = [int(c.artist_plays.ends[-1]) for c in chunks]
    per_user = [int(e) for c in chunks for e in np.diff(np.concatenate(([0], c.artist_plays.ends)))]
    assert all(size <= 25 or len(c.user_ids) == 1 for size, c in zip(sizes, chunks, strict=True))
    assert len(chunks) > 1 and sum(len(c.user_ids) for c in chunks) == stats.distinct_users
    assert sum(per_user) == len(set(zip(ev["user"].tolist(), ev["artist"].tolist(), strict=True)))
    one = list(stats.summaries(chunk=1000, entries=1))  # a user with more entries still gets a message
    assert [len(c.user_ids) for c in one] == [1] * stats.distinct_users
