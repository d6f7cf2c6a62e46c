"""Local time for many instants at once: a time zone's UTC offsets as a table, looked up with numpy.

Python's zoneinfo answers one instant at a time (about a microsecond each): ten million events
would cost seconds. A zone's offset changes only at its transitions, a few per year, so the
transitions inside the range of the data are found once (zoneinfo sampled every few hours, then
bisected to the second) and every instant is mapped with one ``searchsorted``.
"""

from __future__ import annotations

import bisect
import datetime as dt
import zoneinfo

import numpy as np

UTC_NAME = "UTC"
# Sampling step when looking for transitions: no zone has had two transitions this close.
_STEP = 6 * 3600
_MARGIN_DAYS = 366
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class UnknownTimeZoneError(ValueError):
    """The name is not an IANA time zone."""


def load_zone(name: str) -> dt.tzinfo:
    """The zone called ``name`` ("" or "UTC": UTC); raises UnknownTimeZoneError naming it."""
    if not name or name == UTC_NAME:
        return dt.UTC
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        raise UnknownTimeZoneError(
            f"unknown time zone {name!r}; expected an IANA name such as Europe/Berlin or America/New_York"
        ) from None


def _offset(zone: dt.tzinfo, ts: int) -> int:
    when = _EPOCH + dt.timedelta(seconds=ts)
    return int(when.astimezone(zone).utcoffset().total_seconds())


class LocalClock:
    """Maps UTC epoch seconds to local "wall clock" epoch seconds in one zone (local = UTC + offset).

    Call ``cover`` with the range of instants before ``local``; the table grows as new ranges come.
    """

    def __init__(self, name: str = UTC_NAME) -> None:
        self.name = name or UTC_NAME
        self._zone = load_zone(self.name)
        self._fixed = self._zone is dt.UTC
        self._lo: int | None = None
        self._hi: int | None = None
        # offsets[i] applies from starts[i] (inclusive) to starts[i + 1]; starts[0] is the range's start.
        self._starts = np.zeros(1, dtype=np.int64)
        self._offsets = np.zeros(1, dtype=np.int64)
        self._plain: tuple[np.ndarray, list[int], list[int]] | None = None  # the table as lists, for one-off look-ups

    def cover(self, lo: int, hi: int) -> None:
        """Make sure the table is exact for every instant in [lo, hi]."""
        if self._fixed:
            return
        if self._lo is not None and lo >= self._lo and hi <= self._hi:
            return
        # Widened by a year each way: events come in time order, a batch a little past the last,
        # and each growth scans only the stretch it adds.
        lo, hi = (lo // 86400 - _MARGIN_DAYS) * 86400, (hi // 86400 + _MARGIN_DAYS) * 86400
        if self._lo is None:
            starts, offsets = self._scan(lo, hi)
        else:
            starts, offsets = self._starts.tolist(), self._offsets.tolist()
            if lo < self._lo:
                # The old table starts at its own lo, with the offset there: it follows on as it is.
                before, before_offsets = self._scan(lo, self._lo)
                starts, offsets = before + starts, before_offsets + offsets
            if hi > self._hi:
                after, after_offsets = self._scan(self._hi, hi)
                starts, offsets = starts + after[1:], offsets + after_offsets[1:]
            lo, hi = min(lo, self._lo), max(hi, self._hi)
        self._lo, self._hi = lo, hi
        self._starts = np.asarray(starts, dtype=np.int64)
        self._offsets = np.asarray(offsets, dtype=np.int64)

    def _scan(self, lo: int, hi: int) -> tuple[list[int], list[int]]:
        """The offset at ``lo`` and every change in (lo, hi], as (starts, offsets)."""
        starts, offsets = [lo], [_offset(self._zone, lo)]
        t = lo
        while t < hi:
            nxt = min(t + _STEP, hi)
            after = _offset(self._zone, nxt)
            if after != offsets[-1]:
                # The change happens in (t, nxt]: bisect to the first second with the new offset.
                a, b = t, nxt
                while b - a > 1:
                    mid = (a + b) // 2
                    if _offset(self._zone, mid) == offsets[-1]:
                        a = mid
                    else:
                        b = mid
                starts.append(b)
                offsets.append(after)
            t = nxt
        return starts, offsets

    def offsets(self, ts: np.ndarray) -> np.ndarray:
        """The UTC offset in seconds at each instant (which must lie in a covered range)."""
        if self._fixed or len(self._offsets) == 1:
            return np.full(len(ts), self._offsets[0] if not self._fixed else 0, dtype=np.int64)
        return self._offsets[np.searchsorted(self._starts, ts, side="right") - 1]

    def local(self, ts: np.ndarray) -> np.ndarray:
        """Local wall-clock time of each instant, as seconds since 1970-01-01T00:00 local."""
        ts = np.asarray(ts, dtype=np.int64)
        if self._fixed:
            return ts
        if len(ts):
            self.cover(int(ts.min()), int(ts.max()))
        return ts + self.offsets(ts)

    def first_instant(self, local_midnight: int) -> int:
        """The first UTC instant whose local time is at or after ``local_midnight`` (local seconds):
        where a local period starts. Exact across DST changes, also where midnight itself is skipped
        or comes twice (the earlier one)."""
        if self._fixed:
            return local_midnight
        self.cover(local_midnight - 2 * 86400, local_midnight + 2 * 86400)
        starts, offsets = self._lists()
        # Within the stretch of constant offset i, local time passes local_midnight at
        # local_midnight - offset; the first stretch where that instant lies inside it wins.
        i = max(bisect.bisect_right(starts, local_midnight - 2 * 86400) - 1, 0)
        while True:
            candidate = max(starts[i], local_midnight - offsets[i])
            if i + 1 == len(starts) or candidate < starts[i + 1]:
                return candidate
            i += 1

    def _lists(self) -> tuple[list[int], list[int]]:
        if self._plain is None or self._plain[0] is not self._starts:
            self._plain = (self._starts, self._starts.tolist(), self._offsets.tolist())
        return self._plain[1], self._plain[2]


def month_of_day(days: np.ndarray) -> np.ndarray:
    """The month (since January 1970) of each day (since 1970-01-01)."""
    return days.astype("datetime64[D]").astype("datetime64[M]").astype(np.int64)


__all__ = ["LocalClock", "UnknownTimeZoneError", "load_zone", "month_of_day"]
