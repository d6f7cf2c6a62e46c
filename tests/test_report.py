"""The report's inputs, errors and escaping, without a browser: the page is read back with the
standard library's HTML parser (test_report_browser.py checks what a browser draws from a real run)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from music_analytics.client import report
from tests.conftest import ROOT

HOSTILE = "</script><script>alert(1)</script><!-- & \"quoted\" 'single' 🎵"


class Page(HTMLParser):
    """Every element's tag and attributes, each script's text and the other text, as an HTML parser sees them."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[tuple[dict[str, str | None], str]] = []
        self.texts: list[str] = []
        self._script: dict[str, str | None] | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))
        if tag == "script":
            self._script = dict(attrs)
            self.scripts.append((self._script, ""))

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._script = None

    def handle_data(self, data: str) -> None:
        if self._script is not None:
            attrs, text = self.scripts[-1]
            self.scripts[-1] = (attrs, text + data)
        else:
            self.texts.append(data)

    def with_attr(self, name: str, value: str) -> list[dict[str, str | None]]:
        return [attrs for _, attrs in self.elements if attrs.get(name) == value]

    def data(self) -> dict:
        (text,) = [text for attrs, text in self.scripts if attrs.get("type") == "application/json"]
        return json.loads(text)


def _results(**parts: object) -> dict:
    """A results document with the sections given (the design's shapes)."""
    return {"events_processed": 3, "rows_rejected": 0, "rows_rejected_by_reason": {}, **parts}


def _user_line(user: str, total: int, artist: str = "A", months: list[tuple[str, int]] | None = None) -> dict:
    months = months if months is not None else [("2021-03", 1)]
    return {
        "user_id": user,
        "total_time": total,
        "top_artist": artist,
        "top_artists": [{"artist": artist, "listen_count": 1}],
        "top_songs": [{"song": f"{artist} - s", "artist": artist, "song_id": "s", "listen_count": 1}],
        "daily_activity": [{"day": "Sunday", "hour": 23, "listen_count": 1}],
        "listening_activity": {
            "year": [{"time_range": "2021", "from_ts": 0, "to_ts": 1, "listen_count": sum(n for _, n in months)}],
            "month": [{"time_range": m, "from_ts": 0, "to_ts": 1, "listen_count": n} for m, n in months],
        },
    }


def _write(path: Path, document: object) -> Path:
    path.write_text(json.dumps(document, ensure_ascii=False), encoding="utf-8")
    return path


def _write_lines(path: Path, lines: list[object]) -> Path:
    path.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8")
    return path


