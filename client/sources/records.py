"""Turning parsed records into event chunks: the parts every record format shares.

A format's ``convert`` turns one record into an event ``(user_id, song_id, artist, duration,
timestamp)``, or raises BadRecordError (a rejection: reason, field, message) or
SkippedRecordError (left out on purpose).
The readers here give ``convert`` the records of a JSON Lines file, a JSON array, or lines of
text, each with its place in the file.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import pyarrow as pa

from music_analytics.client.csv_source import (
    MAX_DURATION,
    MAX_ROW_BYTES,
    TIMESTAMP_RANGE,
    BadRowError,
    Chunk,
    InputError,
    Rejection,
)
from music_analytics.client.sources.inputs import Member
from music_analytics.services.common.contract import MAX_TIMESTAMP, MIN_TIMESTAMP

# As many rows as one stream message carries (client/encoding.py BATCH_ROWS).
CHUNK_ROWS = 65_536
# A JSON array is parsed whole (the standard library has no streaming JSON parser): a file over
# this is refused up front. Spotify splits its history into files of about 12 MB.
MAX_JSON_ARRAY_BYTES = 256 * 1024 * 1024

Event = tuple[str, str, str, int, int]


class BadRecordError(Exception):
    """A record that cannot be used: its rejection reason, field and message."""

    def __init__(self, reason: str, field: str | None, message: str) -> None:
        super().__init__(message)
        self.reason, self.field, self.message = reason, field, message


class SkippedRecordError(Exception):
    """A record left out on purpose (not an error), counted under ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class ChunkBuilder:
    """Events, rejections and skips gathered into chunks of CHUNK_ROWS rows and rejections."""

    rows: int = CHUNK_ROWS
    columns: tuple[list, ...] = field(default_factory=lambda: ([], [], [], [], []))
    rejected: list[Rejection] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)

    def add(self, event: Event) -> None:
        user, song, artist, duration, timestamp = self.columns
        user.append(event[0])
        song.append(event[1])
        artist.append(event[2])
        duration.append(event[3])
        timestamp.append(event[4])

    @property
    def full(self) -> bool:
        return len(self.columns[0]) + len(self.rejected) >= self.rows

    @property
    def empty(self) -> bool:
        return not self.columns[0] and not self.rejected and not self.skipped

    def build(self, end_offset: int) -> Chunk:
        user, song, artist, duration, timestamp = self.columns
        table = pa.table({
            "user_id": pa.array(user, type=pa.string()),
            "song_id": pa.array(song, type=pa.string()),
            "artist": pa.array(artist, type=pa.string()),
            "duration": pa.array(duration, type=pa.uint32()),
            "timestamp": pa.array(timestamp, type=pa.int64()),
        })  # fmt: skip
        chunk = Chunk(table, self.rejected, end_offset, self.skipped)
        self.columns = ([], [], [], [], [])
        self.rejected, self.skipped = [], {}
        return chunk


# A reader yields, for each record of a file, its place (line or record number) and either the
# parsed record or a BadRecordError for one that cannot be parsed (invalid JSON).
Reader = Callable[[Member, BinaryIO], Iterator[tuple[int, Any]]]


def record_chunks(
    members: list[Member],
    reader: Callable[[Member], tuple[Reader, str]],
    convert: Callable[[Any], Event],
    strict: bool,
    rows: int | None = None,
) -> Iterator[Chunk]:
    """Chunks of the events of ``members`` read as one stream (a chunk may span files).
    ``reader`` gives a file's reader and what its places count ("line" or "record")."""
    builder = ChunkBuilder(rows or CHUNK_ROWS)
    base = 0
    # A full chunk is held until a record after it is read: what follows its last record may be
    # only blank lines or the end of a file, and then the chunk ends where the input does.
    held: Chunk | None = None
    for member in members:
        read, unit = reader(member)
        with member.open() as raw:
            for place, record in read(member, raw):
                try:
                    if isinstance(record, BadRecordError):
                        raise record
                    builder.add(convert(record))
                except BadRecordError as bad:
                    rejection = Rejection(place, bad.reason, bad.field, bad.message, source=member.name, unit=unit)
                    if strict:
                        raise BadRowError(rejection.describe(member.name)) from None
                    builder.rejected.append(rejection)
                except SkippedRecordError as skip:
                    builder.skipped[skip.reason] = builder.skipped.get(skip.reason, 0) + 1
                if builder.full:
                    if held is not None:
                        yield held
                    held = builder.build(base + min(member.size, _position(raw)))
        base += member.size
    if builder.empty:
        if held is not None:
            held.end_offset = base
            yield held
        return
    if held is not None:
        yield held
    yield builder.build(base)


def _position(raw: BinaryIO) -> int:
    try:
        return raw.tell()
    except OSError:
        return 0


_BOM = b"\xef\xbb\xbf"


def _numbered_lines(member: Member, raw: BinaryIO, hint: str) -> Iterator[tuple[int, bytes]]:
    """Each line of ``raw`` with its number (from 1), a byte order mark before the first dropped;
    a line longer than MAX_ROW_BYTES makes the file unusable (memory holds one line)."""
    number = 0
    while True:
        line = raw.readline(MAX_ROW_BYTES + 1)
        if not line:
            return
        number += 1
        if len(line) > MAX_ROW_BYTES and not line.endswith(b"\n"):
            raise InputError(f"{member.name}:{number}: no line ends within {MAX_ROW_BYTES} bytes{hint}")
        yield number, line.removeprefix(_BOM) if number == 1 else line


