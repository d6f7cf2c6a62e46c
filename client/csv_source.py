"""Reading listening events from CSV with bounded memory, rejecting bad rows with their line numbers.

The file is cut into chunks at row boundaries. A chunk is parsed and validated with Arrow
(vectorised, multi-threaded); only if that finds anything wrong is the chunk re-read with the
csv module, row by row, which is the authority on what is rejected and why. Clean data never
pays for line bookkeeping; dirty data costs the slow path only in the chunks that hold it.

The rules (tests/test_fuzz_csv.py checks both paths and the chunking against them):

* The header is the first line, up to the first ``\n`` (a UTF-8 byte order mark before it is
  skipped). It must be UTF-8, one CSV line, and name user_id, song_id, artist, duration and
  timestamp once each, in any order, among any other columns; otherwise the file is unusable
  (InputError). It may name ``plays`` (once): then each row is that many plays of the song,
  ``duration`` their total seconds, and the chunks' tables have a ``plays`` column (uint32);
  without it there is no such column and every row is one play.
* Quoting is the csv module's (RFC 4180, leniently): a field starting with ``"`` is quoted, and
  in it ``""`` is a quote and line breaks are kept; a quote anywhere else is an ordinary
  character, and text after a closing quote is kept.
* Outside quotes ``\n``, ``\r\n`` and a lone ``\r`` each end a line, and a row. Blank lines are
  skipped. Line numbers count the same line breaks; a row's line is the one it starts on.
* A row is rejected for the first of these that applies: ``wrong_field_count`` (not as many
  fields as the header), ``invalid_utf8`` (in one of the five columns; other columns are not
  read), ``empty_field`` (user_id, song_id or artist empty), ``invalid_duration`` (not only the
  digits 0-9, or above 2^32-1), ``invalid_timestamp`` (not TIMESTAMP_PATTERN, no such date, or
  an instant outside 1900-01-01 up to 2200-01-01 UTC: the services refuse a batch holding one),
  ``invalid_plays`` (when there is a plays column: not only the digits 0-9, 0, or above 2^32-1).
* A row longer than ``max_row_bytes`` (most likely a quoted field never closed) makes the file
  unusable, so that memory stays bounded.
* A kept row's timestamp becomes epoch seconds, UTC (int64): no zone means UTC, a fraction is
  floored, a leap second ``:60`` is the next second. Arrow's parser reads the clean chunks (it
  cannot read ``:60`` or instants outside its nanosecond range: those chunks take the exact path,
  which computes the value from the pattern's parts).
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from music_analytics.services.common.contract import MAX_TIMESTAMP, MIN_TIMESTAMP
from music_analytics.services.common.timestamps import parse_timestamp

REQUIRED = ("user_id", "song_id", "artist", "duration", "timestamp")
STRING_COLUMNS = ("user_id", "song_id", "artist")
MAX_DURATION = 2**32 - 1
PLAYS = "plays"  # the optional column: how many plays a row stands for
MAX_PLAYS = 2**32 - 1
REJECT_REASONS = (
    "wrong_field_count",
    "invalid_utf8",
    "empty_field",
    "invalid_duration",
    "invalid_timestamp",
    "invalid_plays",
)
CHUNK_BYTES = 16 * 1024 * 1024
MAX_ROW_BYTES = 64 * 1024 * 1024
HEADER_MAX_BYTES = 1 << 20
# The csv module refuses fields over 128 KiB by default (csv.Error, mid-file), where Arrow's fast
# path accepts them: a field may be as long as a row. The limit is process-wide.
csv.field_size_limit(max(csv.field_size_limit(), MAX_ROW_BYTES))

# The rule for event times is services.common.timestamps (the exact path applies it); the fast
# path uses Arrow's ISO 8601 parser, which accepts a subset of it (tests/test_csv_source.py checks that).
_DIGITS = re.compile(r"[0-9]+")
# A value the fast path casts as zoned: a time, then Z or an offset (a date's "-01" is not one).
_ZONED = r"[T ][0-9:.,]*[0-9](Z|[+-][0-9:]+)$"


class InputError(Exception):
    """The input cannot be used at all (missing file, unusable header). Exit code 2."""


class BadRowError(Exception):
    """A bad row under --strict. Exit code 3."""


@dataclass(frozen=True)
class Rejection:
    line: int  # or, when ``unit`` is "record", the record's index (1-based) in a JSON array
    reason: str  # one of REJECT_REASONS (here, or the sources' longer list)
    field: str | None
    message: str
    # The file the record is in (``export.zip:member`` for a zip's member); None: the one input file.
    source: str | None = None
    unit: str = "line"  # "line" | "record"

    def describe(self, path: str) -> str:
        name = self.source if self.source is not None else path
        where = f"{name}:{self.line}" if self.unit == "line" else f"{name}: {self.unit} {self.line}"
        if self.field:
            where += f" field {self.field!r}"
        return f"{where}: {self.message}"


@dataclass
class Chunk:
    """Valid events of one chunk: user_id, song_id, artist (strings), duration (uint32, seconds),
    timestamp (int64, epoch seconds UTC), and plays (uint32, >= 1) only if the input has a plays
    column. (A play-count file's chunks hold user_id, artist and plays only.) Strings are
    dictionary-encoded where Arrow parsed the chunk, plain where the exact path did."""

    table: pa.Table
    rejected: list[Rejection] = field(default_factory=list)
    end_offset: int = 0  # input bytes consumed just past this chunk
    skipped: dict[str, int] = field(default_factory=dict)  # records left out on purpose, by reason


@dataclass(frozen=True)
class Header:
    names: tuple[str, ...]
    length: int  # bytes, including the byte order mark and the line break


def read_header(path: Path) -> Header:
    """Parse the header line and check the required columns are there."""
    with open_input(lambda: path.open("rb"), str(path)) as f:
        return parse_header(f.readline(HEADER_MAX_BYTES + 1), str(path))


def open_input(open_binary: Callable[[], BinaryIO], path: str) -> BinaryIO:
    try:
        return open_binary()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not a CSV file") from None
    except PermissionError:
        raise InputError(f"{path}: permission denied") from None


def header_text(raw: bytes, path: str, expected: str) -> str:
    """A header line's text (``raw``, read with a limit of HEADER_MAX_BYTES + 1), BOM removed;
    raises InputError for an empty file, a line too long, bytes not UTF-8 or a blank line.
    ``expected`` ends the messages that say what the line should have been."""
    if not raw:
        raise InputError(f"{path}: empty file; expected a header line {expected}")
    if len(raw) > HEADER_MAX_BYTES:
        raise InputError(f"{path}:1: header line longer than {HEADER_MAX_BYTES} bytes")
    bom = raw.startswith(codecs.BOM_UTF8)
    try:
        text = raw[3 if bom else 0 :].decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path}:1: header is not valid UTF-8") from None
    if not text.strip():
        raise InputError(f"{path}:1: blank line; expected a header line {expected}")
    return text


def parse_header(raw: bytes, path: str) -> Header:
    """The header from the file's first line (``raw``, read with a limit of HEADER_MAX_BYTES + 1)."""
    text = header_text(raw, path, ",".join(REQUIRED))
    try:
        names = tuple(next(csv.reader([text.rstrip("\r\n")]), ()))
    except csv.Error as exc:  # a lone carriage return in the line
        raise InputError(f"{path}:1: header is not one CSV line: {exc}") from None
    missing = [c for c in REQUIRED if c not in names]
    if missing:
        raise InputError(
            f"{path}:1: header lacks required column(s) {', '.join(missing)}; "
            f"expected {','.join(REQUIRED)}, found {','.join(names)}"
        )
    duplicated = sorted({c for c in names if names.count(c) > 1 and c in (*REQUIRED, PLAYS)})
    if duplicated:
        raise InputError(f"{path}:1: header repeats column(s) {', '.join(duplicated)}")
    return Header(names, len(raw))


def read_events(
    path: str | Path,
    *,
    strict: bool = False,
    chunk_bytes: int = CHUNK_BYTES,
    stop_offset: int | None = None,
    max_row_bytes: int = MAX_ROW_BYTES,
) -> Iterator[Chunk]:
    """Yield the events of ``path`` chunk by chunk.

    ``stop_offset`` ends reading at a chunk boundary returned earlier (``Chunk.end_offset``):
    the client uses it to re-read a prefix of the file when a replica was lost.
    """
    path = Path(path)
    return read_stream(
        lambda: path.open("rb"),
        str(path),
        strict=strict,
        chunk_bytes=chunk_bytes,
        stop_offset=stop_offset,
        max_row_bytes=max_row_bytes,
    )


def read_stream(
    open_binary: Callable[[], BinaryIO],
    path: str,
    *,
    strict: bool = False,
    chunk_bytes: int = CHUNK_BYTES,
    stop_offset: int | None = None,
    max_row_bytes: int = MAX_ROW_BYTES,
    source: str | None = None,
) -> Iterator[Chunk]:
    """``read_events`` of a file given by how to open it (a zip's member is read without seeking);
    ``path`` names it in errors, ``source`` (if set) is put in every Rejection."""
    with open_input(open_binary, path) as f:
        header = parse_header(f.readline(HEADER_MAX_BYTES + 1), path)
        yield from read_chunks(
            f,
            header.length,
            path,
            lambda body, line: _parse(body, header.names, line, source),
            strict=strict,
            chunk_bytes=chunk_bytes,
            stop_offset=stop_offset,
            max_row_bytes=max_row_bytes,
        )


def read_chunks(
    f: BinaryIO,
    header_length: int,
    path: str,
    parse: Callable[[bytes, int], Chunk],
    *,
    delimiter: bytes = b",",
    strict: bool = False,
    chunk_bytes: int = CHUNK_BYTES,
    stop_offset: int | None = None,
    max_row_bytes: int = MAX_ROW_BYTES,
) -> Iterator[Chunk]:
    """The rows after a header of ``header_length`` bytes (already read from ``f``), cut into
    chunks at row boundaries, each given to ``parse(body, first_line)``. Any CSV-quoted format
    with one header line reads through here; ``delimiter`` is its field separator."""
    line = 2  # first line after the header
    offset = header_length
    carry = b""
    eof = False
    while not eof:
        limit = chunk_bytes if stop_offset is None else min(chunk_bytes, stop_offset - offset - len(carry))
        data = f.read(max(limit, 0))
        eof = not data or (stop_offset is not None and offset + len(carry) + len(data) >= stop_offset)
        body = carry + data
        if not eof:
            cut = _row_boundary(body, delimiter)
            if cut < 0:  # no complete row yet: read more
                if len(body) > max_row_bytes:
                    raise InputError(
                        f"{path}:{line}: no row ends within {max_row_bytes} bytes; is a quoted field not closed?"
                    )
                carry = body
                continue
            body, carry = body[:cut], body[cut:]
        else:
            carry = b""
        if not body:
            continue
        chunk = parse(body, line)
        offset += len(body)
        chunk.end_offset = offset
        line += _line_breaks(body)
        if strict and chunk.rejected:
            raise BadRowError(chunk.rejected[0].describe(path))
        yield chunk


_LF, _CR, _QUOTE = ord("\n"), ord("\r"), ord('"')


def _line_breaks(body: bytes) -> int:
    """Line breaks as the csv module counts them: \n, \r\n and a lone \r.

    A chunk ends just after a \n, so no \r\n is ever split between two chunks. numpy counts a
    byte value about three times faster than ``bytes.count``."""
    data = np.frombuffer(body, dtype=np.uint8)
    breaks = int(np.count_nonzero(data == _LF))
    if b"\r" in body:
        cr = data == _CR
        breaks += int(np.count_nonzero(cr)) - int(np.count_nonzero(cr[:-1] & (data[1:] == _LF)))
    return breaks


def _row_boundary(body: bytes, delimiter: bytes = b",") -> int:
    """Offset just past the last \n that ends a row (not one inside a quoted field), or -1.

    ``body`` starts at a row boundary. A \n ends a row iff an even number of quoted fields
    opened or closed before it (``_quote_toggles``).
    """
    end = len(body)
    if b'"' not in body:
        pos = body.rfind(b"\n")
        return pos + 1 if pos >= 0 else -1
    toggles = _quote_toggles(body, delimiter)
    while True:
        pos = body.rfind(b"\n", 0, end)
        if pos < 0:
            return -1
        before = int(np.searchsorted(toggles, pos))
        if before % 2 == 0:
            return pos + 1
        # Inside the quoted field opened at toggles[before - 1]: the row starts before it.
        end = int(toggles[before - 1])


def _boundary_bytes(delimiter: bytes) -> np.ndarray:
    """By byte value: true for the delimiter, a line break or a quote. An opening quote follows
    one (a quote only as the second of ""), a closing quote precedes one (only as the first of "")."""
    table = np.zeros(256, dtype=bool)
    table[list(delimiter + b'\n\r"')] = True
    return table


_BOUNDARY = {d: _boundary_bytes(d) for d in (b",", b"\t")}


def _quote_toggles(body: bytes, delimiter: bytes = b",") -> np.ndarray:
    """Positions in ``body`` (which starts at a row boundary) where a quoted field opens or closes.

    In RFC 4180 data every quote does one or the other ("" counts as closing and reopening), and
    quotes alternate: opening ones follow a delimiter or line break, closing ones precede one.
    That is checked vectorised; a stray quote (``a"b``, ``"ab"c``) anywhere in the body sends it
    through ``_quote_toggles_exact`` instead, where the count of quotes would be wrong.
    """
    data = np.frombuffer(body, dtype=np.uint8)
    quotes = np.flatnonzero(data == _QUOTE)
    before = data[np.maximum(quotes - 1, 0)]
    after = data[np.minimum(quotes + 1, len(data) - 1)]
    opens = np.arange(len(quotes)) % 2 == 0
    boundary = _BOUNDARY[delimiter]
    well_placed = np.where(opens, (quotes == 0) | boundary[before], (quotes == len(data) - 1) | boundary[after])
    if well_placed.all():
        return quotes
    return _quote_toggles_exact(body, quotes.tolist(), delimiter)


def _quote_toggles_exact(body: bytes, quotes: list[int], delimiter: bytes = b",") -> np.ndarray:
    """The csv module's reading of each quote, one at a time (only quotes are visited)."""
    toggles = []
    inside = False
    escaped = -1
    for pos in quotes:
        if pos == escaped:
            continue
        if inside:
            if pos + 1 < len(body) and body[pos + 1] == _QUOTE:
                escaped = pos + 1  # "" inside a quoted field: a quote, the field goes on
                continue
            inside = False
        elif pos > 0 and body[pos - 1] not in delimiter + b"\n\r":
            continue  # not at the start of a field: an ordinary character
        else:
            inside = True
        toggles.append(pos)
    return np.array(toggles, dtype=np.int64)


def _parse(body: bytes, names: tuple[str, ...], first_line: int, source: str | None = None) -> Chunk:
    table = _parse_fast(body, names)
    if table is not None:
        return Chunk(table)
    return _parse_exact(body, names, first_line, source)


DICTIONARY_STRINGS = pa.dictionary(pa.int32(), pa.string())
# Parse blocks of 4 MB hold ~65k rows: each becomes one stream message, already
# dictionary-encoded by the parser, so the client never hashes a string twice.
PARSE_BLOCK_BYTES = 4 << 20


def _parse_fast(body: bytes, names: tuple[str, ...]) -> pa.Table | None:
    """Arrow's parse and vectorised checks; None if anything in the chunk is not clean.

    A row with the wrong number of fields makes Arrow raise (no invalid-row handler: pyarrow
    decodes the row's text for one and prints a traceback when it is not UTF-8)."""
    with_plays = PLAYS in names
    try:
        table = parse_arrow(
            body,
            list(names),
            {c: DICTIONARY_STRINGS if c in STRING_COLUMNS else pa.string() for c in names},
            [*REQUIRED, PLAYS] if with_plays else list(REQUIRED),
        )
        if any(has_empty_string(table[name]) for name in STRING_COLUMNS):
            return None
        duration = whole_numbers(table["duration"], 0)
        timestamp = epoch_seconds(table["timestamp"])
        plays = whole_numbers(table[PLAYS], 1) if with_plays else None
        if duration is None or timestamp is None or (with_plays and plays is None):
            return None
    except pa.ArrowInvalid:
        return None
    columns = {c: table[c] for c in STRING_COLUMNS} | {"duration": duration, "timestamp": timestamp}
    return pa.table(columns | {PLAYS: plays} if with_plays else columns)


def parse_arrow(body: bytes, names: list[str], types: dict[str, pa.DataType], include: list[str],
                delimiter: str = ",") -> pa.Table:  # fmt: skip
    """``body`` (rows, no header) parsed by Arrow: the columns ``include`` of ``names``, of
    ``types``, no value null. Raises pa.ArrowInvalid on a row of the wrong length or invalid
    UTF-8 in a column read."""
    return pa_csv.read_csv(
        io.BytesIO(body),
        read_options=pa_csv.ReadOptions(column_names=names, use_threads=True, block_size=PARSE_BLOCK_BYTES),
        parse_options=pa_csv.ParseOptions(delimiter=delimiter, newlines_in_values=b'"' in body),
        convert_options=pa_csv.ConvertOptions(
            column_types=types,
            include_columns=include,
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    )


def has_empty_string(column: pa.ChunkedArray) -> bool:
    """True if a dictionary-encoded column holds an empty string (its dictionaries hold only the
    values used: Arrow's parser builds one per block)."""
    return any(len(c.dictionary) and pc.min(pc.binary_length(c.dictionary)).as_py() == 0 for c in column.chunks)


def whole_numbers(text: pa.ChunkedArray, minimum: int) -> pa.ChunkedArray | None:
    """Text of whole numbers ``minimum`` .. 2^32-1 as uint32, or None if any value is not one.
    Numbers are read from text because Arrow's integer parser accepts "0x10" and " 5"; its
    is-digit test takes any Unicode digit, but the cast then raises pa.ArrowInvalid on one,
    as it does past 2^32-1."""
    if not pc.all(pc.utf8_is_digit(text)).as_py():
        return None
    numbers = pc.cast(text, pa.uint32())
    if minimum and len(numbers) and pc.min(numbers).as_py() < minimum:
        return None
    return numbers


def epoch_seconds(ts: pa.ChunkedArray) -> pa.ChunkedArray | None:
    """Epoch seconds (int64, floored) of ISO 8601 text, or None if Arrow's parser cannot read
    every value (then the exact path decides)."""
    parts = []
    for chunk in ts.chunks:
        seconds = _epoch_seconds_fast(chunk)
        if seconds is None:
            return None
        parts.append(seconds)
    return pa.chunked_array(parts, type=pa.int64())


def _epoch_seconds_fast(ts: pa.Array) -> pa.Array | None:
    # A cast reads values all with a zone (tz="UTC": the offset applied) or all without; a chunk
    # mixing them is split by the zone's shape and each part cast on its own.
    nanos = None
    for zone in ("UTC", None):
        try:
            nanos = pc.cast(ts, pa.timestamp("ns", tz=zone)).cast(pa.int64()).to_numpy()
            break
        except pa.ArrowInvalid:
            continue
    if nanos is None:
        zoned = pc.match_substring_regex(ts, _ZONED)
        mask = zoned.to_numpy(zero_copy_only=False)
        nanos = np.empty(len(ts), dtype=np.int64)
        try:
            nanos[mask] = pc.cast(ts.filter(zoned), pa.timestamp("ns", tz="UTC")).cast(pa.int64()).to_numpy()
            nanos[~mask] = pc.cast(ts.filter(pc.invert(zoned)), pa.timestamp("ns")).cast(pa.int64()).to_numpy()
        except pa.ArrowInvalid:
            return None
    # Floor division: 1969-12-31T23:59:59.5Z is -1, not 0.
    seconds = nanos // 1_000_000_000
    if len(seconds) and (seconds.min() < MIN_TIMESTAMP or seconds.max() >= MAX_TIMESTAMP):
        return None  # the exact path rejects the rows outside the range
    return pa.array(seconds, type=pa.int64())


def _iso8601_timestamps(ts: pa.ChunkedArray) -> bool:
    """True if the fast path reads every value of ``ts``."""
    return epoch_seconds(ts) is not None


Problem = tuple[str, str | None, str]  # reason, field, message


def check_row(row: list[str], names: tuple[str, ...]) -> Problem | None:
    """Why a parsed row is invalid, as (reason, field, message), or None if it is valid."""
    if len(row) != len(names):
        return "wrong_field_count", None, f"expected {len(names)} fields, found {len(row)}"
    values = dict(zip(names, row, strict=True))
    with_plays = PLAYS in values
    for name in (*REQUIRED, PLAYS) if with_plays else REQUIRED:
        if not valid_utf8(values[name]):
            return "invalid_utf8", name, f"{name} is not valid UTF-8"
    for name in STRING_COLUMNS:
        if not values[name]:
            return "empty_field", name, f"{name} is empty"
    duration = values["duration"]
    if whole_number(duration, 0, MAX_DURATION) is None:
        return (
            "invalid_duration",
            "duration",
            (f"duration {duration!r} is not a whole number of seconds between 0 and {MAX_DURATION}"),
        )
    ts = values["timestamp"]
    seconds = parse_timestamp(ts)
    if seconds is None:
        return "invalid_timestamp", "timestamp", f"timestamp {ts!r} is not an ISO 8601 date-time"
    if not MIN_TIMESTAMP <= seconds < MAX_TIMESTAMP:
        return "invalid_timestamp", "timestamp", f"timestamp {ts!r} {TIMESTAMP_RANGE}"
    return check_plays(values[PLAYS], PLAYS) if with_plays else None


def check_plays(value: str, name: str) -> Problem | None:
    """The rejection of a play count (column ``name``) that is not a whole number 1 .. 2^32-1."""
    if whole_number(value, 1, MAX_PLAYS) is None:
        return "invalid_plays", name, f"{name} {value!r} is not a whole number of plays between 1 and {MAX_PLAYS}"
    return None


def valid_utf8(text: str) -> bool:
    """False if ``text`` (decoded with surrogateescape) held bytes that are not UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def whole_number(text: str, minimum: int, maximum: int) -> int | None:
    """``text`` as an int if it is only the digits 0-9 and minimum .. maximum, else None.
    Leading zeros are dropped before int(): Python refuses to convert more than 4300 digits
    (ValueError), and a value that long is only out of range."""
    if not _DIGITS.fullmatch(text):
        return None
    digits = text.lstrip("0")
    if len(digits) > len(str(maximum)):
        return None
    value = int(digits or "0")
    return value if minimum <= value <= maximum else None


TIMESTAMP_RANGE = "is outside the times accepted, 1900-01-01 up to 2200-01-01 UTC"


def _parse_exact(body: bytes, names: tuple[str, ...], first_line: int, source: str | None = None) -> Chunk:
    """Row by row with the csv module: slow, exact, and knows every row's line number."""
    text = body.decode("utf-8", errors="surrogateescape")
    reader = csv.reader(io.StringIO(text, newline=""))
    with_plays = PLAYS in names
    columns: dict[str, list] = {c: [] for c in (*STRING_COLUMNS, "duration", "timestamp", PLAYS)}
    positions = {c: names.index(c) for c in (*REQUIRED, PLAYS) if c in names}
    rejected = []
    previous_line = 0
    for row in reader:
        line = first_line + previous_line
        previous_line = reader.line_num
        if not row:  # blank line, skipped as Arrow does
            continue
        problem = check_row(row, names)
        if problem is not None:
            rejected.append(Rejection(line, *problem, source=source))
            continue
        for c in STRING_COLUMNS:
            columns[c].append(row[positions[c]])
        columns["duration"].append(whole_number(row[positions["duration"]], 0, MAX_DURATION))
        columns["timestamp"].append(parse_timestamp(row[positions["timestamp"]]))
        if with_plays:
            columns[PLAYS].append(whole_number(row[positions[PLAYS]], 1, MAX_PLAYS))
    arrays = {
        "user_id": pa.array(columns["user_id"], type=pa.string()),
        "song_id": pa.array(columns["song_id"], type=pa.string()),
        "artist": pa.array(columns["artist"], type=pa.string()),
        "duration": pa.array(columns["duration"], type=pa.uint32()),
        "timestamp": pa.array(columns["timestamp"], type=pa.int64()),
    }
    if with_plays:
        arrays[PLAYS] = pa.array(columns[PLAYS], type=pa.uint32())
    return Chunk(pa.table(arrays), rejected)
