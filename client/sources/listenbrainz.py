"""ListenBrainz listens: the user data export zip, JSON Lines, or the older JSON array export.

The export zip (Settings > Export your data) holds ``user.json`` ({"user_id", "username"}),
``listens/YYYY/M.jsonl`` (one listen a line, ``M`` not zero-padded), ``feedback.jsonl`` and
``pinned_recording.jsonl``. Its listens carry no user name: it comes from ``user.json``. The
older export (and the API) gives a JSON array of listens that each name their ``user_name``.

A listen becomes: user ``user_name`` (else the export's user, else ``--user``), timestamp
``listened_at`` (epoch seconds, floored), artist ``track_metadata.artist_name``, song the
MusicBrainz recording MBID the listen was mapped to (``track_metadata.mbid_mapping.recording_mbid``),
else its MessyBrainz id (``recording_msid``, wherever the file puts it), else the track name;
duration ``additional_info.duration_ms`` // 1000, else ``additional_info.duration``, else 0.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from music_analytics.client.sources.inputs import Member
from music_analytics.client.sources.records import (
    BadRecordError,
    Event,
    checked_duration,
    checked_timestamp,
    text_field,
    whole_number,
)

NOT_LISTENS = frozenset({"user.json", "feedback.jsonl", "pinned_recording.jsonl"})


def looks_like_listen(record: Any) -> bool:
    return isinstance(record, dict) and ("listened_at" in record or "track_metadata" in record)


def export_user(members: list[Member]) -> str | None:
    """The ``username`` of an export's ``user.json`` among ``members``, if there is one."""
    for member in members:
        if member.basename != "user.json":
            continue
        try:
            info = json.loads(member.head(1 << 20).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(info, dict) and isinstance(info.get("username"), str) and info["username"]:
            return info["username"]
    return None


def converter(default_user: str | None) -> Callable[[Any], Event]:
    def convert(record: Any) -> Event:
        if not isinstance(record, dict):
            raise BadRecordError("invalid_json", None, f"a listen is a JSON object, not {type(record).__name__}")
        user = text_field(record.get("user_name"), "user_name", required=default_user is None) or default_user
        if "listened_at" not in record:
            raise BadRecordError("missing_field", "listened_at", "listened_at is missing")
        listened_at = whole_number(record["listened_at"], "listened_at", "invalid_timestamp")
        metadata = record.get("track_metadata")
        if metadata is None:
            raise BadRecordError("missing_field", "track_metadata", "track_metadata is missing")
        if not isinstance(metadata, dict):
            raise BadRecordError("invalid_field", "track_metadata", "track_metadata is not an object")
        artist = text_field(metadata.get("artist_name"), "track_metadata.artist_name")
        info = metadata.get("additional_info")
        info = info if isinstance(info, dict) else {}
        mapping = metadata.get("mbid_mapping")
        mapping = mapping if isinstance(mapping, dict) else {}
        song = (
            text_field(mapping.get("recording_mbid"), "track_metadata.mbid_mapping.recording_mbid", required=False)
            or text_field(info.get("recording_msid"), "track_metadata.additional_info.recording_msid", required=False)
            or text_field(metadata.get("recording_msid"), "track_metadata.recording_msid", required=False)
            or text_field(record.get("recording_msid"), "recording_msid", required=False)
            or text_field(metadata.get("track_name"), "track_metadata.track_name")
        )
        if info.get("duration_ms") is not None:
            duration = whole_number(info["duration_ms"], "additional_info.duration_ms", "invalid_duration") // 1000
            duration = checked_duration(duration, "additional_info.duration_ms")
        elif info.get("duration") is not None:
            duration = checked_duration(
                whole_number(info["duration"], "additional_info.duration", "invalid_duration"),
                "additional_info.duration",
            )
        else:
            duration = 0
        assert user is not None and song is not None and artist is not None
        return user, song, artist, duration, checked_timestamp(listened_at, "listened_at")

    return convert
