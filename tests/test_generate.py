"""The synthetic data generator: deterministic bytes, valid CSV, and data that looks like listening."""

from __future__ import annotations

import argparse
import csv
import hashlib
import re
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest

from music_analytics.client.generate import CHUNK_ROWS, HEADER, add_arguments, generate, main

# More than one chunk, so chunk boundaries (time carried over, per-chunk generators) are covered.
EVENTS = CHUNK_ROWS + 40_000

TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gen") / "events.csv"
    generate(path, EVENTS, 7)
    return path


@pytest.fixture(scope="module")
def rows(big: Path) -> list[list[str]]:
    with big.open(newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path, big: Path) -> None:
    again = tmp_path / "again.csv"
    generate(again, EVENTS, 7)
    assert digest(again) == digest(big)
    other = tmp_path / "other.csv"
    generate(other, EVENTS, 8)
    assert digest(other) != digest(big)


def test_small_sizes_are_exact(tmp_path: Path) -> None:
    for n in (0, 1, 2, 999):
        path = tmp_path / f"n{n}.csv"
        generate(path, n, 1)
        lines = path.read_bytes().split(b"\n")
        assert lines[0] == HEADER.encode()
        assert lines[-1] == b""  # newline-terminated
        assert len(lines) == n + 2


def test_header_row_count_and_field_formats(rows: list[list[str]], big: Path) -> None:
    assert rows[0] == HEADER.split(",")
    data = rows[1:]
    assert len(data) == EVENTS
    assert all(len(r) == 5 for r in data)
    assert all(re.fullmatch(r"user_\d{6}", r[0]) for r in data)
    assert all(re.fullmatch(r"song_\d{7}", r[1]) for r in data)
    # The default output is plain: ASCII, no quoting needed or used.
    raw = big.read_bytes()
    assert raw.isascii()
    assert b'"' not in raw
    assert b"\r" not in raw
    durations = [int(r[3]) for r in data]
    assert min(durations) >= 1
    assert max(durations) <= 3600
    typical = sum(30 <= d <= 400 for d in durations) / len(durations)
    assert typical > 0.8, typical


def test_timestamps_iso_utc_and_ordered(rows: list[list[str]]) -> None:
    stamps = [r[4] for r in rows[1:]]
    assert all(TIMESTAMP.match(s) for s in stamps)
    assert stamps == sorted(stamps)
    first = datetime.fromisoformat(stamps[0])
    last = datetime.fromisoformat(stamps[-1])
    assert first.tzinfo is not None
    assert datetime(2026, 1, 1, tzinfo=UTC) <= first < last < datetime(2026, 2, 3, tzinfo=UTC)
    # Spread over weeks, not bunched: the middle event is near the middle of January.
    middle = datetime.fromisoformat(stamps[len(stamps) // 2])
    assert datetime(2026, 1, 10, tzinfo=UTC) < middle < datetime(2026, 1, 22, tzinfo=UTC)


def test_popularity_and_activity_are_heavy_tailed(rows: list[list[str]]) -> None:
    data = rows[1:]
    songs = Counter(r[1] for r in data)
    users = Counter(r[0] for r in data)
    artists = Counter(r[2] for r in data)
    n = len(data)
    # Realistic cardinalities for ~300k events (sub-linear scaling of 200k/400k/20k at 10M).
    assert 5_000 < len(users) < 30_000
    assert 15_000 < len(songs) < 80_000
    assert 1_000 < len(artists) < 6_000
    # Zipf-like songs: the top song far above a uniform share, the top 1% of songs a big slice.
    assert songs.most_common(1)[0][1] > 50 * n / len(songs)
    top1pct = sum(c for _, c in songs.most_common(len(songs) // 100))
    assert top1pct / n > 0.18, top1pct / n
    # Heavy-tailed users: the busiest far above the median, many light listeners.
    counts = sorted(users.values())
    median = counts[len(counts) // 2]
    assert counts[-1] > 20 * median
    assert counts[len(counts) // 10] <= median / 3


def test_users_have_taste(rows: list[list[str]]) -> None:
    """Each listener's top artist takes a much larger share of their plays than the most popular
    artist takes of everyone's: there is structure for recommendations to find."""
    data = rows[1:]
    global_top_share = Counter(r[2] for r in data).most_common(1)[0][1] / len(data)
    per_user: dict[str, Counter[str]] = {}
    for r in data:
        per_user.setdefault(r[0], Counter())[r[2]] += 1
    shares = [c.most_common(1)[0][1] / c.total() for c in per_user.values() if c.total() >= 20]
    assert len(shares) > 1000
    mean_share = sum(shares) / len(shares)
    assert mean_share > 3 * global_top_share, (mean_share, global_top_share)
    # And listeners do not all share one favourite.
    tops = Counter(c.most_common(1)[0][0] for c in per_user.values() if c.total() >= 20)
    assert tops.most_common(1)[0][1] / len(shares) < 0.5


def read_duckdb(path: Path) -> list[tuple[str, ...]]:
    return duckdb.sql(
        f"""SELECT * FROM read_csv('{path}', header = true, auto_detect = false, delim = ',',
            quote = '"', escape = '"',
            columns = {{'user_id': 'VARCHAR', 'song_id': 'VARCHAR', 'artist': 'VARCHAR',
                        'duration': 'VARCHAR', 'timestamp': 'VARCHAR'}})"""
    ).fetchall()


@pytest.mark.parametrize("crlf", [False, True], ids=["lf", "crlf"])
def test_tricky_mode_is_valid_rfc4180(tmp_path: Path, crlf: bool) -> None:
    path = tmp_path / "tricky.csv"
    generate(path, 30_000, 3, tricky=True, crlf=crlf)
    raw = path.read_bytes()
    assert not raw.isascii()
    assert b'""' in raw  # a doubled quote inside a quoted field
    assert raw.count(b"\r\n") == (30_001 if crlf else 0)
    with path.open(newline="", encoding="utf-8") as f:
        parsed = list(csv.reader(f, strict=True))
    assert parsed[0] == HEADER.split(",")
    assert len(parsed) == 30_001 and all(len(r) == 5 for r in parsed)
    artists = {r[2] for r in parsed[1:]}
    assert any("," in a for a in artists)
    assert any('"' in a for a in artists)
    assert any(not a.isascii() for a in artists)
    # Python's csv module and DuckDB read exactly the same rows.
    assert read_duckdb(path) == [tuple(r) for r in parsed[1:]]
    # The tricky names are among the most played, so top songs and trending exercise them.
    top = Counter(r[2] for r in parsed[1:]).most_common(3)
    assert any(not a.isascii() or "," in a or '"' in a for a, _ in top)


def test_crlf_changes_only_line_endings(tmp_path: Path) -> None:
    lf, crlf = tmp_path / "lf.csv", tmp_path / "crlf.csv"
    generate(lf, 5_000, 11)
    generate(crlf, 5_000, 11, crlf=True)
    assert crlf.read_bytes().replace(b"\r\n", b"\n") == lf.read_bytes()


def test_cli_entry(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = tmp_path / "sub" / "cli.csv"
    assert main(parser.parse_args(["--events", "1000", "--seed", "5", "--out", str(out)])) == 0
    direct = tmp_path / "direct.csv"
    generate(direct, 1000, 5)
    assert out.read_bytes() == direct.read_bytes()
    assert not list(out.parent.glob("*.partial"))
