"""ListenBrainz listens (export zip, JSON Lines, JSON array): the samples read as their own fields
say, every kind of bad listen rejected with its line, the rest kept."""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path

import pytest

from music_analytics.client.csv_source import BadRowError, InputError
from music_analytics.client.sources import open_source

SAMPLES = Path(__file__).resolve().parent.parent / "data" / "samples"


def read_all(spec, **kwargs) -> tuple[list[dict], list]:
    source = open_source(spec, **kwargs)
    rows, rejected = [], []
    for chunk in source.chunks():
        rows.extend(chunk.table.to_pylist())
        rejected.extend(chunk.rejected)
    return rows, rejected


def expected_event(listen: dict, user: str) -> dict:
    """The event a listen should become, read straight from its fields."""
    metadata = listen["track_metadata"]
    info = metadata.get("additional_info") or {}
    mapping = metadata.get("mbid_mapping") or {}
    song = (
        mapping.get("recording_mbid")
        or info.get("recording_msid")
        or metadata.get("recording_msid")
        or listen.get("recording_msid")
        or metadata["track_name"]
    )
    if "duration_ms" in info:
        duration = info["duration_ms"] // 1000
    else:
        duration = info.get("duration", 0)
    return {
        "user_id": listen.get("user_name", user),
        "song_id": song,
        "artist": metadata["artist_name"],
        "duration": duration,
        "timestamp": math.floor(listen["listened_at"]),
    }


def test_export_zip_reads_every_month_as_the_user_of_user_json():
    path = SAMPLES / "listenbrainz_rob_export.zip"
    with zipfile.ZipFile(path) as archive:
        user = json.loads(archive.read("user.json"))["username"]
        names = sorted(n for n in archive.namelist() if n.startswith("listens/"))
        listens = [json.loads(line) for n in names for line in archive.read(n).splitlines()]
    source = open_source(path)
    assert source.format == "listenbrainz"
    assert source.files == [f"{path}:{n}" for n in names]
    assert sorted(source.ignored) == [f"{path}:feedback.jsonl", f"{path}:user.json"]
    rows, rejected = read_all(path)
    assert rejected == []
    assert user == "rob" and len(rows) == 30
    assert rows == [expected_event(listen, user) for listen in listens]
    # The export writes epoch seconds with a fraction: floored.
    assert all(isinstance(listen["listened_at"], float) for listen in listens)


def test_json_lines_of_two_users_and_the_older_json_array():
    for name, users in (("listenbrainz_listens.jsonl", {"alice", "bob"}), ("listenbrainz_carol.json", {"carol"})):
        text = (SAMPLES / name).read_text()
        listens = json.loads(text) if name.endswith(".json") else [json.loads(line) for line in text.splitlines()]
        rows, rejected = read_all(SAMPLES / name)
        assert rejected == []
        assert rows == [expected_event(listen, "") for listen in listens]
        assert {r["user_id"] for r in rows} == users


def test_song_is_the_mapped_recording_then_the_msid_then_the_track_name(tmp_path):
    base = {"listened_at": 1_600_000_000, "user_name": "u"}
    listens = [
        base | {"track_metadata": {"artist_name": "A", "track_name": "T", "recording_msid": "msid-1",
                                   "mbid_mapping": {"recording_mbid": "mbid-1"}}},
        base | {"track_metadata": {"artist_name": "A", "track_name": "T", "recording_msid": "msid-2",
                                   "mbid_mapping": None}},
        base | {"track_metadata": {"artist_name": "A", "track_name": "T",
                                   "additional_info": {"recording_msid": "msid-3"}}},
        base | {"recording_msid": "msid-4", "track_metadata": {"artist_name": "A", "track_name": "T"}},
        base | {"track_metadata": {"artist_name": "A", "track_name": "Only a name"}},
    ]  # fmt: skip
    path = tmp_path / "listens.jsonl"
    path.write_text("\n".join(json.dumps(listen) for listen in listens))
    rows, _ = read_all(path)
    assert [r["song_id"] for r in rows] == ["mbid-1", "msid-2", "msid-3", "msid-4", "Only a name"]


def test_duration_from_milliseconds_or_seconds_else_zero_and_times_floored(tmp_path):
    metadata = {"artist_name": "A", "track_name": "T"}
    listens = [
        {"listened_at": 1_600_000_000.9, "user_name": "u",
         "track_metadata": metadata | {"additional_info": {"duration_ms": 215_999}}},
        {"listened_at": -0.5, "user_name": "u", "track_metadata": metadata | {"additional_info": {"duration": 42}}},
        {"listened_at": 0, "user_name": "u", "track_metadata": metadata},
    ]  # fmt: skip
    path = tmp_path / "listens.jsonl"
    path.write_text("\n".join(json.dumps(listen) for listen in listens))
    rows, _ = read_all(path)
    assert [(r["timestamp"], r["duration"]) for r in rows] == [(1_600_000_000, 215), (-1, 42), (0, 0)]


