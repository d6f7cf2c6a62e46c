"""``music-analytics report``: one self-contained HTML page from a run's results JSON and per-user JSON Lines.

Everything the page shows is in the file: CSS and a small script inline, charts as inline SVG or HTML
drawn here (so they show with JavaScript off), per-user data as JSON in a ``<script
type="application/json">``. Opening it fetches nothing.

Per-user statistics can run to a million lines: the page embeds those of the ``--max-users`` most
active users (by total listening time, ties by user_id: the contract's ranking rule), read in one
streaming pass with bounded memory, and says where the others are.

Every element that draws a number carries it in ``data-value`` (and what it is in ``data-label``),
so what is drawn can be read back and checked.
"""

from __future__ import annotations

import argparse
import html
import math
import os
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any, NoReturn
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson

from music_analytics.services.common.contract import top_ranked

EXIT_OK, EXIT_INPUT = 0, 2
DEFAULT_MAX_USERS = 5000
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
HOURS = 24
GRANULARITIES = ("year", "month", "day")
# The period shown first: months say most about a history of any length.
DEFAULT_GRANULARITY = "month"
# Days drawn at most (the latest ones): more than this are thinner than a pixel on a laptop.
MAX_DAY_BARS = 1000
KNOWN_TOP_LEVEL = ("mapreduce_results", "userbehavior_results", "recommendation_results", "listening_stats")


class ReportError(Exception):
    """Unusable input or output. The message is one line naming the file (and the line, in JSON Lines)."""


# --------------------------------------------------------------------------- reading and checking


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"the string {shown!r}"
    return "an array" if isinstance(value, list) else "an object"


@dataclass(frozen=True)
class _Checker:
    """Type checks on decoded JSON: a mismatch is a ReportError naming the file (and line) and the key path."""

    source: str  # "results.json" or "users.jsonl:12"

    def fail(self, where: str, message: str) -> NoReturn:
        raise ReportError(f"{self.source}: {where}: {message}")

    def expect(self, value: object, kind: type | tuple[type, ...], where: str, what: str) -> Any:
        if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
            self.fail(where, f"expected {what}, got {_json_type(value)}")
        return value

    def obj(self, value: object, where: str) -> dict[str, Any]:
        return self.expect(value, dict, where, "an object")

    def array(self, value: object, where: str) -> list[Any]:
        return self.expect(value, list, where, "an array")

    def text(self, value: object, where: str) -> str:
        return self.expect(value, str, where, "a string")

    def integer(self, value: object, where: str) -> int:
        return self.expect(value, int, where, "an integer")

    def count(self, value: object, where: str) -> int:
        number = self.integer(value, where)
        if number < 0:
            self.fail(where, f"expected a count (0 or more), got {number}")
        return number

    def key(self, document: dict[str, Any], name: str, where: str) -> Any:
        if name not in document:
            self.fail(where, f"missing key {name!r}")
        return document[name]


def _has(document: dict[str, Any], key: str) -> bool:
    """A key with a value: null counts as absent (a run may write a section it had nothing for as null)."""
    return document.get(key) is not None


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


@dataclass
class Bar:
    label: str
    value: int


@dataclass
class Period:
    label: str  # "2021", "2021-03", "2021-03-28"
    from_ts: int
    to_ts: int
    count: int


@dataclass
class ListeningStats:
    timezone: str
    first_ts: int | None
    last_ts: int | None
    top_artists: list[Bar] | None
    daily: dict[tuple[int, int], int] | None  # (day index, hour) -> listens, zero cells absent
    activity: dict[str, list[Period]]  # granularity -> periods, only those the file has


@dataclass
class Results:
    path: Path
    events: int | None = None
    rows_rejected: int | None = None
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    input_format: str | None = None
    input_files: int | None = None
    skipped_by_reason: dict[str, int] | None = None
    distinct_songs: int | None = None
    total_seconds: float | None = None
    top_songs: list[Bar] | None = None
    users: list[tuple[str, int, str]] | None = None  # (user_id, total_time, top_artist)
    user_count: int | None = None
    top_users: list[Bar] | None = None
    trending: list[str] | None = None
    recommendations: dict[str, list[str]] | None = None
    listening: ListeningStats | None = None
    user_stats_path: str | None = None


def _read_json(path: Path) -> object:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ReportError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ReportError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}") from None


def _counts_by_name(check: _Checker, value: object, where: str) -> dict[str, int]:
    return {name: check.count(n, f"{where}.{name}") for name, n in check.obj(value, where).items()}


