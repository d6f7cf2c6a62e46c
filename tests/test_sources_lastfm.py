"""Last.fm histories: the Last.fm-1K TSV and scrobble-export CSVs read as their own fields say,
every kind of bad line rejected with its line number, the rest kept."""

from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path

import pytest

from music_analytics.client.csv_source import BadRowError, InputError
from music_analytics.client.sources import open_source

SAMPLES = Path(__file__).resolve().parent.parent / "data" / "samples"


def read_all(spec, **kwargs) -> tuple[list[dict], list]:
    rows, rejected = [], []
    for chunk in open_source(spec, **kwargs).chunks():
        rows.extend(chunk.table.to_pylist())
        rejected.extend(chunk.rejected)
    return rows, rejected


def utc(text: str, form: str) -> int:
    return int(dt.datetime.strptime(text, form).replace(tzinfo=dt.UTC).timestamp())


def test_lastfm_1k_sample():
    lines = (SAMPLES / "lastfm-1k.tsv").read_text().splitlines()
    rows, rejected = read_all(SAMPLES / "lastfm-1k.tsv")
    assert rejected == []
    expected = []
    for line in lines:
        user, stamp, _, artist, track_mbid, track = line.split("\t")
        expected.append({"user_id": user, "song_id": track_mbid or track, "artist": artist, "duration": 0,
                         "timestamp": utc(stamp, "%Y-%m-%dT%H:%M:%SZ")})  # fmt: skip
    assert rows == expected
    assert {r["user_id"] for r in rows} == {"user_000001", "user_000002", "user_000003"}
    assert any(r["song_id"] == line.split("\t")[5] for r, line in zip(rows, lines, strict=True))  # a track with no MBID


def test_lastfm_1k_bad_lines():
    rows, rejected = read_all(SAMPLES / "lastfm-1k-bad.tsv")
    assert [(r.line, r.reason, r.field) for r in rejected] == [
        (2, "wrong_field_count", None),
        (3, "invalid_timestamp", "timestamp"),
        (4, "empty_field", "artist-name"),
        (5, "empty_field", "userid"),
    ]
    assert len(rows) == 2
    with pytest.raises(BadRowError, match=f"^{SAMPLES / 'lastfm-1k-bad.tsv'}:2: expected 6 tab-separated fields"):
        list(open_source(SAMPLES / "lastfm-1k-bad.tsv").chunks(strict=True))


def test_lastfm_1k_quotes_are_text(tmp_path):
    path = tmp_path / "listens.tsv"
    path.write_text('u1\t2009-05-04T23:08:57Z\t\t"Weird Al" Yankovic\t\tWhite & Nerdy\n')
    rows, _ = read_all(path)
    assert rows[0]["artist"] == '"Weird Al" Yankovic' and rows[0]["song_id"] == "White & Nerdy"


def test_scrobble_export_sample():
    path = SAMPLES / "lastfm_scrobbles.csv"
    with path.open(newline="") as f:
        expected = [
            {"user_id": "fred", "song_id": track, "artist": artist, "duration": 0,
             "timestamp": utc(date, "%d %b %Y %H:%M")}
            for artist, _, track, date in csv.reader(f)
        ]  # fmt: skip
    rows, rejected = read_all(path, user="fred")
    assert rejected == [] and rows == expected and len(rows) == 25


def test_scrobble_export_with_a_header_line_and_uts(tmp_path):
    path = tmp_path / "scrobbles.csv"
    path.write_text("uts,utc_time,artist,artist_mbid,album,album_mbid,track,track_mbid\n"
                    "1612101900,\"31 Jan 2021, 14:05\",Radiohead,,OK Computer,,Airbag,\n")  # fmt: skip
    rows, rejected = read_all(path, user="fred", format="lastfm-scrobbles")
    assert rejected == [] and rows == [
        {"user_id": "fred", "song_id": "Airbag", "artist": "Radiohead", "duration": 0, "timestamp": 1612101900}
    ]
    assert utc("31 Jan 2021 14:05", "%d %b %Y %H:%M") == 1612101900
    plain = tmp_path / "plain.csv"
    plain.write_text("artist,album,track,date\nRadiohead,OK Computer,Airbag,31 Jan 2021 14:05\n")
    assert read_all(plain, user="fred")[0] == rows


def test_scrobble_export_bad_lines():
    path = SAMPLES / "lastfm-scrobbles-bad.csv"
    rows, rejected = read_all(path, user="fred")
    assert [(r.line, r.reason, r.field) for r in rejected] == [
        (2, "wrong_field_count", None),
        (3, "invalid_timestamp", "date"),
        (4, "empty_field", "artist"),
        (5, "empty_field", "track"),
    ]
    assert len(rows) == 2
    with pytest.raises(BadRowError, match=f"^{path}:2: expected 4 fields, found 3"):
        list(open_source(path, user="fred").chunks(strict=True))


def test_scrobble_export_needs_a_user():
    with pytest.raises(InputError, match=r"lastfm_scrobbles\.csv: .*names no user; pass --user NAME"):
        open_source(SAMPLES / "lastfm_scrobbles.csv")


@pytest.mark.parametrize(
    ("uts", "message"),
    [
        ("--5", "uts '--5' is not a whole number of seconds"),
        ("5-", "uts '5-' is not a whole number of seconds"),
        ("٣", "uts '٣' is not a whole number of seconds"),
        ("9" * 5000, "uts of 5000 digits is outside the times accepted, 1900-01-01 up to 2200-01-01 UTC"),
        ("-" + "9" * 20, "uts of 21 digits is outside the times accepted, 1900-01-01 up to 2200-01-01 UTC"),
    ],
    ids=["two-signs", "sign-after", "non-ascii-digit", "5000-digits", "21-digits"],
)
def test_a_uts_that_is_not_a_time_is_rejected_not_a_crash(tmp_path, uts, message):
    """int() raised ValueError on "--5" (which passed a check of the digits after the signs) and
    on more than 4300 digits: the read stopped instead of rejecting the line."""
    path = tmp_path / "scrobbles.csv"
    path.write_text(f"uts,artist,track\n1612101900,A,T\n{uts},A,T\n")
    rows, rejected = read_all(path, user="fred")
    assert len(rows) == 1
    assert [(r.line, r.reason, r.field, r.message) for r in rejected] == [(3, "invalid_timestamp", "uts", message)]
