"""ISO 8601 event times, as every input carries them: text to seconds since 1970 UTC."""

from __future__ import annotations

import calendar
import re

# A calendar date, optionally a time (minutes, seconds and a fraction optional) and a zone; no
# zone means UTC. A leap second (:60) is the next second; a fraction is dropped (floored).
TIMESTAMP_PATTERN = (
    r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
    r"([T ]([01][0-9]|2[0-3])(:[0-5][0-9](:([0-5][0-9]|60)([.,][0-9]+)?)?)?"
    r"(Z|[+-]([01][0-9]|2[0-3])(:?[0-5][0-9])?)?)?$"
)
_PARTS = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})"
    r"(?:[T ]([0-9]{2})(?::([0-9]{2})(?::([0-9]{2})(?:[.,][0-9]+)?)?)?"
    r"(Z|([+-])([0-9]{2}):?([0-9]{2})?)?)?"
)
_VALID = re.compile(TIMESTAMP_PATTERN)


def parse_timestamp(text: str) -> int:
    """Seconds since 1970-01-01T00:00:00Z of an ISO 8601 date-time; ValueError if it is not one
    (by TIMESTAMP_PATTERN) or names no such day (2023-02-29)."""
    if _VALID.fullmatch(text) is None:
        raise ValueError(f"{text!r} is not an ISO 8601 date-time")
    m = _PARTS.fullmatch(text)
    year, month, day = int(m[1]), int(m[2]), int(m[3])
    if day > calendar.monthrange(year, month)[1]:
        raise ValueError(f"{text!r} names no such day")
    seconds = calendar.timegm((year, month, day, 0, 0, 0)) + int(m[4] or 0) * 3600 + int(m[5] or 0) * 60
    seconds += int(m[6] or 0)
    if m[8]:
        offset = int(m[9]) * 3600 + int(m[10] or 0) * 60
        seconds -= offset if m[8] == "+" else -offset
    return seconds