def load_results(path: Path) -> Results:
    """The results JSON as the report needs it. Missing sections are None; malformed ones a ReportError."""
    check = _Checker(str(path))
    document = _read_json(path)
    if not isinstance(document, dict):
        check.fail("top level", f"expected an object, got {_json_type(document)}")
    if not any(key in document for key in KNOWN_TOP_LEVEL):
        check.fail("top level", f"not a music-analytics results file (none of {', '.join(KNOWN_TOP_LEVEL)})")
    results = Results(path=path)
    if _has(document, "events_processed"):
        results.events = check.count(document["events_processed"], "events_processed")
    if _has(document, "rows_rejected"):
        results.rows_rejected = check.count(document["rows_rejected"], "rows_rejected")
    if _has(document, "rows_rejected_by_reason"):
        results.rejected_by_reason = _counts_by_name(
            check, document["rows_rejected_by_reason"], "rows_rejected_by_reason"
        )
    if _has(document, "input"):
        source = check.obj(document["input"], "input")
        if _has(source, "format"):
            results.input_format = check.text(source["format"], "input.format")
        if _has(source, "files"):
            results.input_files = check.count(source["files"], "input.files")
        if _has(source, "rows_skipped_by_reason"):
            skipped = source["rows_skipped_by_reason"]
            results.skipped_by_reason = _counts_by_name(check, skipped, "input.rows_skipped_by_reason")
    if _has(document, "performance"):
        performance = check.obj(document["performance"], "performance")
        if _has(performance, "total_workflow_time"):
            seconds = check.expect(
                performance["total_workflow_time"], int | float, "performance.total_workflow_time", "a number"
            )
            results.total_seconds = float(seconds)
    if _has(document, "mapreduce_results"):
        _load_mapreduce(check, check.obj(document["mapreduce_results"], "mapreduce_results"), results)
    if _has(document, "userbehavior_results"):
        _load_userbehavior(check, check.obj(document["userbehavior_results"], "userbehavior_results"), results)
    if _has(document, "recommendation_results"):
        _load_recommendations(check, check.obj(document["recommendation_results"], "recommendation_results"), results)
    if _has(document, "user_stats"):
        stats = check.obj(document["user_stats"], "user_stats")
        if _has(stats, "path"):
            results.user_stats_path = check.text(stats["path"], "user_stats.path")
        if _has(stats, "users"):
            results.user_count = check.count(stats["users"], "user_stats.users")
    if _has(document, "listening_stats"):
        results.listening = _load_listening(check, check.obj(document["listening_stats"], "listening_stats"))
    return results


def _load_mapreduce(check: _Checker, section: dict[str, Any], results: Results) -> None:
    if _has(section, "top_songs"):
        songs = check.obj(section["top_songs"], "mapreduce_results.top_songs")
        results.top_songs = [Bar(s, check.count(n, f"mapreduce_results.top_songs.{s}")) for s, n in songs.items()]
    if _has(section, "distinct_songs"):
        results.distinct_songs = check.count(section["distinct_songs"], "mapreduce_results.distinct_songs")


def _load_userbehavior(check: _Checker, section: dict[str, Any], results: Results) -> None:
    where = "userbehavior_results"
    if _has(section, "users"):
        users = []
        for i, user in enumerate(check.array(section["users"], f"{where}.users")):
            at = f"{where}.users[{i}]"
            user = check.obj(user, at)
            users.append(
                (
                    check.text(check.key(user, "user_id", at), f"{at}.user_id"),
                    check.count(check.key(user, "total_time", at), f"{at}.total_time"),
                    check.text(check.key(user, "top_artist", at), f"{at}.top_artist"),
                )
            )
        results.users = users
        if results.user_count is None:
            results.user_count = len(users)
    if _has(section, "top_users"):
        # Totals from top_users_total_time, else from the users list (older results have only that).
        totals = {u: total for u, total, _ in results.users or []}
        if _has(section, "top_users_total_time"):
            totals = _counts_by_name(check, section["top_users_total_time"], f"{where}.top_users_total_time")
        top = []
        for i, user in enumerate(check.array(section["top_users"], f"{where}.top_users")):
            user = check.text(user, f"{where}.top_users[{i}]")
            if user not in totals:
                check.fail(f"{where}.top_users_total_time", f"no total time for top user {user!r}")
            top.append(Bar(user, totals[user]))
        results.top_users = top


def _load_recommendations(check: _Checker, section: dict[str, Any], results: Results) -> None:
    where = "recommendation_results"
    if _has(section, "trending_songs"):
        trending = check.array(section["trending_songs"], f"{where}.trending_songs")
        results.trending = [check.text(s, f"{where}.trending_songs[{i}]") for i, s in enumerate(trending)]
    if _has(section, "recommendations"):
        recommendations = {}
        for user, songs in check.obj(section["recommendations"], f"{where}.recommendations").items():
            at = f"{where}.recommendations.{user}"
            recommendations[user] = [check.text(s, f"{at}[{i}]") for i, s in enumerate(check.array(songs, at))]
        results.recommendations = recommendations


