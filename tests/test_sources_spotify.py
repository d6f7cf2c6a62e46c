"""Spotify's Extended Streaming History: the sample zip read as its own fields say (the start of
each stream, not its end), podcasts and audiobooks skipped and counted, bad streams rejected
with their record number."""

from __future__ import annotations

import datetime as dt
import json
import math
import zipfile
from pathlib import Path

import pytest

from music_analytics.client.csv_source import BadRowError, InputError
from music_analytics.client.sources import open_source

SAMPLES = Path(__file__).resolve().parent.parent / "data" / "samples"


def read_all(spec, **kwargs) -> tuple[list[dict], list, dict]:
    rows, rejected, skipped = [], [], {}
    for chunk in open_source(spec, **kwargs).chunks():
        rows.extend(chunk.table.to_pylist())
        rejected.extend(chunk.rejected)
        for reason, n in chunk.skipped.items():
            skipped[reason] = skipped.get(reason, 0) + n
    return rows, rejected, skipped


def ended(stream: dict) -> float:
    return dt.datetime.strptime(stream["ts"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC).timestamp()


def test_the_sample_export_zip_reads_the_audio_files_only():
    path = SAMPLES / "spotify_extended_history.zip"
    with zipfile.ZipFile(path) as archive:
        audio = sorted(n for n in archive.namelist() if "Streaming_History_Audio_" in n)
        streams = [s for n in audio for s in json.loads(archive.read(n))]
    source = open_source(path, user="sam")
    assert source.format == "spotify" and source.files == [f"{path}:{n}" for n in audio]
    assert {Path(n.split(":", 1)[1]).name for n in source.ignored} == {
        "Streaming_History_Video_2024.json",
        "ReadMeFirst_ExtendedStreamingHistory.pdf",
    }
    rows, rejected, skipped = read_all(path, user="sam")
    tracks = [s for s in streams if s["spotify_track_uri"]]
    assert rejected == []
    assert rows == [
        {
            "user_id": "sam",
            "song_id": s["spotify_track_uri"],
            "artist": s["master_metadata_album_artist_name"],
            "duration": s["ms_played"] // 1000,
            "timestamp": math.floor(ended(s) - s["ms_played"] / 1000),
        }
        for s in tracks
    ]
    assert skipped == {
        "spotify_podcast": sum(1 for s in streams if s["spotify_episode_uri"]),
        "spotify_audiobook": sum(1 for s in streams if s["audiobook_uri"]),
    }
    assert skipped == {"spotify_podcast": 2, "spotify_audiobook": 2}


def test_the_timestamp_is_when_the_stream_started(tmp_path):
    stream = {"ts": "2024-03-31T01:00:01Z", "username": "u", "ms_played": 1500,
              "master_metadata_album_artist_name": "A", "spotify_track_uri": "spotify:track:x"}  # fmt: skip
    path = tmp_path / "Streaming_History_Audio_2024.json"
    path.write_text(json.dumps([stream, stream | {"ms_played": 2000}, stream | {"ms_played": 0}]))
    rows, _, _ = read_all(path)
    start = int(dt.datetime(2024, 3, 31, 0, 59, 59, tzinfo=dt.UTC).timestamp())
    # 01:00:01 less 1.5 s is 00:59:59.5, floored; less 2 s is 00:59:59 exactly.
    assert [(r["timestamp"], r["duration"]) for r in rows] == [(start, 1), (start, 2), (start + 2, 0)]


def test_the_older_export_names_its_user():
    rows, rejected, _ = read_all(SAMPLES / "endsong_0.json")
    assert rejected == [] and len(rows) == 10 and {r["user_id"] for r in rows} == {"erin_sp"}


def test_each_kind_of_bad_stream_is_rejected_with_its_record_number_and_the_rest_kept():
    path = SAMPLES / "spotify-bad.json"
    streams = json.loads(path.read_text())
    rows, rejected, _ = read_all(path)
    assert [(r.line, r.reason, r.field, r.unit) for r in rejected] == [
        (2, "missing_field", "spotify_track_uri", "record"),
        (3, "invalid_timestamp", "ts", "record"),
        (4, "invalid_duration", "ms_played", "record"),
        (5, "missing_field", "master_metadata_album_artist_name", "record"),
    ]
    assert rejected[1].describe("x").startswith(f"{path}: record 3 field 'ts': ")
    assert [r["song_id"] for r in rows] == [streams[i]["spotify_track_uri"] for i in (0, 5, 6)]


def test_strict_stops_at_the_first_bad_stream():
    path = SAMPLES / "spotify-bad.json"
    with pytest.raises(BadRowError, match=f"^{path}: record 2 field 'spotify_track_uri'"):
        list(open_source(path).chunks(strict=True))


def test_streams_naming_no_user_need_one_given():
    with pytest.raises(InputError, match=r"Streaming_History_Audio_2023_0\.json: .*pass --user NAME"):
        open_source(SAMPLES / "spotify_extended_history.zip")


def test_a_json_array_broken_midway_keeps_the_records_before_the_break(tmp_path):
    stream = {"ts": "2024-01-01T00:00:10Z", "username": "u", "ms_played": 0,
              "master_metadata_album_artist_name": "A", "spotify_track_uri": "spotify:track:x"}  # fmt: skip
    path = tmp_path / "Streaming_History_Audio_2024.json"
    text = json.dumps([stream, stream], indent=1)
    path.write_text(text[: text.rindex("{") + 20])  # the second record cut off
    rows, rejected, _ = read_all(path)
    assert len(rows) == 1
    assert [(r.line, r.reason, r.unit) for r in rejected] == [(2, "invalid_json", "record")]
    assert "the rest of the file is not read" in rejected[0].message


def test_a_json_array_too_large_to_parse_whole_is_refused_up_front(tmp_path, monkeypatch):
    from music_analytics.client import sources

    path = tmp_path / "Streaming_History_Audio_2024.json"
    path.write_text(json.dumps([{"ts": "2024-01-01T00:00:00Z", "ms_played": 1, "username": "u"}] * 10))
    monkeypatch.setattr(sources, "MAX_JSON_ARRAY_BYTES", 100)
    with pytest.raises(InputError, match=f"^{path}: a JSON array of .* bytes; arrays over 100 bytes are not read"):
        open_source(path)


def test_a_number_of_more_digits_than_int_converts_ends_the_array_with_a_rejection(tmp_path):
    """json's raw_decode raises a plain ValueError on an integer of more than 4300 digits: it
    stopped the read instead of being a rejection like any other unreadable element."""
    stream = {"ts": "2024-01-01T00:00:10Z", "username": "u", "ms_played": 0,
              "master_metadata_album_artist_name": "A", "spotify_track_uri": "spotify:track:x"}  # fmt: skip
    path = tmp_path / "Streaming_History_Audio_2024.json"
    huge = json.dumps(stream).replace('"ms_played": 0', '"ms_played": ' + "9" * 5000)
    path.write_text(f"[{json.dumps(stream)}, {huge}, {json.dumps(stream)}]")
    rows, rejected, _ = read_all(path)
    assert len(rows) == 1
    assert [(r.line, r.reason, r.message) for r in rejected] == [
        (2, "invalid_json", "invalid JSON: a number of more than 4300 digits; the rest of the file is not read")
    ]
