"""Listening histories in every supported format, read as one stream of event chunks.

``open_source(spec)`` takes a file, a folder (every file in it, recursively), a glob or a zip
(read in place), tells the format from the content (``format=`` forces one), and checks what can
be checked before any service is contacted: an unusable input raises InputError naming it.
``EventSource.chunks()`` then yields csv_source.Chunk objects. Every format of listening
events (``EventSource.kind`` "events") gives the same columns: user_id, song_id, artist,
duration in seconds, timestamp in epoch seconds UTC, and for a CSV with a plays column, plays.
The ``playcounts`` format (kind "playcounts": how often each user played each artist, with no
times) gives user_id, artist and plays only.

Formats: csv (this project's own), listenbrainz, spotify, lastfm-1k, lastfm-scrobbles,
playcounts; each module's docstring says which field becomes what. In a folder or zip, the files of the format
are read in name order and the rest (a ListenBrainz export's user.json and feedback, Spotify's
video history and PDF, a README) are listed in ``EventSource.ignored``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from music_analytics.client import csv_source
from music_analytics.client.csv_source import HEADER_MAX_BYTES, REQUIRED, Chunk, InputError, parse_header
from music_analytics.client.sources import lastfm, listenbrainz, playcounts, spotify
from music_analytics.client.sources.inputs import Member, list_members
from music_analytics.client.sources.records import (
    MAX_JSON_ARRAY_BYTES,
    UNREADABLE_JSON,
    Event,
    Reader,
    json_array,
    json_lines,
    record_chunks,
    text_lines,
)

__all__ = ["FORMATS", "KINDS", "REJECT_REASONS", "SKIP_REASONS", "EventSource", "InputError", "open_source"]

FORMATS: tuple[str, ...] = ("csv", "listenbrainz", "spotify", "lastfm-1k", "lastfm-scrobbles", "playcounts")
KINDS: tuple[str, ...] = ("events", "playcounts")  # what a source's chunks hold (EventSource.kind)
REJECT_REASONS: tuple[str, ...] = (*csv_source.REJECT_REASONS, "invalid_json", "missing_field", "invalid_field")
SKIP_REASONS: tuple[str, ...] = spotify.SKIP_REASONS
NEEDS_USER = "pass --user NAME"


@dataclass
class EventSource:
    """An input opened and checked: its format, its files, and a way to read it (any number of
    times, each read the same)."""

    format: str
    files: list[str]  # display names, in reading order
    total_bytes: int
    ignored: list[str] = field(default_factory=list)  # files in a folder or zip not of the format
    _read: Callable[[bool], Iterator[Chunk]] = field(default=lambda strict: iter(()), repr=False)

    @property
    def kind(self) -> str:
        """What the chunks hold: "events" (listening events) or "playcounts" (plays per user and artist)."""
        return "playcounts" if self.format == "playcounts" else "events"

    def chunks(self, *, strict: bool = False, stop_after: int | None = None) -> Iterator[Chunk]:
        """The events chunk by chunk; ``Chunk.end_offset`` counts input bytes across all files.
        ``stop_after=k`` yields exactly the first k chunks of a full read. ``strict`` raises
        csv_source.BadRowError at the first rejected record."""
        with contextlib.closing(self._read(strict)) as chunks:
            yield from chunks if stop_after is None else itertools.islice(chunks, stop_after)


def open_source(spec: str | Path, *, format: str | None = None, user: str | None = None) -> EventSource:
    """Open ``spec`` (file, folder, glob or zip) as one stream of events; raises InputError."""
    if format is not None and format not in FORMATS:
        raise InputError(f"unknown format {format!r}; expected one of {', '.join(FORMATS)}")
    if user is not None and not user:
        raise InputError("--user: the user name is empty")
    members, container = list_members(spec)
    detected = {m.name: detect(m) for m in members}
    if format is None:
        if not container and detected[members[0].name] is None and members[0].basename.lower().endswith(".csv"):
            format = "csv"  # its header check below says what is wrong with it
        else:
            found = sorted({f for f in detected.values() if f is not None}, key=FORMATS.index)
            if not found:
                raise InputError(f"{spec}: cannot tell the format; pass --format (one of {', '.join(FORMATS)})")
            if len(found) > 1:
                examples = "; ".join(f"{next(n for n, f in detected.items() if f == fmt)} is {fmt}" for fmt in found)
                raise InputError(
                    f"{spec}: files of more than one format ({examples}); pass --format to read one of them"
                )
            format = found[0]
    chosen = members if not container else [m for m in members if _wanted(m, format, detected[m.name])]
    if not chosen:
        raise InputError(f"{spec}: no file of format {format} in it")
    ignored = [m.name for m in members if m not in chosen]
    read = _OPENERS[format](spec, chosen, members, user)
    return EventSource(format, [m.name for m in chosen], sum(m.size for m in chosen), ignored, read)


def _wanted(member: Member, format: str, detected: str | None) -> bool:
    if format == "spotify" and not spotify.audio_file(member.basename):
        return False  # the video history has the same fields
    if detected == format:
        return True
    # A file whose content does not tell (an empty month of a ListenBrainz export, a CSV whose
    # header is broken) is read if its name is the format's: its problems are then reported,
    # not passed over in silence.
    name = member.basename.lower()
    return (
        detected is None
        and {
            "csv": name.endswith(".csv"),
            "listenbrainz": name.endswith((".jsonl", ".json")) and name not in listenbrainz.NOT_LISTENS,
            "spotify": True,
            "lastfm-1k": name.endswith(".tsv") and "profile" not in name,  # the dataset's userid-profile.tsv
            "lastfm-scrobbles": name.endswith(".csv"),
            # Other files of a play-count dataset have headers too (HetRec's artists.dat,
            # user_friends.dat): only its play-count file is read when its header does not tell.
            "playcounts": name == "user_artists.dat",
        }[format]
    )


# ---------------------------------------------------------------------------------------------
# Detection
# ---------------------------------------------------------------------------------------------


def detect(member: Member) -> str | None:
    """The format of one file from its first bytes, or None (not a listening history we know)."""
    head = member.head().removeprefix(b"\xef\xbb\xbf")
    text = head.decode("utf-8", errors="replace").lstrip()
    if text.startswith("["):
        first = _first_array_element(text)
        if spotify.looks_like_stream(first):
            return "spotify"
        if listenbrainz.looks_like_listen(first):
            return "listenbrainz"
        return None
    if text.startswith("{"):
        try:
            first = json.loads(text.split("\n", 1)[0])
        except UNREADABLE_JSON:
            return None
        return "listenbrainz" if listenbrainz.looks_like_listen(first) else None
    line = text.split("\n", 1)[0].rstrip("\r")
    if lastfm.lastfm_1k_line(line):
        return "lastfm-1k"
    try:
        fields = next(csv.reader([line]), [])
    except csv.Error:
        return None
    if all(c in fields for c in REQUIRED):
        return "csv"
    if playcounts.looks_like_playcounts(line):
        return "playcounts"
    if lastfm.scrobble_line(fields):
        return "lastfm-scrobbles"
    return None


def _first_array_element(text: str) -> Any:
    try:
        value, _ = json.JSONDecoder().raw_decode(text, len(text) - len(text[1:].lstrip()))
    except UNREADABLE_JSON:
        return None
    return value


# ---------------------------------------------------------------------------------------------
# Readers, by format: each checks what it can up front and returns how to read the chunks
# ---------------------------------------------------------------------------------------------

Opener = Callable[[str | Path, list[Member], list[Member], str | None], Callable[[bool], Iterator[Chunk]]]


def _first_line(member: Member) -> bytes:
    return io.BytesIO(member.head(HEADER_MAX_BYTES + 1)).readline(HEADER_MAX_BYTES + 1)


def _files_in_turn(chosen: list[Member], read_stream: Callable[..., Iterator[Chunk]]) -> Callable:
    """How to read ``chosen`` one after the other with a reader of byte-chunked files
    (csv_source.read_stream's signature), offsets counted across them."""

    def read(strict: bool) -> Iterator[Chunk]:
        base = 0
        for member in chosen:
            for chunk in read_stream(member.open, member.name, strict=strict, source=member.name):
                chunk.end_offset += base
                yield chunk
            base += member.size

    return read


def _open_csv(spec: str | Path, chosen: list[Member], members: list[Member], user: str | None) -> Callable:
    for member in chosen:
        parse_header(_first_line(member), member.name)
    return _files_in_turn(chosen, csv_source.read_stream)


def _json_reader(member: Member) -> tuple[Reader, str]:
    if member.head(HEAD_PEEK).lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"["):
        if member.size > MAX_JSON_ARRAY_BYTES:
            raise InputError(
                f"{member.name}: a JSON array of {member.size} bytes; arrays over {MAX_JSON_ARRAY_BYTES} bytes are "
                "not read (they are parsed whole): split it, or convert it to JSON Lines"
            )
        return json_array, "record"
    return json_lines, "line"