def _load_listening(check: _Checker, section: dict[str, Any]) -> ListeningStats:
    where = "listening_stats"
    zone = check.text(section.get("timezone", "UTC"), f"{where}.timezone")
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        check.fail(f"{where}.timezone", f"{zone!r} is not an IANA time zone")
    first = check.integer(section["first_ts"], f"{where}.first_ts") if section.get("first_ts") is not None else None
    last = check.integer(section["last_ts"], f"{where}.last_ts") if section.get("last_ts") is not None else None
    top_artists = None
    if _has(section, "top_artists"):
        top_artists = _read_bars(check, section["top_artists"], f"{where}.top_artists", "artist")
    daily = (
        _daily_cells(check, section["daily_activity"], f"{where}.daily_activity")
        if _has(section, "daily_activity")
        else None
    )
    activity = {}
    if _has(section, "listening_activity"):
        activity = _activity(check, section["listening_activity"], f"{where}.listening_activity", GRANULARITIES)
    return ListeningStats(zone, first, last, top_artists, daily, activity)


def _read_bars(check: _Checker, value: object, where: str, name: str) -> list[Bar]:
    """Entries ``{name: ..., "listen_count": n}`` (top artists, top songs) as bars."""
    bars = []
    for i, entry in enumerate(check.array(value, where)):
        at = f"{where}[{i}]"
        entry = check.obj(entry, at)
        label = check.text(check.key(entry, name, at), f"{at}.{name}")
        bars.append(Bar(label, check.count(check.key(entry, "listen_count", at), f"{at}.listen_count")))
    return bars


def _daily_cells(check: _Checker, value: object, where: str) -> dict[tuple[int, int], int]:
    cells: dict[tuple[int, int], int] = {}
    for i, entry in enumerate(check.array(value, where)):
        at = f"{where}[{i}]"
        entry = check.obj(entry, at)
        day = check.text(check.key(entry, "day", at), f"{at}.day")
        if day not in DAYS:
            check.fail(f"{at}.day", f"expected a weekday name (Monday..Sunday), got {day!r}")
        hour = check.integer(check.key(entry, "hour", at), f"{at}.hour")
        if not 0 <= hour < HOURS:
            check.fail(f"{at}.hour", f"expected an hour 0..23, got {hour}")
        cell = (DAYS.index(day), hour)
        if cell in cells:
            check.fail(at, f"{day} {hour}:00 appears twice")
        cells[cell] = check.count(check.key(entry, "listen_count", at), f"{at}.listen_count")
    return cells


def _activity(check: _Checker, value: object, where: str, granularities: Sequence[str]) -> dict[str, list[Period]]:
    section = check.obj(value, where)
    activity = {}
    for granularity in granularities:
        if not _has(section, granularity):
            continue
        periods = []
        for i, entry in enumerate(check.array(section[granularity], f"{where}.{granularity}")):
            at = f"{where}.{granularity}[{i}]"
            entry = check.obj(entry, at)
            periods.append(
                Period(
                    check.text(check.key(entry, "time_range", at), f"{at}.time_range"),
                    check.integer(check.key(entry, "from_ts", at), f"{at}.from_ts"),
                    check.integer(check.key(entry, "to_ts", at), f"{at}.to_ts"),
                    check.count(check.key(entry, "listen_count", at), f"{at}.listen_count"),
                )
            )
        activity[granularity] = periods
    return activity


# --------------------------------------------------------------------------- per-user JSON Lines


@dataclass
class UserStats:
    path: Path
    total_users: int
    embedded: dict[str, dict[str, Any]]  # user_id -> the compact record the page's script reads


def _user_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    try:
        with path.open("rb") as f:
            yield from enumerate(f, 1)
    except OSError as exc:
        raise ReportError(f"{path}: cannot read: {exc.strerror or exc}") from None


def load_user_stats(path: Path, max_users: int) -> UserStats:
    """Read every line (each must be a JSON object with a user_id and total_time, user_ids in ascending
    order, so once each) and keep the full statistics of the ``max_users`` most active users.

    Memory stays bounded: candidates are kept as raw lines and cut back to ``max_users`` whenever as
    many again have been read; only the chosen lines are checked in full and made compact."""
    kept: list[tuple[str, int, int, bytes]] = []  # (user_id, total_time, line number, raw line)
    previous: str | None = None
    total = 0
    for lineno, raw in _user_lines(path):
        check = _Checker(f"{path}:{lineno}")
        raw = raw.rstrip(b"\r\n")  # so a column is counted within this line
        if not raw:
            check.fail("line", "empty (each line is one user's JSON object)")
        try:
            record = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            check.fail(f"column {exc.colno}", f"not valid JSON: {exc.msg}")
        record = check.obj(record, "line")
        user = check.text(check.key(record, "user_id", "line"), "user_id")
        total_time = check.count(check.key(record, "total_time", "line"), "total_time")
        # Sorted is the file's contract; checking it is also how a user appearing twice is caught
        # without holding every user_id.
        if previous is not None and user <= previous:
            check.fail("user_id", f"{user!r} does not come after {previous!r} (one line per user, sorted by user_id)")
        previous = user
        total += 1
        if max_users:
            kept.append((user, total_time, lineno, raw))
            if len(kept) >= 2 * max_users:
                kept = _most_active(kept, max_users)
    embedded = {}
    for user, _, lineno, raw in sorted(_most_active(kept, max_users)):
        embedded[user] = _compact_user(_Checker(f"{path}:{lineno}"), orjson.loads(raw))
    return UserStats(path, total, embedded)