def _main(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    report.add_arguments(parser)
    return report.main(parser.parse_args(list(argv)))


def _error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run the command expecting unusable input: exit 2 and exactly one line on stderr, returned."""
    assert _main(*argv) == report.EXIT_INPUT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err.strip()


def test_hostile_strings_stay_text(tmp_path: Path) -> None:
    results = _write(
        tmp_path / "results.json",
        _results(
            mapreduce_results={"top_songs": {f"{HOSTILE} - s1": 2}, "distinct_songs": 1},
            userbehavior_results={
                "users": [{"user_id": HOSTILE, "total_time": 90, "top_artist": HOSTILE}],
                "top_users": [HOSTILE],
                "top_users_total_time": {HOSTILE: 90},
            },
            recommendation_results={"trending_songs": [f"{HOSTILE} - s1"], "recommendations": {HOSTILE: [HOSTILE]}},
            listening_stats={
                "timezone": "Europe/Berlin",
                "first_ts": 0,
                "last_ts": 10,
                "top_artists": [{"artist": HOSTILE, "listen_count": 3}],
                "daily_activity": [{"day": "Thursday", "hour": 1, "listen_count": 3}],
                "listening_activity": {
                    "year": [{"time_range": "1970", "from_ts": -3600, "to_ts": 10, "listen_count": 3}]
                },
            },
        ),
    )
    users = _write_lines(tmp_path / "users.jsonl", [_user_line(HOSTILE, 90, artist=HOSTILE)])
    out = report.write_report(results, users, tmp_path / "report.html")
    page = Page(out.read_text(encoding="utf-8"))

    # Only the page's own scripts are scripts; the data one gives back exactly the strings.
    assert [attrs.get("type") for attrs, _ in page.scripts] == ["application/json", None]
    assert "</script" not in page.scripts[0][1].lower() and "<!--" not in page.scripts[0][1]
    data = page.data()
    assert list(data["users"]) == [HOSTILE]
    assert data["users"][HOSTILE]["a"] == HOSTILE and data["users"][HOSTILE]["r"] == [HOSTILE]
    assert data["users"][HOSTILE]["ta"] == [[HOSTILE, 1]]
    # Drawn labels carry the strings as attribute values and show them as text.
    assert [a["data-value"] for a in page.with_attr("data-label", f"{HOSTILE} - s1") if a.get("class") == "bar"] == [
        "2"
    ]
    assert [a["data-value"] for a in page.with_attr("data-label", HOSTILE) if a.get("class") == "bar"] == ["3", "90"]
    assert page.texts.count(HOSTILE) >= 2 and page.texts.count(f"{HOSTILE} - s1") >= 2
    assert not any(tag in ("img", "iframe", "object", "embed") for tag, _ in page.elements)
    # Nothing to fetch: the only link is the empty data: icon, and no element names a URL.
    links = [attrs for tag, attrs in page.elements if tag == "link"]
    assert links == [{"rel": "icon", "href": "data:,"}]
    assert not [attrs for _, attrs in page.elements if "src" in attrs]


def test_page_says_what_is_missing(tmp_path: Path) -> None:
    """A results file from before the time statistics: what it has is shown, the rest named."""
    results = _write(tmp_path / "old.json", _results(mapreduce_results={"top_songs": {"A - s": 4}}))
    page = Page(report.write_report(results, None, tmp_path / "report.html").read_text(encoding="utf-8"))
    missing = {attrs["data-missing"] for _, attrs in page.elements if "data-missing" in attrs}
    assert missing == {
        "listening_stats.top_artists",
        "listening_stats.daily_activity",
        "listening_stats.listening_activity",
        "userbehavior_results.top_users",
        "recommendation_results.trending_songs",
    }
    assert [(a["data-label"], a["data-value"]) for a in page.with_attr("class", "bar")] == [("A - s", "4")]
    assert "This results file has no per-user data." in page.texts


def test_partial_listening_activity_names_the_missing_periods(tmp_path: Path) -> None:
    stats = {"timezone": "UTC", "listening_activity": {"month": [], "day": None}}
    results = _write(tmp_path / "r.json", _results(listening_stats=stats))
    page = Page(report.write_report(results, None, tmp_path / "report.html").read_text(encoding="utf-8"))
    assert [a["id"] for tag, a in page.elements if tag == "input" and a.get("name") == "granularity"] == [
        "granularity-month"
    ]
    assert any("year, day periods" in text for text in page.texts)
    assert page.with_attr("data-chart", "activity-month")[0]["class"] == "empty"


def test_embeds_the_most_active_users_ties_by_user_id(tmp_path: Path) -> None:
    lines = [_user_line("a", 10), _user_line("b", 30), _user_line("c", 30), _user_line("d", 5), _user_line("e", 30)]
    lines.append(_user_line("f", 31))
    results = _write(tmp_path / "r.json", _results(listening_stats={"timezone": "UTC"}))
    users = _write_lines(tmp_path / "u.jsonl", lines)
    out = report.write_report(results, users, tmp_path / "report.html", max_users=3)
    page = Page(out.read_text(encoding="utf-8"))
    data = page.data()
    assert sorted(data["users"]) == ["b", "c", "f"]
    assert data["total"] == 6 and data["detailed"] is True
    assert int(page.with_attr("data-label", "users")[0]["data-value"]) == 6
    assert any("3 most active of 6 users" in text for text in page.texts)


def test_sparse_months_are_embedded_compactly_and_rebuilt_whole(tmp_path: Path) -> None:
    months = [(f"{y}-{m:02d}", 0) for y in (2019, 2020) for m in range(1, 13)]
    months[0], months[-1] = ("2019-01", 2), ("2020-12", 5)
    results = _write(tmp_path / "r.json", _results(listening_stats={"timezone": "UTC"}))
    users = _write_lines(tmp_path / "u.jsonl", [_user_line("u", 7, months=months)])
    data = Page(report.write_report(results, users, tmp_path / "r.html").read_text(encoding="utf-8")).data()
    assert data["users"]["u"]["m"] == ["2019-01", 24, [[0, 2], [23, 5]]]


def test_user_stats_found_beside_the_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The results name the JSON Lines as the run was given them (relative to where it ran)."""
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "elsewhere"
    run_dir.mkdir()
    results = _write(
        run_dir / "r.json",
        _results(mapreduce_results={"top_songs": {}}, user_stats={"path": "results/r.users.jsonl", "users": 1}),
    )
    _write_lines(run_dir / "r.users.jsonl", [_user_line("u1", 5)])
    data = Page(report.write_report(results, None, tmp_path / "report.html").read_text(encoding="utf-8")).data()
    assert list(data["users"]) == ["u1"]


def test_user_stats_named_but_absent_is_said_on_the_page(tmp_path: Path) -> None:
    results = _write(
        tmp_path / "r.json",
        _results(
            userbehavior_results={"users": [{"user_id": "u1", "total_time": 5, "top_artist": "A"}]},
            user_stats={"path": str(tmp_path / "gone.users.jsonl"), "users": 1},
        ),
    )
    page = Page(report.write_report(results, None, tmp_path / "report.html").read_text(encoding="utf-8"))
    assert page.data()["users"] == {"u1": {"t": 5, "a": "A"}}
    assert page.data()["detailed"] is False
    assert any("which was not found." in text for text in page.texts)


def test_bad_results_json_names_the_file_and_place(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"events_processed": 3,\n "mapreduce_results": {\n', encoding="utf-8")
    assert _error(capsys, str(bad)).startswith(f"error: {bad}:3:1: not valid JSON: ")
    missing = tmp_path / "missing.json"
    assert _error(capsys, str(missing)) == f"error: {missing}: cannot read: No such file or directory"
    assert _error(capsys, str(_write(tmp_path / "list.json", [1]))).endswith(
        "list.json: top level: expected an object, got an array"
    )
    assert "not a music-analytics results file" in _error(capsys, str(_write(tmp_path / "o.json", {"a": 1})))


@pytest.mark.parametrize(
    ("parts", "where", "message"),
    [
        (
            {"mapreduce_results": {"top_songs": {"A - s": "4"}}},
            "mapreduce_results.top_songs.A - s",
            "expected an integer",
        ),
        ({"mapreduce_results": {"top_songs": {"A - s": -1}}}, "mapreduce_results.top_songs.A - s", "expected a count"),
        ({"mapreduce_results": {"top_songs": [["A - s", 4]]}}, "mapreduce_results.top_songs", "expected an object"),
        (
            {"mapreduce_results": {}, "listening_stats": {"timezone": "Mars/Olympus"}},
            "listening_stats.timezone",
            "'Mars/Olympus' is not an IANA time zone",
        ),
        (
            {"listening_stats": {"daily_activity": [{"day": "Funday", "hour": 1, "listen_count": 1}]}},
            "listening_stats.daily_activity[0].day",
            "expected a weekday name",
        ),
        (
            {"listening_stats": {"daily_activity": [{"day": "Monday", "hour": 24, "listen_count": 1}]}},
            "listening_stats.daily_activity[0].hour",
            "expected an hour 0..23, got 24",
        ),
        (
            {"listening_stats": {"daily_activity": [{"day": "Monday", "hour": 1, "listen_count": 1}] * 2}},
            "listening_stats.daily_activity[1]",
            "Monday 1:00 appears twice",
        ),
        (
            {"listening_stats": {"listening_activity": {"year": [{"time_range": "2021", "listen_count": 1}]}}},
            "listening_stats.listening_activity.year[0]",
            "missing key 'from_ts'",
        ),
        (
            {"listening_stats": {"top_artists": [{"artist": "A", "listen_count": True}]}},
            "listening_stats.top_artists[0].listen_count",
            "expected an integer, got a boolean",
        ),
        (
            {"userbehavior_results": {"top_users": ["u9"], "top_users_total_time": {}}},
            "userbehavior_results.top_users_total_time",
            "no total time for top user 'u9'",
        ),
        (
            {"mapreduce_results": {}, "performance": {"total_workflow_time": "1s"}},
            "performance.total_workflow_time",
            "expected a number",
        ),
        ({"mapreduce_results": {}, "input": {"files": -1}}, "input.files", "expected a count (0 or more), got -1"),
        (
            {"mapreduce_results": {}, "input": {"rows_skipped_by_reason": {"x": 1.5}}},
            "input.rows_skipped_by_reason.x",
            "expected an integer",
        ),
        (
            {"mapreduce_results": {}, "user_stats": {"path": 3}},
            "user_stats.path",
            "expected a string, got the number 3",
        ),
        (
            {"recommendation_results": {"recommendations": {"u1": "A - s"}}},
            "recommendation_results.recommendations.u1",
            "expected an array, got the string 'A - s'",
        ),
    ],
)
def test_malformed_results_name_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], parts: dict, where: str, message: str
) -> None:
    results = _write(tmp_path / "r.json", _results(**parts))
    error = _error(capsys, str(results), "--out", str(tmp_path / "report.html"))
    assert error.startswith(f"error: {results}: {where}: {message}"), error
    assert not (tmp_path / "report.html").exists()


@pytest.mark.parametrize(
    ("lines", "where"),
    [
        (
            ['{"user_id": "a", "total_time": 1}', '{"user_id": "b", "total_time": 2'],
            ":2: column 33: not valid JSON: unexpected end of data",
        ),
        (
            ['{"user_id": "a", "total_time": 1}', "", '{"user_id": "b"}'],
            ":2: line: empty (each line is one user's JSON object)",
        ),
        (['{"user_id": "a", "total_time": 1}', '["b", 2]'], ":2: line: expected an object, got an array"),
        (['{"total_time": 1}'], ":1: line: missing key 'user_id'"),
        (['{"user_id": "a", "total_time": -5}'], ":1: total_time: expected a count (0 or more), got -5"),
        (
            ['{"user_id": "b", "total_time": 1}', '{"user_id": "a", "total_time": 1}'],
            ":2: user_id: 'a' does not come after 'b' (one line per user, sorted by user_id)",
        ),
        (
            ['{"user_id": "a", "total_time": 1}', '{"user_id": "a", "total_time": 1}'],
            ":2: user_id: 'a' does not come after 'a'",
        ),
        ([json.dumps({**_user_line("a", 1), "top_artist": 7})], ":1: top_artist: expected a string, got the number 7"),
        (
            [json.dumps(_user_line("a", 1, months=[("2021-03", 1), ("2021-05", 1)]))],
            ":1: listening_activity.month[1].time_range: '2021-05' does not follow '2021-03'",
        ),
        (
            [json.dumps(_user_line("a", 1, months=[("March", 1)]))],
            ":1: listening_activity.month[0].time_range: expected a month YYYY-MM, got 'March'",
        ),
    ],
)
def test_bad_user_stats_line_names_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], lines: list[str], where: str
) -> None:
    results = _write(tmp_path / "r.json", _results(mapreduce_results={"top_songs": {}}))
    users = tmp_path / "u.jsonl"
    users.write_text("\n".join(lines) + "\n", encoding="utf-8")
    error = _error(capsys, str(results), "--user-stats", str(users), "--out", str(tmp_path / "report.html"))
    assert error.startswith(f"error: {users}{where}"), error


