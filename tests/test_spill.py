"""State past its memory budget goes to disk and comes back the same.

UserBehavior's counters and per-user lists are set aside in unnamed files once they pass the
call's budget (``--spill-after-bytes``, ``--spill-dir``). The answer must not change: the same
events give the same summaries spilled or not, the whole pipeline stays equal to the DuckDB
oracle user for user, nothing is left on disk, and a disk that refuses the writes fails the call
with RESOURCE_EXHAUSTED naming the directory while the service goes on serving.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pytest

from music_analytics.client.demo import LocalServices, start_service
from music_analytics.client.generate import generate
from music_analytics.services.common.columns import (
    KeyCounter,
    PartitionedCounter,
    PendingBatches,
    SpillError,
    SpillFile,
)
from music_analytics.services.userbehavior.analytics import UserStats
from tests.conftest import cli, run_pipeline
from tests.oracle import first_difference, oracle_stats
from tests.support.metrics import scrape, value


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("spill") / "events.csv"
    generate(path, 60_000, 3)
    return path


def test_a_spill_file_gives_back_every_array_as_written(tmp_path):
    file = SpillFile(str(tmp_path), budget=100)
    arrays = [np.arange(10, dtype=np.int64), np.array([7, 8], np.uint32), np.empty(0, np.int32), np.arange(1000)]
    segments = [file.write(a) for a in arrays]
    # The first 80 bytes fit the budget; the next arrays went to disk.
    assert segments[0].array is not None and segments[3].array is None
    assert file.resident == 88 and file.written == arrays[3].nbytes
    for array, segment in zip(arrays, segments, strict=True):
        back = file.read(segment)
        assert back.dtype == array.dtype and np.array_equal(back, array)
    # Unnamed: nothing in the directory, even while the file is open.
    assert list(tmp_path.iterdir()) == []
    file.close()


def test_a_spill_file_in_a_missing_directory_names_it(tmp_path):
    missing = tmp_path / "not-there"
    file = SpillFile(str(missing))
    with pytest.raises(SpillError) as err:
        file.write(np.arange(10))
    message = str(err.value)
    assert str(missing) in message and "No such file or directory" in message
    assert "--spill-dir" in message


def test_a_spill_file_past_the_disk_it_may_use_names_what_failed(tmp_path):
    # A file size limit is the one way to make a real write fail for lack of room without root.
    script = f"""
import resource, numpy as np
from music_analytics.services.common.columns import SpillFile, SpillError
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, 1 << 16))
file = SpillFile({str(tmp_path)!r})
file.write(np.zeros(1 << 12))
try:
    file.write(np.zeros(1 << 14))
except SpillError as exc:
    print(exc)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert "File too large" in proc.stdout and str(tmp_path) in proc.stdout, proc.stdout + proc.stderr
    assert "after 0 MiB" in proc.stdout


def test_counters_read_back_the_same_after_spilling(tmp_path):
    rng = np.random.default_rng(1)
    batches = [rng.integers(0, 1 << 20, 5000) << 8 | rng.integers(0, 200, 5000) for _ in range(40)]
    weights = [rng.integers(1, 5, 5000).astype(np.uint32) if i % 3 == 0 else None for i in range(40)]
    plain = KeyCounter()
    file = SpillFile(str(tmp_path))
    spilled = PartitionedCounter(shift=24, run_rows=1000, spill=file, budget=30_000)
    for keys, w in zip(batches, weights, strict=True):
        plain.add(keys, w)
        spilled.add(keys, w)
        assert spilled.nbytes <= 30_000 + 16 * 5000  # at most one batch past the budget before it spills
    assert file.written > 0
    want = [np.concatenate(part) for part in zip(*plain.merged(), strict=True)]
    got = [np.concatenate(part) for part in zip(*spilled.drain(rows=700, align_bits=8), strict=True)]
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


def _summaries(stats: UserStats) -> list[dict]:
    out = []
    for chunk in stats.summaries(chunk=9, entries=40):
        lists = {
            name: (getattr(chunk, name).ends.tolist(), getattr(chunk, name).keys.tolist(),
                   getattr(chunk, name).counts.tolist())
            for name in ("top_artists", "top_songs", "daily_activity", "monthly_activity", "artist_plays")
        }  # fmt: skip
        out.append(
            {
                "users": chunk.user_ids,
                "time": chunk.total_time,
                "top": chunk.top_artist,
                "plays": chunk.plays,
                # Keys are ids: compare what they name.
                "artists": pc.take(chunk.artists, pa.array(lists["artist_plays"][1])).to_pylist(),
                "songs": pc.take(chunk.songs.key, pa.array(lists["top_songs"][1])).to_pylist(),
                "lists": {k: (v[0], v[2]) for k, v in lists.items()},
                "when": (lists["daily_activity"][1], lists["monthly_activity"][1]),
            }
        )
    return out