def _most_active(candidates: list[tuple[str, int, int, bytes]], n: int) -> list[tuple[str, int, int, bytes]]:
    return top_ranked(candidates, n, count=lambda c: c[1], key=lambda c: c[0])


def _compact_user(check: _Checker, record: dict[str, Any]) -> dict[str, Any]:
    """One user's statistics in the short form the page embeds ("t" total seconds, "a" top artist,
    "ta"/"ts" [name, listens] pairs, "d" [day * 24 + hour, listens] for non-zero cells, "m" [month,
    listens], "pa" [artist, score] personalized artists and "pb" what chose them): thousands of
    users' full records would make the page several times larger."""
    compact: dict[str, Any] = {
        "t": record["total_time"],
        "a": check.text(check.key(record, "top_artist", "line"), "top_artist"),
    }
    if _has(record, "top_artists"):
        compact["ta"] = [[b.label, b.value] for b in _read_bars(check, record["top_artists"], "top_artists", "artist")]
    if _has(record, "top_songs"):
        compact["ts"] = [[b.label, b.value] for b in _read_bars(check, record["top_songs"], "top_songs", "song")]
    if _has(record, "daily_activity"):
        cells = _daily_cells(check, record["daily_activity"], "daily_activity")
        compact["d"] = [[day * HOURS + hour, n] for (day, hour), n in sorted(cells.items())]
    if _has(record, "listening_activity"):
        months = _activity(check, record["listening_activity"], "listening_activity", ("month",)).get("month")
        if months is not None:
            compact["m"] = _compact_months(check, months)
    if _has(record, "recommended_artists"):
        compact["pa"] = _personalized(check, record["recommended_artists"])
        compact["pb"] = check.text(check.key(record, "recommended_by", "line"), "recommended_by")
    return compact


def _personalized(check: _Checker, value: object) -> list[list[Any]]:
    """[artist, score] for each recommended artist, in the line's order (best first)."""
    out = []
    for i, entry in enumerate(check.array(value, "recommended_artists")):
        at = f"recommended_artists[{i}]"
        entry = check.obj(entry, at)
        artist = check.text(check.key(entry, "artist", at), f"{at}.artist")
        score = check.expect(check.key(entry, "score", at), (int, float), f"{at}.score", "a number")
        out.append([artist, score])
    return out


def _month_number(label: str) -> int | None:
    match = re.fullmatch(r"([0-9]{4})-([0-9]{2})", label)
    if match is None or not 1 <= int(match[2]) <= 12:
        return None
    return int(match[1]) * 12 + int(match[2]) - 1


def _compact_months(check: _Checker, months: list[Period]) -> list[Any]:
    """[first month, number of months, [[index, listens] for each month with listens]]: a user
    who listened in two months ten years apart has 120 months, nearly all empty. The page
    rebuilds the labels, so they are checked to be consecutive months here."""
    if not months:
        return []
    first = _month_number(months[0].label)
    for i, period in enumerate(months):
        at = f"listening_activity.month[{i}].time_range"
        number = _month_number(period.label)
        if number is None:
            check.fail(at, f"expected a month YYYY-MM, got {period.label!r}")
        if first is not None and number != first + i:
            check.fail(at, f"{period.label!r} does not follow {months[i - 1].label!r} (every month, in order)")
    return [months[0].label, len(months), [[i, p.count] for i, p in enumerate(months) if p.count]]


def _users_from_results(results: Results, max_users: int) -> dict[str, dict[str, Any]]:
    """Without per-user statistics, what the results JSON has for each user: total time and top artist."""
    chosen = top_ranked(results.users or [], max_users, count=lambda u: u[1], key=lambda u: u[0])
    return {user: {"t": total, "a": artist} for user, total, artist in sorted(chosen)}


def _find_user_stats(results: Results) -> Path | None:
    """The JSON Lines file the results name, if it is there: as written (relative to where the run was
    started), else beside the results file (the default location when it was made)."""
    if not results.user_stats_path:
        return None
    named = Path(results.user_stats_path)
    candidates = [named] if named.is_absolute() else [named, results.path.parent / named.name]
    return next((c for c in candidates if c.is_file()), None)


# --------------------------------------------------------------------------- drawing

_e = html.escape  # text and attribute values alike: quote=True escapes both quote characters

# Chart geometry shared with report.js (its timeline draws the same way).
TIMELINE_WIDTH, TIMELINE_HEIGHT = 960, 240
TIMELINE_MARGIN = {"left": 56, "right": 12, "top": 14, "bottom": 30}
TIMELINE_MAX_SLOT = 64
CELL_WIDTH, CELL_HEIGHT, HEATMAP_LEFT, HEATMAP_TOP = 34, 26, 92, 22


