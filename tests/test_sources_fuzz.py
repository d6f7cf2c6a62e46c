"""Fuzzing the importers: a sample of each format, damaged at random, is read without any error
but InputError (for the whole input) and rejections (for records), and the same way every time.

What is generated: a sample file of a record format (ListenBrainz JSON Lines and JSON array,
Spotify JSON array, Last.fm-1K TSV, a scrobble CSV) or of play counts (TSV, CSV) with up to six
edits: bytes inserted, deleted or replaced by JSON and CSV syntax, invalid UTF-8, line breaks,
numbers, nulls. Each is read with its format forced. The only outcomes allowed: InputError
naming the file; or chunks whose rows are well formed (non-empty strings, timestamps the
services accept, play counts of at least 1), whose rejections name the file, a known reason and
a place, and which a strict read and a replayed prefix reproduce.

Examples per run in `make test` (tests/fuzzing.py): 300, a few seconds.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, note
from hypothesis import strategies as st

from music_analytics.client.csv_source import BadRowError, InputError
from music_analytics.client.sources import REJECT_REASONS, SKIP_REASONS, open_source
from music_analytics.services.common.contract import MAX_TIMESTAMP, MIN_TIMESTAMP
from tests.fuzzing import fuzz_settings

SAMPLES = Path(__file__).resolve().parent.parent / "data" / "samples"
CASES = [
    ("listenbrainz_listens.jsonl", "listenbrainz"),
    ("listenbrainz_carol.json", "listenbrainz"),
    ("spotify-bad.json", "spotify"),
    ("lastfm-1k.tsv", "lastfm-1k"),
    ("lastfm_scrobbles.csv", "lastfm-scrobbles"),
    ("playcounts.tsv", "playcounts"),
    ("playcounts-bad.csv", "playcounts"),
]
JUNK = [b'"', b",", b"{", b"}", b"[", b"]", b":", b"\n", b"\r\n", b"\t", b"\xff", b"\xc3", b"null", b"-1", b"1e999",
        b"\x00", b"\\", b'"listened_at": ', b'"ts": "', b"\xef\xbb\xbf", b"0", b"4294967296", b"--",
        b"9" * 4400]  # fmt: skip


@st.composite
def damaged(draw: st.DrawFn) -> tuple[bytes, str, str]:
    name, format = draw(st.sampled_from(CASES))
    data = (SAMPLES / name).read_bytes()
    for _ in range(draw(st.integers(0, 6))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["insert", "delete", "replace"]))
        junk = draw(st.sampled_from(JUNK))
        if kind == "insert":
            data = data[:at] + junk + data[at:]
        elif kind == "delete":
            data = data[:at] + data[at + draw(st.integers(1, 40)) :]
        else:
            data = data[:at] + junk + data[at + len(junk) :]
    return data, Path(name).suffix, format


@fuzz_settings(300, deadline_ms=10_000)
@given(case=damaged(), rows_per_chunk=st.sampled_from([1, 3, 1000]))
def test_damaged_samples_are_read_without_crashing_and_reproducibly(tmp_path_factory, case, rows_per_chunk):
    from music_analytics.client.sources import records

    data, suffix, format = case
    path = tmp_path_factory.mktemp("fuzz-sources") / f"history{suffix}"
    path.write_bytes(data)
    note(f"{format}: {data[:2000]!r}")
    original = records.CHUNK_ROWS
    records.CHUNK_ROWS = rows_per_chunk
    try:
        try:
            source = open_source(path, format=format, user="fallback")
        except InputError as exc:
            assert str(exc).startswith(str(path)), exc
            return
        chunks = list(source.chunks())
        rejected = [r for c in chunks for r in c.rejected]
        for chunk in chunks:
            for row in chunk.table.to_pylist():
                if source.kind == "playcounts":
                    assert list(row) == ["user_id", "artist", "plays"], row
                    assert all(isinstance(row[c], str) and row[c] for c in ("user_id", "artist")), row
                    assert 1 <= row["plays"] < 2**32, row
                    continue
                assert all(isinstance(row[c], str) and row[c] for c in ("user_id", "song_id", "artist")), row
                assert MIN_TIMESTAMP <= row["timestamp"] < MAX_TIMESTAMP, row
            assert set(chunk.skipped) <= set(SKIP_REASONS)
        for r in rejected:
            assert r.reason in REJECT_REASONS and r.source == str(path) and r.line >= 1, r
            assert r.describe("?").startswith(str(path))
        offsets = [c.end_offset for c in chunks]
        assert offsets == sorted(offsets) and (not offsets or offsets[-1] == source.total_bytes)
        if rejected:
            with pytest.raises(BadRowError, match=f"^{re.escape(rejected[0].describe('?'))}$"):
                list(source.chunks(strict=True))
        k = len(chunks) // 2
        replay = list(source.chunks(stop_after=k))
        assert [(c.table, c.rejected) for c in replay] == [(c.table, c.rejected) for c in chunks[:k]]
    finally:
        records.CHUNK_ROWS = original