BAD = [  # line, reason, field: as make_samples.py wrote them
    (2, "invalid_json", None),
    (3, "missing_field", "listened_at"),
    (4, "invalid_timestamp", "listened_at"),
    (5, "empty_field", "track_metadata.artist_name"),
    (6, "invalid_duration", "additional_info.duration_ms"),
    (7, "invalid_utf8", "user_name"),
    (8, "invalid_json", None),
]


def test_each_kind_of_bad_listen_is_rejected_with_its_line_and_the_rest_kept():
    path = SAMPLES / "listenbrainz-bad.jsonl"
    rows, rejected = read_all(path)
    assert [(r.line, r.reason, r.field) for r in rejected] == BAD
    assert all(r.source == str(path) and r.unit == "line" for r in rejected)
    assert rejected[1].describe("x") == f"{path}:3 field 'listened_at': listened_at is missing"
    good = [json.loads(line) for i, line in enumerate(path.read_bytes().splitlines(), 1) if i in (1, 9)]
    assert rows == [expected_event(listen, "") for listen in good]


def test_strict_stops_at_the_first_bad_listen():
    path = SAMPLES / "listenbrainz-bad.jsonl"
    with pytest.raises(BadRowError, match=f"^{path}:2: invalid JSON"):
        list(open_source(path).chunks(strict=True))


def test_user_name_then_the_exports_user_then_the_user_given(tmp_path):
    archive = tmp_path / "export.zip"
    listen = {"listened_at": 1, "track_metadata": {"artist_name": "A", "track_name": "T"}}
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("user.json", json.dumps({"user_id": 1, "username": "from_export"}))
        z.writestr("listens/2020/1.jsonl", json.dumps(listen) + "\n" + json.dumps(listen | {"user_name": "own"}))
    rows, _ = read_all(archive, user="given")
    assert [r["user_id"] for r in rows] == ["from_export", "own"]
    bare = tmp_path / "listens.jsonl"
    bare.write_text(json.dumps(listen) + "\n")
    assert [r["user_id"] for r in read_all(bare, user="given")[0]] == ["given"]


def test_listens_naming_no_user_and_no_user_given_fail_up_front(tmp_path):
    path = tmp_path / "listens.jsonl"
    path.write_text(json.dumps({"listened_at": 1, "track_metadata": {"artist_name": "A", "track_name": "T"}}) + "\n")
    with pytest.raises(InputError, match=f"^{path}: .*name no user.*pass --user NAME"):
        open_source(path)


def test_a_time_outside_what_the_services_accept_is_rejected(tmp_path):
    listen = {"user_name": "u", "track_metadata": {"artist_name": "A", "track_name": "T"}}
    path = tmp_path / "listens.jsonl"
    # 1899-12-31T23:59:59Z, 1900-01-01T00:00:00Z, 2200-01-01T00:00:00Z
    path.write_text("\n".join(json.dumps(listen | {"listened_at": t}) for t in (-2208988801, -2208988800, 7258118400)))
    rows, rejected = read_all(path)
    assert [r["timestamp"] for r in rows] == [-2208988800]
    assert [(r.line, r.reason, r.field) for r in rejected] == [(1, "invalid_timestamp", "listened_at"),
                                                              (3, "invalid_timestamp", "listened_at")]  # fmt: skip
    assert "is outside the times accepted, 1900-01-01 up to 2200-01-01 UTC" in rejected[0].message


def test_a_number_of_more_digits_than_int_converts_is_a_rejected_listen_not_a_crash(tmp_path):
    """json.loads raises a plain ValueError (not JSONDecodeError) on an integer of more than
    4300 digits: it stopped the read, and detection, instead of rejecting the listen."""
    good = {"listened_at": 1640995200, "user_name": "u", "track_metadata": {"artist_name": "A", "track_name": "T"}}
    huge = json.dumps(good).replace("1640995200", "1" + "0" * 5000)
    path = tmp_path / "listens.jsonl"
    path.write_text(json.dumps(good) + "\n" + huge + "\n" + json.dumps(good) + "\n")
    rows, rejected = read_all(path)
    assert len(rows) == 2
    assert [(r.line, r.reason, r.message) for r in rejected] == [
        (2, "invalid_json", "invalid JSON: a number of more than 4300 digits")
    ]
    first_huge = tmp_path / "first.jsonl"
    first_huge.write_text(huge + "\n" + json.dumps(good) + "\n")
    with pytest.raises(InputError, match="cannot tell the format"):
        open_source(first_huge)
    rows, rejected = read_all(first_huge, format="listenbrainz")
    assert len(rows) == 1 and [(r.line, r.reason) for r in rejected] == [(1, "invalid_json")]


def test_a_first_line_nested_deeper_than_the_recursion_limit_is_not_a_crash(tmp_path):
    for name, text in (("deep.json", "[" * 60_000), ("deep.jsonl", '{"a": ' + "[" * 60_000 + "\n")):
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(InputError, match="cannot tell the format"):
            open_source(path)
