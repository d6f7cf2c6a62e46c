"""ISO 8601 event times, as every input carries them: text to seconds since 1970 UTC.

The one rule for the client's readers (the CSV's exact path, the Last.fm and Spotify importers)
and for the services' plain records.
"""

from __future__ import annotations

import datetime as dt
import re

# A calendar date, optionally a time (minutes, seconds and a fraction optional) and a zone; no
# zone means UTC. A leap second (:60) is the next second; a fraction is dropped (floored).
TIMESTAMP_PATTERN = (
    r"^(?P<year>[0-9]{4})-(?P<month>0[1-9]|1[0-2])-(?P<day>0[1-9]|[12][0-9]|3[01])"
    r"([T ](?P<hour>[01][0-9]|2[0-3])(:(?P<minute>[0-5][0-9])(:(?P<second>[0-5][0-9]|60)([.,][0-9]+)?)?)?"
    r"(Z|(?P<sign>[+-])(?P<zone_hours>[01][0-9]|2[0-3])(:?(?P<zone_minutes>[0-5][0-9]))?)?)?$"
)
# Applied with fullmatch: with match, "$" also matches before a final "\n" ("5\n" in quotes).
_TIMESTAMP = re.compile(TIMESTAMP_PATTERN)
_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()
# Days since the epoch by date text: histories repeat dates, and a dict lookup is several times
# faster than building a date. Bounded, so that memory does not grow with a long input.
_EPOCH_DAYS: dict[str, int] = {}
_EPOCH_DAYS_MAX = 1 << 16


def parse_timestamp(text: str) -> int | None:
    """Epoch seconds (UTC, floored) of ``text`` by TIMESTAMP_PATTERN, or None if it is not one
    (or names no such day, 2023-02-29)."""
    match = _TIMESTAMP.fullmatch(text)
    if match is None:
        return None
    day = _EPOCH_DAYS.get(text[:10])
    if day is None:
        try:
            day = dt.date(int(text[:4]), int(text[5:7]), int(text[8:10])).toordinal() - _EPOCH_ORDINAL
        except ValueError:
            return None
        if len(_EPOCH_DAYS) < _EPOCH_DAYS_MAX:
            _EPOCH_DAYS[text[:10]] = day
    hour, minute, second, sign = match.group("hour", "minute", "second", "sign")
    # A fraction never changes the floored second; ":60" adds up to the next second by itself.
    seconds = day * 86400
    if hour is not None:
        seconds += int(hour) * 3600 + (int(minute) * 60 if minute else 0) + (int(second) if second else 0)
    if sign is not None:
        zone_hours, zone_minutes = match.group("zone_hours", "zone_minutes")
        offset = int(zone_hours) * 3600 + (int(zone_minutes) * 60 if zone_minutes else 0)
        seconds -= offset if sign == "+" else -offset
    return seconds
