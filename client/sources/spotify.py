"""Spotify's Extended Streaming History: ``Streaming_History_Audio_*.json`` (older exports:
``endsong_*.json``), each a JSON array of streams, in a zip or a folder.

A stream becomes: song ``spotify_track_uri``, artist ``master_metadata_album_artist_name``,
duration ``ms_played`` // 1000, user ``username`` (dropped from newer exports: then ``--user``).
``ts`` is when the stream ENDED; the timestamp is when it started, ``ts`` minus ``ms_played``
(floored to the second), the instant ListenBrainz and Last.fm record for a listen. A podcast
episode or an audiobook chapter (an episode or audiobook uri, no track uri) is skipped, counted
under spotify_podcast / spotify_audiobook. ``Streaming_History_Video_*`` files are not read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from music_analytics.client.sources.records import (
    BadRecordError,
    Event,
    SkippedRecordError,
    checked_duration,
    checked_timestamp,
    text_field,
    whole_number,
)
from music_analytics.services.common.timestamps import parse_timestamp

SKIP_REASONS = ("spotify_podcast", "spotify_audiobook")


def audio_file(basename: str) -> bool:
    """A file of streamed audio by its name (the video history has the same fields)."""
    name = basename.lower()
    return name.endswith(".json") and ("audio" in name or name.startswith("endsong"))


def looks_like_stream(record: Any) -> bool:
    return isinstance(record, dict) and "ts" in record and "ms_played" in record


def converter(default_user: str | None) -> Callable[[Any], Event]:
    def convert(record: Any) -> Event:
        if not isinstance(record, dict):
            raise BadRecordError("invalid_json", None, f"a stream is a JSON object, not {type(record).__name__}")
        track = text_field(record.get("spotify_track_uri"), "spotify_track_uri", required=False)
        if track is None:
            if record.get("spotify_episode_uri"):
                raise SkippedRecordError("spotify_podcast")
            if record.get("audiobook_uri") or record.get("audiobook_chapter_uri"):
                raise SkippedRecordError("spotify_audiobook")
            message = "spotify_track_uri is missing (and no episode or audiobook uri)"
            raise BadRecordError("missing_field", "spotify_track_uri", message)
        user = text_field(record.get("username"), "username", required=default_user is None) or default_user
        artist = text_field(record.get("master_metadata_album_artist_name"), "master_metadata_album_artist_name")
        if "ms_played" not in record:
            raise BadRecordError("missing_field", "ms_played", "ms_played is missing")
        ms_played = whole_number(record["ms_played"], "ms_played", "invalid_duration")
        checked_duration(ms_played // 1000, "ms_played")
        ended = text_field(record.get("ts"), "ts")
        assert ended is not None
        ended_at = parse_timestamp(ended)
        if ended_at is None:
            raise BadRecordError("invalid_timestamp", "ts", f"ts {ended!r} is not an ISO 8601 date-time")
        started = ended_at - (ms_played + 999) // 1000  # ceil: the start floored to its second
        assert user is not None and artist is not None
        return user, track, artist, ms_played // 1000, checked_timestamp(started, "ts")

    return convert