def test_a_bad_line_among_users_not_embedded_is_still_found(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Only the embedded users are read in full, but every line must be JSON with a user_id and total."""
    lines = [json.dumps(_user_line(f"u{i:02d}", 100 - i)) for i in range(10)]
    lines[7] = lines[7][:-3]
    results = _write(tmp_path / "r.json", _results(mapreduce_results={"top_songs": {}}))
    users = tmp_path / "u.jsonl"
    users.write_text("\n".join(lines) + "\n", encoding="utf-8")
    error = _error(capsys, str(results), "--user-stats", str(users), "--max-users", "2")
    assert error.startswith(f"error: {users}:8: column"), error


def test_named_user_stats_that_cannot_be_read_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = _write(tmp_path / "r.json", _results(mapreduce_results={"top_songs": {}}))
    missing = tmp_path / "nope.jsonl"
    assert _error(capsys, str(results), "--user-stats", str(missing)) == (
        f"error: {missing}: cannot read: No such file or directory"
    )


def test_unwritable_out_names_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = _write(tmp_path / "r.json", _results(mapreduce_results={"top_songs": {}}))
    blocker = tmp_path / "file"
    blocker.write_text("", encoding="utf-8")
    out = blocker / "report.html"
    assert _error(capsys, str(results), "--out", str(out)).startswith(f"error: {out}: cannot write the report: ")


def test_command_line_exit_codes(tmp_path: Path) -> None:
    """As a process: a report is written (by default beside the results) with exit 0; bad input is one
    line on stderr, exit 2, no traceback."""
    results = _write(tmp_path / "run.json", _results(mapreduce_results={"top_songs": {"A - s": 1}}))
    command = [sys.executable, "-m", "music_analytics.client.report"]
    done = subprocess.run([*command, str(results)], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0 and (tmp_path / "run.html").is_file(), done.stderr
    assert done.stderr == f"Report written to {tmp_path / 'run.html'}\n"
    bad = tmp_path / "bad.json"
    bad.write_text("{", encoding="utf-8")
    failed = subprocess.run([*command, str(bad)], capture_output=True, text=True, cwd=ROOT)
    assert failed.returncode == 2
    assert failed.stderr.startswith(f"error: {bad}:1:2: not valid JSON") and failed.stderr.count("\n") == 1


def test_format_duration_and_nice_steps() -> None:
    assert [report.format_duration(s) for s in (0, 59, 61, 3600, 3661, 86399, 90000)] == [
        "0m 00s",
        "0m 59s",
        "1m 01s",
        "1h 00m",
        "1h 01m",
        "23h 59m",
        "1d 01h",
    ]
    assert [report.nice_step(p) for p in (0, 1, 3, 4, 9, 40, 41, 1583, 25_000)] == [1, 1, 1, 1, 5, 10, 20, 500, 10_000]


def test_range_beyond_what_dates_can_show_is_given_as_epoch_seconds(tmp_path: Path) -> None:
    stats = {"timezone": "UTC", "first_ts": -(10**15), "last_ts": 0}
    results = _write(tmp_path / "r.json", _results(listening_stats=stats))
    page = Page(report.write_report(results, None, tmp_path / "r.html").read_text(encoding="utf-8"))
    assert page.with_attr("data-label", "range")[0]["data-value"] == f"{-(10**15)}..0"
    assert f"epoch {-(10**15)}" in page.texts and "→ 1970-01-01 00:00" in page.texts


def test_report_assets_are_package_data() -> None:
    """The image installs a wheel: the page's CSS and script must be declared package data to be in it."""
    import fnmatch
    import tomllib

    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    patterns = package_data.get("music_analytics.client", [])
    assets = [p.relative_to(ROOT / "client").as_posix() for p in (ROOT / "client" / "report_assets").iterdir()]
    assert assets and all(any(fnmatch.fnmatch(a, pat) for pat in patterns) for a in assets)
