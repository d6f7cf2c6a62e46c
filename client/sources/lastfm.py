"""Last.fm listening histories: the Last.fm-1K research dataset and scrobble-export CSVs.

lastfm-1k: ``userid-timestamp-artid-artname-traid-traname.tsv`` (Òscar Celma's dataset of 1,000
users), no header, six tab-separated fields per line: user id, ISO 8601 UTC timestamp, artist
MBID, artist name, track MBID, track name. Tabs are the only separators: quotes are text. Song =
the track MBID if set, else the track name; duration 0 (the dataset has none).

lastfm-scrobbles: the CSV of scrobble exporters such as lastfm-to-csv: ``artist,album,track,date``
per line, no header, the date in UTC like ``31 Jan 2021 14:05``. A header line is accepted too;
with one the columns go by name and may include ``uts`` (epoch seconds, preferred over the date).
The file names no user: ``--user``. Song = the track name; duration 0.
"""

from __future__ import annotations

import calendar
import csv
import re
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

from music_analytics.client.csv_source import TIMESTAMP_RANGE
from music_analytics.client.sources.inputs import Member
from music_analytics.client.sources.records import BadRecordError, Event, checked_timestamp, text_field, text_lines
from music_analytics.services.common.timestamps import parse_timestamp

LASTFM_1K_FIELDS = ("userid", "timestamp", "artist-mbid", "artist-name", "track-mbid", "track-name")
ISO_UTC = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")


def lastfm_1k_line(text: str) -> bool:
    fields = text.split("\t")
    return len(fields) == len(LASTFM_1K_FIELDS) and ISO_UTC.fullmatch(fields[1]) is not None


def convert_1k(text: str) -> Event:
    fields = text.split("\t")
    if len(fields) != len(LASTFM_1K_FIELDS):
        message = f"expected {len(LASTFM_1K_FIELDS)} tab-separated fields, found {len(fields)}"
        raise BadRecordError("wrong_field_count", None, message)
    user, stamp, _, artist, track_mbid, track = fields
    user = text_field(user, "userid")
    seconds = parse_timestamp(stamp)
    if seconds is None:
        raise BadRecordError("invalid_timestamp", "timestamp", f"timestamp {stamp!r} is not an ISO 8601 date-time")
    artist = text_field(artist, "artist-name")
    song = text_field(track_mbid, "track-mbid", required=False) or text_field(track, "track-name")
    assert user is not None and artist is not None and song is not None
    return user, song, artist, 0, checked_timestamp(seconds, "timestamp")


# ---------------------------------------------------------------------------------------------

MONTHS = {name: i for i, name in enumerate(calendar.month_abbr) if name}  # English, whatever the locale
SCROBBLE_DATE = re.compile(
    r"(?P<day>[0-9]{1,2}) (?P<month>[A-Z][a-z]{2}) (?P<year>[0-9]{4}),? (?P<hour>[0-9]{2}):(?P<minute>[0-9]{2})"
)
SCROBBLE_COLUMNS = ("artist", "album", "track", "date")
WHOLE_SECONDS = re.compile(r"-?[0-9]+")
MAX_SECONDS_DIGITS = 19  # an int64's: any longer value is far outside the times accepted


def scrobble_date(text: str) -> int | None:
    """Epoch seconds of ``31 Jan 2021 14:05`` (UTC), or None."""
    match = SCROBBLE_DATE.fullmatch(text)
    if match is None or match["month"] not in MONTHS:
        return None
    stamp = f"{match['year']}-{MONTHS[match['month']]:02d}-{int(match['day']):02d}T{match['hour']}:{match['minute']}Z"
    return parse_timestamp(stamp)


def scrobble_header(fields: list[str]) -> dict[str, int] | None:
    """Column positions if ``fields`` is a header line (names artist, track and date or uts)."""
    names = [f.strip().lower() for f in fields]
    if "artist" in names and "track" in names and ("date" in names or "uts" in names):
        return {n: names.index(n) for n in ("artist", "track", "date", "uts") if n in names}
    return None


def scrobble_line(fields: list[str]) -> bool:
    return (len(fields) == 4 and scrobble_date(fields[3]) is not None) or scrobble_header(fields) is not None


def scrobble_rows(member: Member, raw: BinaryIO) -> Iterator[tuple[int, Any]]:
    """Rows of a scrobble CSV (the csv module's quoting), each with its line number, as
    (fields, column positions)."""
    columns = dict(zip(SCROBBLE_COLUMNS, range(4), strict=True))
    expected = 4
    lines = text_lines(member, raw)
    first = True
    for number, text in lines:
        try:
            fields = next(csv.reader([text]))
        except csv.Error as exc:
            yield number, BadRecordError("wrong_field_count", None, f"not a CSV line: {exc}")
            continue
        if first:
            first = False
            header = scrobble_header(fields)
            if header is not None:
                columns, expected = header, len(fields)
                continue
        yield number, (fields, columns, expected)


def convert_scrobble(default_user: str | None) -> Callable[[Any], Event]:
    def convert(row: Any) -> Event:
        fields, columns, expected = row
        if len(fields) != expected:
            raise BadRecordError("wrong_field_count", None, f"expected {expected} fields, found {len(fields)}")
        artist = text_field(fields[columns["artist"]], "artist")
        song = text_field(fields[columns["track"]], "track")
        if "uts" in columns:
            uts = fields[columns["uts"]]
            if not WHOLE_SECONDS.fullmatch(uts):
                raise BadRecordError("invalid_timestamp", "uts", f"uts {uts!r} is not a whole number of seconds")
            if len(uts.lstrip("-").lstrip("0")) > MAX_SECONDS_DIGITS:  # int() refuses over 4300 digits
                raise BadRecordError("invalid_timestamp", "uts", f"uts of {len(uts)} digits {TIMESTAMP_RANGE}")
            seconds: int | None = int(uts)
        else:
            date = fields[columns["date"]]
            seconds = scrobble_date(date)
            if seconds is None:
                raise BadRecordError("invalid_timestamp", "date", f"date {date!r} is not like '31 Jan 2021 14:05'")
        assert default_user is not None and artist is not None and song is not None and seconds is not None
        return default_user, song, artist, 0, checked_timestamp(seconds, "uts" if "uts" in columns else "date")

    return convert