def _feed(stats: UserStats, path: Path) -> None:
    table = pa_csv.read_csv(path)
    ts = pc.cast(pc.cast(table["timestamp"], pa.timestamp("s", tz="UTC")), pa.int64()).to_numpy()
    for start in range(0, table.num_rows, 7000):
        part = table.slice(start, 7000)
        cols = {n: pc.dictionary_encode(part[n].combine_chunks()) for n in ("user_id", "artist", "song_id")}
        stats.add_columns(
            cols["user_id"].dictionary, cols["user_id"].indices.to_numpy(),
            cols["artist"].dictionary, cols["artist"].indices.to_numpy(),
            cols["song_id"].dictionary, cols["song_id"].indices.to_numpy(),
            part["duration"].to_numpy().astype(np.uint32), ts[start : start + 7000],
            np.arange(len(ts[start : start + 7000]), dtype=np.uint32) % 3 + 1,
        )  # fmt: skip


def test_user_summaries_are_the_same_spilled_or_not(events, tmp_path, monkeypatch):
    held = UserStats("Europe/Berlin")
    held.artist_plays = True
    _feed(held, events)
    want = _summaries(held)
    # A budget of a few hundred KB and buckets of 100 users: every counter spills many times, the
    # lists mostly go to disk, and the users of one chunk come from several buckets' reads.
    monkeypatch.setattr(UserStats, "BUCKET_USERS", 100)
    # Messages mapped every few thousand rows, so flushes run behind the feeding thread.
    monkeypatch.setattr(PendingBatches, "MIN_ROWS", 5000)
    spilled = UserStats("Europe/Berlin", memory_budget=400_000, spill_dir=str(tmp_path))
    spilled.artist_plays = True
    _feed(spilled, events)
    assert spilled._worker is not None
    got = _summaries(spilled)
    # The counters spilled, were read back, and their file was let go before the answer was built.
    assert spilled._counters_file.written > 0 and spilled._counters_file._file is None
    assert spilled._lists_file.written > 0
    assert list(tmp_path.iterdir()) == []
    assert len(got) > len(want)  # a chunk never spans two buckets
    flat = {k: [x for c in got for x in c[k]] for k in ("users", "time", "top", "plays")}
    assert flat == {k: [x for c in want for x in c[k]] for k in ("users", "time", "top", "plays")}
    assert sum(len(c["users"]) for c in got) == held.distinct_users
    assert _per_user(got) == _per_user(want)
    spilled.close()


def _per_user(chunks: list[dict]) -> dict[str, tuple]:
    """Each user's lists, named, whatever chunk they came in."""
    out = {}
    for c in chunks:
        starts = {k: [0, *v[0][:-1]] for k, v in c["lists"].items()}
        for i, user in enumerate(c["users"]):
            entry = []
            for k, (ends, counts) in c["lists"].items():
                entry.append((k, counts[starts[k][i] : ends[i]]))
            a0, a1 = starts["artist_plays"][i], c["lists"]["artist_plays"][0][i]
            s0, s1 = starts["top_songs"][i], c["lists"]["top_songs"][0][i]
            d0, d1 = starts["daily_activity"][i], c["lists"]["daily_activity"][0][i]
            m0, m1 = starts["monthly_activity"][i], c["lists"]["monthly_activity"][0][i]
            entry += [c["artists"][a0:a1], c["songs"][s0:s1], c["when"][0][d0:d1], c["when"][1][m0:m1]]
            out[user] = tuple(map(str, entry))
    return out


