"""Play-count files: how many times each user played each artist, one (user, artist) pair a row.

The shape of the HetRec 2011 Last.fm dataset's ``user_artists.dat`` (``userID\\tartistID\\tweight``)
and of any CSV or TSV export of per-artist play counts. The rules:

* The header is the first line (a UTF-8 byte order mark before it is skipped). Its delimiter is
  a tab if the line holds one, else a comma; the whole file uses it. Quoting is the csv
  module's, as in csv_source (a field starting with ``"`` is quoted), with that delimiter.
* The header names a user column (``user_id``, ``userID`` or ``user``), an artist column
  (``artist``, ``artist_name`` or ``artistID``) and a play-count column (``plays``, ``weight``
  or ``count``), matched ignoring case and surrounding spaces, in any order, among any other
  columns (not read). Where a file has more than one name of a kind, the first in those lists
  is used (``artist`` over ``artistID``: a name says more than a number); one name written
  twice makes the file unusable (InputError), as does a header lacking a kind.
* Ids stay text: userID 2 is the user "2".
* A row is rejected for the first of these that applies: ``wrong_field_count`` (not as many
  fields as the header), ``invalid_utf8`` (in one of the three columns read), ``empty_field``
  (user or artist empty), ``invalid_plays`` (not only the digits 0-9, 0, or above 2^32-1).
  A rejection names the column as the header writes it (``weight``).
* The same (user, artist) pair may come on several rows: each is kept (a consumer sums them).

Chunks hold user_id, artist (strings) and plays (uint32), and are read as csv_source reads
events: cut at row boundaries, parsed by Arrow, and only a chunk Arrow or the checks find
anything wrong in re-read row by row with the csv module, which decides what is rejected.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import pyarrow as pa

from music_analytics.client.csv_source import (
    CHUNK_BYTES,
    DICTIONARY_STRINGS,
    HEADER_MAX_BYTES,
    MAX_PLAYS,
    MAX_ROW_BYTES,
    PLAYS,
    Chunk,
    InputError,
    Problem,
    Rejection,
    check_plays,
    has_empty_string,
    header_text,
    open_input,
    parse_arrow,
    read_chunks,
    valid_utf8,
    whole_number,
    whole_numbers,
)

# The names each column may have (lower case), the preferred first.
USER_NAMES = ("user_id", "userid", "user")
ARTIST_NAMES = ("artist", "artist_name", "artistid")
PLAYS_NAMES = ("plays", "weight", "count")
KINDS = {"user": USER_NAMES, "artist": ARTIST_NAMES, "play-count": PLAYS_NAMES}
ARTICLES = {"user": "a", "artist": "an", "play-count": "a"}
EXPECTED = "a user column ({}), an artist column ({}) and a play-count column ({})".format(
    *(", ".join(names) for names in KINDS.values())
)


@dataclass(frozen=True)
class Header:
    names: tuple[str, ...]  # as the file writes them
    delimiter: str  # "\t" or ","
    user: int  # positions of the columns read
    artist: int
    plays: int
    length: int  # bytes, including the byte order mark and the line break

    @property
    def read(self) -> tuple[tuple[str, int], ...]:
        """(column of the chunks' table, position in a row) of the three columns read."""
        return ("user_id", self.user), ("artist", self.artist), (PLAYS, self.plays)


def delimiter_of(line: str) -> str:
    return "\t" if "\t" in line else ","


def _fields(line: str) -> list[str]:
    """The header line's fields (raises csv.Error on a lone carriage return in it)."""
    return next(csv.reader([line.rstrip("\r\n")], delimiter=delimiter_of(line)), [])


def _positions(fields: list[str]) -> tuple[dict[str, int], list[str], list[str]]:
    """The position of each kind of column, the kinds missing, the names repeated."""
    names = [f.strip().lower() for f in fields]
    positions, missing, repeated = {}, [], []
    for kind, choices in KINDS.items():
        name = next((n for n in choices if n in names), None)
        if name is None:
            missing.append(kind)
            continue
        positions[kind] = names.index(name)
        if names.count(name) > 1:
            repeated.append(fields[positions[kind]])
    return positions, missing, repeated


def looks_like_playcounts(line: str) -> bool:
    """True if ``line`` (a file's first line) is a play-count header."""
    try:
        _, missing, _ = _positions(_fields(line))
    except csv.Error:
        return False
    return not missing


def parse_header(raw: bytes, path: str) -> Header:
    """The header from the file's first line (``raw``, read with a limit of HEADER_MAX_BYTES + 1)."""
    text = header_text(raw, path, f"naming {EXPECTED}")
    try:
        fields = _fields(text)
    except csv.Error as exc:  # a lone carriage return in the line
        raise InputError(f"{path}:1: header is not one line: {exc}") from None
    positions, missing, repeated = _positions(fields)
    if missing:
        lacking = " and ".join(f"{ARTICLES[kind]} {kind} column" for kind in missing)
        raise InputError(f"{path}:1: header lacks {lacking}; expected {EXPECTED}, found {', '.join(fields)}")
    if repeated:
        raise InputError(f"{path}:1: header repeats column(s) {', '.join(repeated)}")
    return Header(tuple(fields), delimiter_of(text), positions["user"], positions["artist"],
                  positions["play-count"], len(raw))  # fmt: skip


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
    """The rows of a play-count file chunk by chunk (``Chunk.end_offset``: bytes read so far);
    ``path`` names it in errors, ``source`` (if set) is put in every Rejection. ``strict`` raises
    csv_source.BadRowError at the first rejected row."""
    with open_input(open_binary, path) as f:
        header = parse_header(f.readline(HEADER_MAX_BYTES + 1), path)
        yield from read_chunks(
            f,
            header.length,
            path,
            lambda body, line: parse(body, header, line, source),
            delimiter=header.delimiter.encode(),
            strict=strict,
            chunk_bytes=chunk_bytes,
            stop_offset=stop_offset,
            max_row_bytes=max_row_bytes,
        )


def parse(body: bytes, header: Header, first_line: int, source: str | None = None) -> Chunk:
    table = parse_fast(body, header)
    if table is not None:
        return Chunk(table)
    return parse_exact(body, header, first_line, source)


def parse_fast(body: bytes, header: Header) -> pa.Table | None:
    """Arrow's parse and vectorised checks; None if anything in the chunk is not clean."""
    # Columns by position: the file's own names may repeat (other columns) or differ in case.
    names = [f"c{i}" for i in range(len(header.names))]
    user, artist, plays = names[header.user], names[header.artist], names[header.plays]
    try:
        table = parse_arrow(body, names, {user: DICTIONARY_STRINGS, artist: DICTIONARY_STRINGS, plays: pa.string()},
                            [user, artist, plays], header.delimiter)  # fmt: skip
        if has_empty_string(table[user]) or has_empty_string(table[artist]):
            return None
        counts = whole_numbers(table[plays], 1)
    except pa.ArrowInvalid:
        return None
    if counts is None:
        return None
    return pa.table({"user_id": table[user], "artist": table[artist], PLAYS: counts})


def check_row(row: list[str], header: Header) -> Problem | None:
    """Why a parsed row is invalid, as (reason, field, message), or None if it is valid."""
    if len(row) != len(header.names):
        return "wrong_field_count", None, f"expected {len(header.names)} fields, found {len(row)}"
    for _, position in header.read:
        if not valid_utf8(row[position]):
            name = header.names[position]
            return "invalid_utf8", name, f"{name} is not valid UTF-8"
    for position in (header.user, header.artist):
        if not row[position]:
            name = header.names[position]
            return "empty_field", name, f"{name} is empty"
    return check_plays(row[header.plays], header.names[header.plays])


def parse_exact(body: bytes, header: Header, first_line: int, source: str | None = None) -> Chunk:
    """Row by row with the csv module: slow, exact, and knows every row's line number."""
    text = body.decode("utf-8", errors="surrogateescape")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=header.delimiter)
    users, artists, plays = [], [], []
    rejected = []
    previous_line = 0
    for row in reader:
        line = first_line + previous_line
        previous_line = reader.line_num
        if not row:  # blank line, skipped as Arrow does
            continue
        problem = check_row(row, header)
        if problem is not None:
            rejected.append(Rejection(line, *problem, source=source))
            continue
        users.append(row[header.user])
        artists.append(row[header.artist])
        plays.append(whole_number(row[header.plays], 1, MAX_PLAYS))
    table = pa.table({
        "user_id": pa.array(users, type=pa.string()),
        "artist": pa.array(artists, type=pa.string()),
        PLAYS: pa.array(plays, type=pa.uint32()),
    })  # fmt: skip
    return Chunk(table, rejected)