def _number(n: int) -> str:
    return f"{n:,}"


def format_duration(seconds: int) -> str:
    """Listening time as people read it: "3d 04h", "5h 07m", "12m 09s"."""
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s"


def heat_color(value: int, maximum: int) -> str:
    """Zero is neutral grey; 1..max runs from a light to a deep blue, starting visibly above zero."""
    if value <= 0 or maximum <= 0:
        return "var(--zero)"
    t = 0.15 + 0.85 * (value / maximum)
    low, high = (222, 232, 255), (35, 56, 160)
    r, g, b = (round(lo + (hi - lo) * t) for lo, hi in zip(low, high, strict=True))
    return f"rgb({r},{g},{b})"


def _bars(chart: str, bars: list[Bar], unit: str, show: Any = _number) -> str:
    if not bars:
        return f'<p class="empty" data-chart="{chart}">Nothing to show.</p>'
    peak = max(b.value for b in bars) or 1
    rows = []
    for rank, bar in enumerate(bars, 1):
        width = 100 * bar.value / peak
        rows.append(
            f'<li class="bar" data-label="{_e(bar.label)}" data-value="{bar.value}">'
            f'<span class="rank">{rank}</span><span class="name" title="{_e(bar.label)}">{_e(bar.label)}</span>'
            f'<span class="track"><span class="fill" style="width:{width:.2f}%"></span></span>'
            f'<span class="num" title="{_number(bar.value)} {unit}">{_e(show(bar.value))}</span></li>'
        )
    return f'<ol class="bars" data-chart="{chart}">{"".join(rows)}</ol>'


def heatmap_svg(cells: dict[tuple[int, int], int], chart: str) -> str:
    """7 rows (Monday..Sunday) x 24 hours; every cell drawn, zeros included, each with its count."""
    peak = max(cells.values(), default=0)
    width = HEATMAP_LEFT + HOURS * CELL_WIDTH + 4
    height = HEATMAP_TOP + len(DAYS) * CELL_HEIGHT + 4
    parts = [
        f'<svg class="heatmap" data-chart="{chart}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="listens by weekday and hour">'
    ]
    for hour in range(HOURS):
        x = HEATMAP_LEFT + hour * CELL_WIDTH + CELL_WIDTH / 2
        parts.append(f'<text class="axis" x="{x:g}" y="{HEATMAP_TOP - 7}" text-anchor="middle">{hour:02d}</text>')
    for day_index, day in enumerate(DAYS):
        y = HEATMAP_TOP + day_index * CELL_HEIGHT
        parts.append(
            f'<text class="axis" x="{HEATMAP_LEFT - 8}" y="{y + CELL_HEIGHT / 2 + 4:g}" text-anchor="end">{day}</text>'
        )
        for hour in range(HOURS):
            value = cells.get((day_index, hour), 0)
            x = HEATMAP_LEFT + hour * CELL_WIDTH
            parts.append(
                f'<rect class="cell" x="{x + 1}" y="{y + 1}" width="{CELL_WIDTH - 2}" height="{CELL_HEIGHT - 2}" '
                f'rx="3" fill="{heat_color(value, peak)}" data-day="{day}" data-hour="{hour}" data-value="{value}">'
                f"<title>{day} {hour:02d}:00–{hour:02d}:59: {_number(value)} listens</title></rect>"
            )
    parts.append("</svg>")
    legend = (
        f'<div class="legend"><span>0</span><span class="swatch" style="background:{heat_color(0, 1)}"></span>'
        f'<span class="swatch" style="background:{heat_color(1, 1_000_000)}"></span>'
        f'<span class="ramp"></span><span class="swatch" style="background:{heat_color(1, 1)}"></span>'
        f'<span data-label="peak" data-value="{peak}">{_number(peak)} listens</span></div>'
    )
    return "".join(parts) + legend


def nice_step(peak: int, ticks: int = 4) -> int:
    """A round gridline step (1, 2 or 5 times a power of ten) giving about ``ticks`` lines up to ``peak``."""
    if peak <= 0:
        return 1
    raw = peak / ticks
    power = 10 ** math.floor(math.log10(raw)) if raw >= 1 else 1
    return next(int(m * power) for m in (1, 2, 5, 10) if m * power >= raw)