@pytest.fixture(scope="module")
def spilling_services(tmp_path_factory: pytest.TempPathFactory):
    """Services whose calls may hold 1 MiB before spilling, into a directory of their own."""
    spill = tmp_path_factory.mktemp("spill-dir")
    env = {"MUSIC_ANALYTICS_SPILL_AFTER_BYTES": "1Mi", "MUSIC_ANALYTICS_SPILL_DIR": str(spill)}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with LocalServices(replicas=1, log_dir=tmp_path_factory.mktemp("logs")) as running:
            yield running, spill
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_a_pipeline_whose_state_spills_matches_the_oracle(events, spilling_services, tmp_path):
    running, spill = spilling_services
    results = run_pipeline(running, events, tmp_path / "r.json", "--timezone", "Asia/Kolkata")
    lines = [json.loads(line) for line in (tmp_path / "r.users.jsonl").read_text(encoding="utf-8").splitlines()]
    want = oracle_stats(events, "Asia/Kolkata")
    assert first_difference(lines, want["user_lines"], "user_lines") is None
    assert first_difference(results["listening_stats"], want["listening_stats"], "listening_stats") is None
    assert list(spill.iterdir()) == []
    metrics = scrape(running.processes["userbehavior"][0])
    assert value(metrics, "music_analytics_calls_rejected_total", service="userbehavior", reason="spill_failed") == 0


def test_a_disk_that_refuses_the_spill_fails_the_call_and_the_service_serves_on(events, tmp_path):
    env = {"MUSIC_ANALYTICS_SPILL_AFTER_BYTES": "1Mi", "MUSIC_ANALYTICS_SPILL_DIR": str(tmp_path)}
    # A file size limit is the one way to make real writes fail for lack of room without root. The
    # child inherits it; Python ignores SIGXFSZ, so a write past it fails with EFBIG.
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, hard))
    try:
        ub = start_service("userbehavior", tmp_path / "ub.log", extra_env=env)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    others = [start_service(n, tmp_path / f"{n}.log") for n in ("mapreduce", "recommendation")]
    try:
        for process in (ub, *others):
            process.wait_serving()
        names = ("userbehavior", "mapreduce", "recommendation")
        targets = {name: p.address for name, p in zip(names, (ub, *others), strict=True)}
        args = ["run", "--data", str(events), "--out", str(tmp_path / "r.json"), "--quiet"]
        proc = cli(*args, *(x for n, a in targets.items() for x in (f"--{n}", a)))
        assert proc.returncode != 0
        assert "RESOURCE_EXHAUSTED" in proc.stderr and "File too large" in proc.stderr, proc.stderr
        assert str(tmp_path) in proc.stderr and "--spill-dir" in proc.stderr
        metrics = scrape(ub)
        assert value(metrics, "music_analytics_calls_rejected_total", service="userbehavior",
                     reason="spill_failed") == 1  # fmt: skip
        # The same service answers a call that fits in memory.
        small = tmp_path / "small.csv"
        generate(small, 500, 1)
        ok = cli("run", "--data", str(small), "--out", str(tmp_path / "s.json"), "--quiet",
                 *(x for n, a in targets.items() for x in (f"--{n}", a)))  # fmt: skip
        assert ok.returncode == 0, ok.stderr
    finally:
        for process in (ub, *others):
            process.stop()
    assert "Traceback" not in (tmp_path / "ub.log").read_text()


def test_summaries_go_in_messages_under_the_limit_whatever_the_users(events):
    from music_analytics.services.userbehavior.servicer import sized_messages, summaries_message

    stats = UserStats("UTC")
    stats.artist_plays = True
    _feed(stats, events)
    whole = [summaries_message(chunk) for chunk in stats.summaries(chunk=100_000)]
    # Limits a few times smaller than one user-count chunk's message: pieces are sized from the
    # bytes per user seen, and one past the limit is built again smaller.
    target, limit = 30_000, 60_000
    messages = list(sized_messages(stats.summaries(chunk=100_000), target=target, limit=limit))
    assert len(messages) > 10
    sizes = [m.ByteSize() for m in messages]
    assert max(sizes) <= limit or all(len(m.user_ids) == 1 for m in messages if m.ByteSize() > limit)
    assert sum(sizes) / len(sizes) > target / 3  # not a message a user
    assert [u for m in messages for u in m.user_ids] == [u for m in whole for u in m.user_ids]
    assert [t for m in messages for t in m.total_time] == [t for m in whole for t in m.total_time]


def test_a_spill_that_fails_behind_the_feeding_thread_fails_the_call(events, tmp_path, monkeypatch):
    monkeypatch.setattr(PendingBatches, "MIN_ROWS", 5000)
    stats = UserStats("UTC", memory_budget=100_000, spill_dir=str(tmp_path / "gone"))
    with pytest.raises(SpillError) as err:
        _feed(stats, events)
        list(stats.summaries())
    assert str(tmp_path / "gone") in str(err.value)
    assert stats._worker is not None  # it was a flush in the worker that failed
    stats.close()