HEAD_PEEK = 4096


def _first_record(member: Member) -> Any:
    """The first record of a JSON array or JSON Lines file, or None."""
    text = member.head().removeprefix(b"\xef\xbb\xbf").decode("utf-8", errors="replace").lstrip()
    if text.startswith("["):
        return _first_array_element(text)
    with contextlib.suppress(*UNREADABLE_JSON):
        return json.loads(text.split("\n", 1)[0]) if text else None
    return None


def _open_json(format: str, user_field: str, default_user: str | None, chosen: list[Member],
               convert: Callable[[Any], Event]) -> Callable:  # fmt: skip
    readers = {m.name: _json_reader(m) for m in chosen}
    if default_user is None:
        first = next((r for r in (_first_record(m) for m in chosen) if r is not None), None)
        if isinstance(first, dict) and not first.get(user_field):
            raise InputError(f"{chosen[0].name}: the {format} records name no user ({user_field}); {NEEDS_USER}")
    return lambda strict: record_chunks(chosen, lambda m: readers[m.name], convert, strict)


def _open_listenbrainz(spec: str | Path, chosen: list[Member], members: list[Member], user: str | None) -> Callable:
    default_user = listenbrainz.export_user(members) or user
    return _open_json("listenbrainz", "user_name", default_user, chosen, listenbrainz.converter(default_user))