def timeline_svg(periods: list[Period], chart: str) -> str:
    """Listens per period as bars, every period drawn (empty ones at 0), a few labelled."""
    if not periods:
        return f'<p class="empty" data-chart="{chart}">No listens.</p>'
    m = TIMELINE_MARGIN
    plot_w = TIMELINE_WIDTH - m["left"] - m["right"]
    plot_h = TIMELINE_HEIGHT - m["top"] - m["bottom"]
    peak = max(p.count for p in periods)
    step = nice_step(peak)
    top = max(step, math.ceil(peak / step) * step)
    parts = [
        f'<svg class="timeline" data-chart="{chart}" viewBox="0 0 {TIMELINE_WIDTH} {TIMELINE_HEIGHT}" role="img" '
        f'aria-label="listens over time">'
    ]
    for tick in range(0, top + 1, step):
        y = m["top"] + plot_h - plot_h * tick / top
        parts.append(
            f'<line class="grid" x1="{m["left"]}" x2="{TIMELINE_WIDTH - m["right"]}" y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text class="axis" x="{m["left"] - 6}" y="{y + 4:.1f}" text-anchor="end">{_number(tick)}</text>'
        )
    # A few periods get bars of a readable width, centred, not one bar across the whole chart.
    slot = min(plot_w / len(periods), TIMELINE_MAX_SLOT)
    start = m["left"] + (plot_w - slot * len(periods)) / 2
    gap = min(slot * 0.15, 2) if slot > 3 else 0
    label_every = max(1, math.ceil(len(periods) / 10))
    for i, period in enumerate(periods):
        x = start + i * slot
        h = plot_h * period.count / top
        parts.append(
            f'<rect class="point" x="{x + gap / 2:.2f}" y="{m["top"] + plot_h - h:.2f}" '
            f'width="{max(slot - gap, 0.5):.2f}" height="{h:.2f}" data-label="{_e(period.label)}" '
            f'data-value="{period.count}" data-from="{period.from_ts}" data-to="{period.to_ts}">'
            f"<title>{_e(period.label)}: {_number(period.count)} listens</title></rect>"
        )
        if i % label_every == 0:
            parts.append(
                f'<text class="axis" x="{x + slot / 2:.1f}" y="{TIMELINE_HEIGHT - 10}" '
                f'text-anchor="middle">{_e(period.label)}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)


def _fact(label: str, key: str, value: str, raw: object | None = None, detail: str = "", wide: bool = False) -> str:
    """A header tile; ``value`` and ``detail`` are HTML (callers escape what comes from the data)."""
    data = f' data-value="{_e(str(raw))}"' if raw is not None else ""
    more = f'<div class="detail">{detail}</div>' if detail else ""
    return (
        f'<div class="fact{" wide" if wide else ""}" data-label="{key}"{data}><div class="fact-label">{_e(label)}</div>'
        f'<div class="fact-value">{value}</div>{more}</div>'
    )


def _by_reason(counts: dict[str, int]) -> str:
    shown = [f"{_e(reason)} {_number(n)}" for reason, n in sorted(counts.items()) if n]
    return " · ".join(shown)


def _local_time(ts: int, zone: str) -> str:
    try:
        return datetime.fromtimestamp(ts, ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M")
    except (OverflowError, OSError, ValueError):
        return f"epoch {ts}"


def _facts(results: Results, user_stats: UserStats | None) -> str:
    tiles = []
    if results.events is not None:
        tiles.append(_fact("Listens", "events", _number(results.events), results.events))
    users = user_stats.total_users if user_stats else results.user_count
    if users is not None:
        tiles.append(_fact("Users", "users", _number(users), users))
    if results.distinct_songs is not None:
        tiles.append(_fact("Songs", "songs", _number(results.distinct_songs), results.distinct_songs))
    stats = results.listening
    if stats:
        # A zone name breaks after its slashes, not inside a word.
        zone = _e(stats.timezone).replace("/", "/<wbr>")
        tiles.append(_fact("Time zone", "timezone", zone, stats.timezone))
        if stats.first_ts is not None and stats.last_ts is not None:
            span = (
                f"<span>{_local_time(stats.first_ts, stats.timezone)}</span> "
                f"<span>→ {_local_time(stats.last_ts, stats.timezone)}</span>"
            )
            tiles.append(_fact("Range (local time)", "range", span, f"{stats.first_ts}..{stats.last_ts}", wide=True))
    if results.rows_rejected is not None:
        tiles.append(
            _fact(
                "Rows rejected",
                "rejected",
                _number(results.rows_rejected),
                results.rows_rejected,
                _by_reason(results.rejected_by_reason),
            )
        )
    if results.skipped_by_reason is not None:
        skipped = sum(results.skipped_by_reason.values())
        tiles.append(_fact("Rows skipped", "skipped", _number(skipped), skipped, _by_reason(results.skipped_by_reason)))
    if results.input_format is not None:
        files = f"{_number(results.input_files)} file(s)" if results.input_files is not None else ""
        tiles.append(_fact("Input", "input", _e(results.input_format), results.input_format, _e(files)))
    if results.total_seconds is not None:
        tiles.append(_fact("Run time", "run_time", f"{results.total_seconds:.2f} s", results.total_seconds))
    return f'<section class="facts">{"".join(tiles)}</section>'


def _missing(what: str, key: str) -> str:
    return (
        f'<p class="missing" data-missing="{_e(key)}">'
        f"Not in this results file: {_e(what)} (<code>{_e(key)}</code>).</p>"
    )


def _card(section_id: str, title: str, subtitle: str, body: str, wide: bool = False) -> str:
    cls = "card wide" if wide else "card"
    return (
        f'<section class="{cls}" id="{section_id}"><h2>{_e(title)}</h2>'
        f'<p class="subtitle">{subtitle}</p>{body}</section>'
    )


def _periods_panel(granularity: str, periods: list[Period]) -> str:
    if granularity != "day" or len(periods) <= MAX_DAY_BARS:
        return timeline_svg(periods, f"activity-{granularity}")
    # Decades of days would be tens of thousands of sub-pixel bars: the years and months show all.
    note = (
        f'<p class="scope" data-label="days-shown" data-value="{MAX_DAY_BARS}">The last {_number(MAX_DAY_BARS)} '
        f"of {_number(len(periods))} days; the years and months views cover the whole range.</p>"
    )
    return timeline_svg(periods[-MAX_DAY_BARS:], "activity-day") + note


def _activity_card(stats: ListeningStats | None) -> str:
    if stats is None or not stats.activity:
        return _card(
            "listening-activity",
            "Listening over time",
            "",
            _missing("listens per period", "listening_stats.listening_activity"),
            wide=True,
        )
    present = [g for g in GRANULARITIES if g in stats.activity]
    shown = DEFAULT_GRANULARITY if DEFAULT_GRANULARITY in present else present[0]
    names = {"year": "Years", "month": "Months", "day": "Days"}
    # Radio buttons and CSS switch the panels: it works with scripts off.
    tabs = "".join(
        f'<input type="radio" name="granularity" id="granularity-{g}" value="{g}"{" checked" if g == shown else ""}>'
        f'<label for="granularity-{g}">{names[g]}</label>'
        for g in present
    )
    panels = "".join(
        f'<div class="panel panel-{g}" data-granularity="{g}">{_periods_panel(g, stats.activity[g])}</div>'
        for g in present
    )
    missing = [g for g in GRANULARITIES if g not in present]
    note = _missing(", ".join(missing) + " periods", "listening_stats.listening_activity") if missing else ""
    body = f'<div class="switch">{tabs}{panels}</div>{note}'
    return _card(
        "listening-activity",
        "Listening over time",
        f"listens per period, local time ({_e(stats.timezone)})",
        body,
        wide=True,
    )


def render(results: Results, user_stats: UserStats | None, max_users: int, user_stats_note: str) -> str:
    stats = results.listening
    cards = []
    if results.top_songs is not None:
        body = _bars("top-songs", results.top_songs, "plays")
    else:
        body = _missing("top songs", "mapreduce_results.top_songs")
    cards.append(_card("top-songs", "Top songs", "plays, all users", body))
    if stats is not None and stats.top_artists is not None:
        body = _bars("top-artists", stats.top_artists, "listens")
    else:
        body = _missing("top artists", "listening_stats.top_artists")
    cards.append(_card("top-artists", "Top artists", "listens, all users", body))
    if stats is not None and stats.daily is not None:
        body = heatmap_svg(stats.daily, "heatmap")
        subtitle = f"listens by weekday and hour, local time ({_e(stats.timezone)})"
    else:
        body, subtitle = _missing("listens by weekday and hour", "listening_stats.daily_activity"), ""
    cards.append(_card("weekly-heatmap", "When people listen", subtitle, body, wide=True))
    cards.append(_activity_card(stats))
    if results.top_users is not None:
        body = _bars("top-users", results.top_users, "seconds", show=format_duration)
    else:
        body = _missing("most active users", "userbehavior_results.top_users")
    cards.append(_card("top-users", "Most active users", "total listening time", body))
    if results.trending is not None:
        items = "".join(f'<li class="trending" data-label="{_e(s)}">{_e(s)}</li>' for s in results.trending)
        body = f'<ol class="plain" data-chart="trending">{items}</ol>'
    else:
        body = _missing("trending songs", "recommendation_results.trending_songs")
    cards.append(_card("trending", "Trending", "what recommendations draw from", body))
    cards.append(_search_card(results, user_stats, max_users, user_stats_note))

    payload = _payload(results, user_stats, max_users)
    title = "Listening report"
    if stats and stats.first_ts is not None and stats.last_ts is not None:
        span = f"{_local_time(stats.first_ts, stats.timezone)[:10]} – {_local_time(stats.last_ts, stats.timezone)[:10]}"
    else:
        span = ""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        # Nothing may be fetched: not even a favicon request.
        '<link rel="icon" href="data:,">'
        f"<title>{title} · music-analytics</title><style>{_asset('report.css')}</style></head>"
        f'<body><header class="masthead"><div class="wrap"><p class="kicker">music-analytics</p>'
        f'<h1>{title}</h1><p class="source">{_e(results.path.name)}{" · " + _e(span) if span else ""}</p>'
        "</div></header>"
        f'<main class="wrap">{_facts(results, user_stats)}<div class="grid">{"".join(cards)}</div></main>'
        f'<footer class="wrap">Made by <code>music-analytics report</code> from {_e(results.path.name)}'
        f"{' and ' + _e(user_stats.path.name) if user_stats else ''}. Opening this file fetches nothing.</footer>"
        f'<template id="heatmap-template">{heatmap_svg({}, "user-heatmap")}</template>'
        f'<script type="application/json" id="report-data">{payload}</script>'
        f"<script>{_asset('report.js')}</script></body></html>\n"
    )


def _search_card(results: Results, user_stats: UserStats | None, max_users: int, note: str) -> str:
    if user_stats is not None:
        embedded = len(user_stats.embedded)
        scope = (
            f"All {_number(user_stats.total_users)} users are in this page."
            if embedded == user_stats.total_users
            else f"This page holds the {_number(embedded)} most active of {_number(user_stats.total_users)} users "
            f"(by listening time); every user is in <code>{_e(str(user_stats.path))}</code>."
        )
    elif results.users is not None:
        embedded = min(len(results.users), max_users)
        scope = (
            f"This page holds total time and top artist for {_number(embedded)} "
            f"of {_number(len(results.users))} users; "
            f"per-user charts need the per-user statistics (<code>--user-stats</code>). {note}"
        )
    else:
        scope = "This results file has no per-user data."
    body = (
        '<form id="user-search" class="search" autocomplete="off">'
        '<input id="user-query" type="search" placeholder="user_id, e.g. U1" aria-label="user_id">'
        '<button type="submit">Show</button></form>'
        f'<p class="scope" data-label="embedded-users">{scope}</p>'
        # Shown until the script removes it: <noscript> is not shown when scripts are merely blocked.
        '<p class="missing" id="needs-script">Searching needs JavaScript.</p>'
        '<div id="user-result" aria-live="polite"></div>'
    )
    return _card("user-lookup", "Look up a user", "their statistics and recommendations", body, wide=True)


def _payload(results: Results, user_stats: UserStats | None, max_users: int) -> str:
    if user_stats is not None:
        users, total, source = user_stats.embedded, user_stats.total_users, str(user_stats.path)
    else:
        users = _users_from_results(results, max_users) if results.users is not None else {}
        total, source = results.user_count or len(users), None
    recommendations = results.recommendations or {}
    for user, record in users.items():
        if user in recommendations:
            record["r"] = recommendations[user]
    document = {"users": users, "total": total, "source": source, "detailed": user_stats is not None}
    # Inside <script> only "</script" (and "<!--") could end or confuse it: with "<", ">" and "&" as
    # JSON escapes, no string from the data can; JSON.parse gives the same strings back.
    text = orjson.dumps(document).decode()
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _asset(name: str) -> str:
    return (resources.files("music_analytics.client") / "report_assets" / name).read_text(encoding="utf-8")


# --------------------------------------------------------------------------- entry points


def write_report(results: Path, user_stats: Path | None, out: Path, max_users: int = DEFAULT_MAX_USERS) -> Path:
    """Write the page for ``results`` to ``out`` and return ``out``.

    ``user_stats`` None: the JSON Lines file the results name, if it exists (the page then says the
    per-user charts are missing). Raises ReportError for unusable input or an unwritable ``out``."""
    loaded = load_results(results)
    note = ""
    path = user_stats if user_stats is not None else _find_user_stats(loaded)
    if user_stats is None and path is None and loaded.user_stats_path:
        note = f"The results name <code>{_e(loaded.user_stats_path)}</code>, which was not found."
    stats = load_user_stats(path, max_users) if path is not None else None
    page = render(loaded, stats, max_users, note)
    tmp = out.with_name(out.name + ".tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, out)
    except OSError as exc:
        raise ReportError(f"{out}: cannot write the report: {exc.strerror or exc}") from None
    return out


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", type=Path, help="a run's results JSON (music-analytics run --out)")
    parser.add_argument(
        "--user-stats",
        type=Path,
        metavar="FILE",
        help="per-user statistics, JSON Lines (default: the file the results name, if it exists)",
    )
    parser.add_argument(
        "--out", type=Path, help="the HTML file to write (default: RESULTS with .json replaced by .html)"
    )
    parser.add_argument(
        "--max-users",
        type=_non_negative,
        default=DEFAULT_MAX_USERS,
        metavar="N",
        help=f"users whose statistics the page embeds, the most active first (default {DEFAULT_MAX_USERS}); "
        "the search says when a user is not among them",
    )


def default_report_path(results: Path) -> Path:
    """Beside the results: results/run_grpc_metrics.json -> results/run_grpc_metrics.html."""
    return results.with_name(results.name.removesuffix(".json") + ".html")


def main(args: argparse.Namespace) -> int:
    out = args.out if args.out is not None else default_report_path(args.results)
    try:
        out = write_report(args.results, args.user_stats, out, args.max_users)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    print(f"Report written to {out}", file=sys.stderr)
    return EXIT_OK


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="music-analytics report", description=__doc__.splitlines()[0])
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