def json_lines(member: Member, raw: BinaryIO) -> Iterator[tuple[int, Any]]:
    """One JSON value per line (blank lines skipped), streamed: memory holds one line."""
    for number, line in _numbered_lines(member, raw, "; is this JSON Lines?"):
        if line.strip():
            yield number, _loads(line)


# What the json module raises on text it cannot read: a syntax error (JSONDecodeError, a
# ValueError), a number of more digits than int() converts (ValueError), nesting deeper than the
# recursion limit.
UNREADABLE_JSON = (ValueError, RecursionError)


def _loads(data: bytes) -> Any:
    # Invalid UTF-8 is kept (surrogateescape) so that only a record using it is rejected.
    try:
        return json.loads(data.decode("utf-8", errors="surrogateescape"))
    except json.JSONDecodeError as exc:
        return BadRecordError("invalid_json", None, f"invalid JSON: {exc.msg} at column {exc.colno}")
    except ValueError:
        return BadRecordError("invalid_json", None, f"invalid JSON: {TOO_MANY_DIGITS}")
    except RecursionError:
        return BadRecordError("invalid_json", None, "invalid JSON: nested too deeply")


TOO_MANY_DIGITS = f"a number of more than {sys.get_int_max_str_digits()} digits"


_SPACE = re.compile(r"[ \t\n\r]*")


def json_array(member: Member, raw: BinaryIO) -> Iterator[tuple[int, Any]]:
    """The elements of a JSON array, numbered from 1. The file is read whole (its size is
    checked before reading starts); elements are decoded one by one, so the elements before a
    syntax error still count: the error is one rejection at the element it is in, and the rest
    of the file is not read (nothing after it can be trusted to start where it seems to)."""
    text = raw.read().removeprefix(_BOM).decode("utf-8", errors="surrogateescape")
    decoder = json.JSONDecoder()
    pos = _SPACE.match(text, 0).end()
    if not text.startswith("[", pos):
        yield 1, BadRecordError("invalid_json", None, "the file is not a JSON array")
        return
    pos = _SPACE.match(text, pos + 1).end()
    if text.startswith("]", pos):
        return
    number = 0
    while True:
        number += 1
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            yield number, BadRecordError("invalid_json", None, _array_error(exc, "the rest of the file is not read"))
            return
        except ValueError:
            message = f"invalid JSON: {TOO_MANY_DIGITS}; the rest of the file is not read"
            yield number, BadRecordError("invalid_json", None, message)
            return
        except RecursionError:
            yield (
                number,
                BadRecordError(
                    "invalid_json", None, "invalid JSON: nested too deeply; the rest of the file is not read"
                ),
            )
            return
        yield number, value
        pos = _SPACE.match(text, pos).end()
        if text.startswith("]", pos):
            if text[_SPACE.match(text, pos + 1).end() :]:
                yield number + 1, BadRecordError("invalid_json", None, "text after the end of the JSON array")
            return
        if not text.startswith(",", pos):
            lineno = text.count("\n", 0, pos) + 1
            yield (
                number + 1,
                BadRecordError("invalid_json", None, f"expected ',' or ']' at line {lineno}; the rest is not read"),
            )
            return
        pos = _SPACE.match(text, pos + 1).end()


def _array_error(exc: json.JSONDecodeError, consequence: str) -> str:
    return f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}; {consequence}"


def text_lines(member: Member, raw: BinaryIO) -> Iterator[tuple[int, Any]]:
    """Lines of text (\\n or \\r\\n), numbered from 1, blank ones skipped; the text with invalid
    UTF-8 kept as surrogates (``text_field`` rejects a field holding one)."""
    for number, line in _numbered_lines(member, raw, ""):
        text = line.rstrip(b"\r\n").decode("utf-8", errors="surrogateescape")
        if text.strip():
            yield number, text


# ---------------------------------------------------------------------------------------------
# Field checks shared by the formats
# ---------------------------------------------------------------------------------------------


def text_field(value: Any, name: str, *, required: bool = True) -> str | None:
    """A non-empty string field; None if absent (or null) and not ``required``."""
    if value is None:
        if required:
            raise BadRecordError("missing_field", name, f"{name} is missing")
        return None
    if not isinstance(value, str):
        raise BadRecordError("invalid_field", name, f"{name} is not a string: {_shown(value)}")
    if not value:
        if required:
            raise BadRecordError("empty_field", name, f"{name} is empty")
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRecordError("invalid_utf8", name, f"{name} is not valid UTF-8") from None
    return value


def whole_number(value: Any, name: str, reason: str) -> int:
    """A JSON number as an int, floored (a float is accepted: 1617184800.0 is an exporter's epoch)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRecordError(reason, name, f"{name} is not a number: {_shown(value)}")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise BadRecordError(reason, name, f"{name} is not a finite number: {value}")
        return math.floor(value)
    return value


def checked_timestamp(seconds: int, name: str) -> int:
    """``seconds`` if the services accept it (they refuse a whole batch holding one they do not)."""
    if not MIN_TIMESTAMP <= seconds < MAX_TIMESTAMP:
        raise BadRecordError("invalid_timestamp", name, f"{name} {seconds} {TIMESTAMP_RANGE}")
    return seconds


def checked_duration(seconds: int, name: str) -> int:
    if not 0 <= seconds <= MAX_DURATION:
        raise BadRecordError(
            "invalid_duration", name, f"{name} {seconds} s is not between 0 and {MAX_DURATION} seconds"
        )
    return seconds


def _shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