def _open_spotify(spec: str | Path, chosen: list[Member], members: list[Member], user: str | None) -> Callable:
    return _open_json("spotify", "username", user, chosen, spotify.converter(user))


def _open_lastfm_1k(spec: str | Path, chosen: list[Member], members: list[Member], user: str | None) -> Callable:
    return lambda strict: record_chunks(chosen, lambda m: (text_lines, "line"), lastfm.convert_1k, strict)


def _open_lastfm_scrobbles(spec: str | Path, chosen: list[Member], members: list[Member], user: str | None) -> Callable:
    if user is None:
        raise InputError(f"{spec}: a Last.fm scrobble export names no user; {NEEDS_USER}")
    convert = lastfm.convert_scrobble(user)
    return lambda strict: record_chunks(chosen, lambda m: (lastfm.scrobble_rows, "line"), convert, strict)


def _open_playcounts(spec: str | Path, chosen: list[Member], members: list[Member], user: str | None) -> Callable:
    for member in chosen:
        playcounts.parse_header(_first_line(member), member.name)
    return _files_in_turn(chosen, playcounts.read_stream)


_OPENERS: dict[str, Opener] = {
    "csv": _open_csv,
    "listenbrainz": _open_listenbrainz,
    "spotify": _open_spotify,
    "lastfm-1k": _open_lastfm_1k,
    "lastfm-scrobbles": _open_lastfm_scrobbles,
    "playcounts": _open_playcounts,
}
