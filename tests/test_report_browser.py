"""The HTML report in a real browser (Debian's Chromium, driven by Playwright), made from a real run.

The pipeline runs on real services over a CSV with hostile names and four years of listens; the
report is made from its results JSON and per-user JSON Lines; the page is opened from disk with
every network request blocked. What the page draws (the numbers its charts carry in data
attributes, and the text they show) must be exactly what the results and the JSON Lines say.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from music_analytics.client.demo import LocalServices
from music_analytics.client.report import DAYS, MAX_DAY_BARS
from tests.conftest import ROOT, require_binary, run_pipeline

pytestmark = pytest.mark.timeout(180)

TIMEZONE = "Europe/Berlin"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Strings that would run or break markup if the page put them into HTML as it is.
HOSTILE_USER = '</script><script>alert("user")</script>'
HOSTILE_USERS = (HOSTILE_USER, 'Zoë "Z" & <b>bold</b>', "🎧 night owl", "it's <!-- me")
HOSTILE_ARTISTS = ("<img src=x onerror=alert(1)>", "AC/DC & Friends", 'The "Quoted" Ones', "坂本龍一", "🎸 Emoji Band")
PLAIN_ARTISTS = tuple(f"Artist {i}" for i in range(1, 13))
SONGS = ("s1", "s2", "s3", "</title><x>", "s5")
UNKNOWN_USER = 'nobody <here> & "there"'


def _write_listens(path: Path, rows: int = 4000, seed: int = 20190601) -> None:
    """Listens from 2019-06 to 2022-03 (DST changes, more days than the day view draws), a few
    users far more active than the rest, times written with Z and with offsets."""
    rng = random.Random(seed)
    users = [*HOSTILE_USERS, *(f"user{i:03d}" for i in range(1, 37))]
    weights = [30 - i if i < 8 else 1 for i in range(len(users))]
    artists = [*HOSTILE_ARTISTS, *PLAIN_ARTISTS]
    start = dt.datetime(2019, 6, 1, tzinfo=dt.UTC).timestamp()
    end = dt.datetime(2022, 3, 31, 23, 59, tzinfo=dt.UTC).timestamp()
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["user_id", "song_id", "artist", "duration", "timestamp"])
        for _ in range(rows):
            instant = dt.datetime.fromtimestamp(rng.uniform(start, end), dt.UTC).replace(microsecond=0)
            stamp = (
                instant.strftime("%Y-%m-%dT%H:%M:%SZ")
                if rng.random() < 0.7
                else instant.astimezone(dt.timezone(dt.timedelta(hours=5, minutes=30))).isoformat()
            )
            user = rng.randrange(len(users)) if rng.random() < 0.2 else rng.choices(range(len(users)), weights)[0]
            # Each user leans to an artist of their own, so one artist's songs trending leaves most
            # users something to recommend.
            if rng.random() < 0.4:
                artist = artists[-1 - user % len(artists)]
            else:
                artist = rng.choices(artists, weights=[9, 7, 6, 5, 4, *[2] * len(PLAIN_ARTISTS)])[0]
            writer.writerow([users[user], rng.choice(SONGS), artist, rng.randint(30, 400), stamp])


@dataclass
class Run:
    results: dict
    users: dict[str, dict]  # user_id -> its JSON Lines record
    report: Path  # every user embedded
    bounded_report: Path  # only the top users embedded
    requests: list[str] = field(default_factory=list)


def _report(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "music_analytics.client.report", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


@pytest.fixture(scope="module")
def run(services: LocalServices, tmp_path_factory: pytest.TempPathFactory) -> Run:
    work = tmp_path_factory.mktemp("report")
    data = work / "listens.csv"
    _write_listens(data)
    out, user_stats = work / "results.json", work / "results.users.jsonl"
    results = run_pipeline(services, data, out, "--timezone", TIMEZONE, "--user-stats", str(user_stats))
    lines = [json.loads(line) for line in user_stats.read_text(encoding="utf-8").splitlines()]
    report, bounded = work / "report.html", work / "report-top.html"
    made = _report(str(out), "--user-stats", str(user_stats), "--out", str(report))
    assert made.returncode == 0, made.stderr
    top_users = len(results["userbehavior_results"]["top_users"])
    made = _report(str(out), "--out", str(bounded), "--max-users", str(top_users))  # JSONL found via the results
    assert made.returncode == 0, made.stderr
    return Run(results, {line["user_id"]: line for line in lines}, report, bounded)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    chromium = require_binary("chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


@dataclass
class Opened:
    page: object
    url: str
    requests: list[str]
    console_errors: list[str]
    dialogs: list[str]


def _open(browser: object, path: Path, javascript: bool = True) -> Opened:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, java_script_enabled=javascript)
    url = path.as_uri()
    opened = Opened(context.new_page(), url, [], [], [])

    def guard(route: object) -> None:
        # The page itself may load; anything else is a request a self-contained page must not make.
        if route.request.url == url:
            route.continue_()
        else:
            route.abort()

    context.route("**/*", guard)
    page = opened.page
    page.on("request", lambda request: opened.requests.append(request.url))
    page.on("console", lambda message: message.type == "error" and opened.console_errors.append(message.text))
    page.on("pageerror", lambda error: opened.console_errors.append(str(error)))
    page.on("dialog", lambda dialog: (opened.dialogs.append(dialog.message), dialog.dismiss()))
    page.goto(url, wait_until="load")
    page.wait_for_load_state("networkidle")  # a fetch started by script after load is seen too
    return opened


def _bars(page: object, chart: str) -> list[tuple[str, int]]:
    """What a bar list draws: each bar's label and number, and the label as the text shown."""
    drawn = page.eval_on_selector_all(
        f'[data-chart="{chart}"] .bar',
        "els => els.map(e => [e.dataset.label, Number(e.dataset.value), e.querySelector('.name').textContent])",
    )
    for label, _, shown in drawn:
        assert shown == label, f"{chart}: shows {shown!r} for {label!r}"
    return [(label, value) for label, value, _ in drawn]


def _cells(page: object, chart: str) -> dict[tuple[str, int], int]:
    drawn = page.eval_on_selector_all(
        f'[data-chart="{chart}"] rect.cell',
        "els => els.map(e => [e.dataset.day, Number(e.dataset.hour), Number(e.dataset.value)])",
    )
    cells = {(day, hour): value for day, hour, value in drawn}
    assert len(cells) == len(drawn) == len(DAYS) * 24, f"{chart}: {len(drawn)} cells"
    return cells


def _expected_cells(daily_activity: list[dict]) -> dict[tuple[str, int], int]:
    cells = {(day, hour): 0 for day in DAYS for hour in range(24)}
    cells.update({(c["day"], c["hour"]): c["listen_count"] for c in daily_activity})
    return cells


def _points(page: object, chart: str) -> list[tuple[str, int]]:
    return [
        (label, value)
        for label, value in page.eval_on_selector_all(
            f'[data-chart="{chart}"] rect.point', "els => els.map(e => [e.dataset.label, Number(e.dataset.value)])"
        )
    ]


def _periods(entries: list[dict]) -> list[tuple[str, int]]:
    return [(e["time_range"], e["listen_count"]) for e in entries]


def _search(page: object, user: str) -> None:
    page.fill("#user-query", user)
    page.press("#user-query", "Enter")
    page.wait_for_function(
        "id => [...document.querySelectorAll('#user-result [data-user]')].some(e => e.dataset.user === id)", arg=user
    )


def _artifacts() -> Path:
    return Path(os.environ.get("MUSIC_ANALYTICS_ARTIFACTS") or ROOT / "artifacts")


def test_report_draws_the_run_exactly(browser: object, run: Run) -> None:
    opened = _open(browser, run.report)
    page, results = opened.page, run.results
    stats = results["listening_stats"]

    facts = dict(page.eval_on_selector_all(".facts .fact", "els => els.map(e => [e.dataset.label, e.dataset.value])"))
    assert int(facts["events"]) == results["events_processed"]
    assert int(facts["users"]) == results["user_stats"]["users"] == len(run.users)
    assert facts["timezone"] == TIMEZONE
    assert facts["range"] == f"{stats['first_ts']}..{stats['last_ts']}"
    assert int(facts["rejected"]) == results["rows_rejected"]

    assert _bars(page, "top-songs") == list(results["mapreduce_results"]["top_songs"].items())
    assert _bars(page, "top-artists") == [(a["artist"], a["listen_count"]) for a in stats["top_artists"]]
    totals = results["userbehavior_results"]["top_users_total_time"]
    assert _bars(page, "top-users") == [(u, totals[u]) for u in results["userbehavior_results"]["top_users"]]
    assert _cells(page, "heatmap") == _expected_cells(stats["daily_activity"])

    activity = stats["listening_activity"]
    assert len(activity["year"]) == 4 and len(activity["day"]) > MAX_DAY_BARS  # what this data is for
    for granularity, label in (("year", "Years"), ("month", "Months"), ("day", "Days")):
        assert page.text_content(f"label[for=granularity-{granularity}]") == label
        page.click(f"label[for=granularity-{granularity}]")
        assert page.is_visible(f'[data-chart="activity-{granularity}"]')
        others = [g for g in ("year", "month", "day") if g != granularity]
        assert not any(page.is_visible(f'[data-chart="activity-{g}"]') for g in others)
        expected = _periods(activity[granularity])
        assert _points(page, f"activity-{granularity}") == (
            expected[-MAX_DAY_BARS:] if granularity == "day" else expected
        )
    bounds = page.eval_on_selector_all(
        '[data-chart="activity-month"] rect.point',
        "els => els.map(e => [Number(e.dataset.from), Number(e.dataset.to)])",
    )
    assert bounds == [[m["from_ts"], m["to_ts"]] for m in activity["month"]]

    # The most hostile user: every number of theirs, their names shown as text.
    _search(page, HOSTILE_USER)
    line = run.users[HOSTILE_USER]
    assert page.text_content("#user-result .user-name") == HOSTILE_USER
    user_facts = dict(
        page.eval_on_selector_all("#user-result .fact", "els => els.map(e => [e.dataset.label, e.dataset.value])")
    )
    assert int(user_facts["total_time"]) == line["total_time"]
    assert user_facts["top_artist"] == line["top_artist"]
    assert page.text_content('#user-result [data-label="top_artist"] .fact-value') == line["top_artist"]
    assert _bars(page, "user-top-artists") == [(a["artist"], a["listen_count"]) for a in line["top_artists"]]
    assert _bars(page, "user-top-songs") == [(s["song"], s["listen_count"]) for s in line["top_songs"]]
    assert _cells(page, "user-heatmap") == _expected_cells(line["daily_activity"])
    assert _points(page, "user-months") == _periods(line["listening_activity"]["month"])
    recommendations = page.eval_on_selector_all(
        '[data-chart="user-recommendations"] .rec', "els => els.map(e => [e.dataset.label, e.textContent])"
    )
    expected_recommendations = results["recommendation_results"]["recommendations"][HOSTILE_USER]
    assert expected_recommendations and [r for r, _ in recommendations] == expected_recommendations
    assert all(label == shown for label, shown in recommendations)
    personalized = page.eval_on_selector_all(
        '[data-chart="user-artists-for-you"] .rec',
        "els => els.map(e => [e.dataset.label, e.textContent, Number(e.dataset.score)])",
    )
    assert personalized == [[a["artist"], a["artist"], a["score"]] for a in line["recommended_artists"]]
    assert page.get_attribute('[data-chart="user-artists-for-you"]', "data-by") == line["recommended_by"]

    # Every other user too, checked on their totals, monthly activity and artists for them.
    shown_any = False
    for user, line in run.users.items():
        _search(page, user)
        assert page.get_attribute('#user-result [data-label="total_time"]', "data-value") == str(line["total_time"])
        assert _points(page, "user-months") == _periods(line["listening_activity"]["month"])
        shown = page.eval_on_selector_all(
            '[data-chart="user-artists-for-you"] .rec', "els => els.map(e => e.dataset.label)"
        )
        assert shown == [a["artist"] for a in line["recommended_artists"]]
        shown_any = shown_any or bool(shown)
    assert shown_any  # the data leaves some users artists they have not played

    _search(page, UNKNOWN_USER)
    assert page.text_content("#user-result .not-found") == f"No user “{UNKNOWN_USER}” in this run."

    _search(page, HOSTILE_USER)
    page.click("label[for=granularity-month]")
    artifacts = _artifacts()
    artifacts.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(artifacts / "report.png"), full_page=True)

    assert page.query_selector("#needs-script") is None  # the script ran, so it says nothing about needing one
    assert opened.dialogs == [], "a string from the data ran as script"
    assert opened.console_errors == []
    assert opened.requests == [opened.url], "the page asked for something besides itself"
    # Only the page's own two scripts: no string from the data became an element.
    assert page.eval_on_selector_all("script", "els => els.length") == 2
    assert page.eval_on_selector_all("img, iframe, object, embed", "els => els.length") == 0
    page.context.close()


def test_bounded_report_embeds_the_most_active_and_says_when_a_user_is_not_there(browser: object, run: Run) -> None:
    opened = _open(browser, run.bounded_report)
    page = opened.page
    top_users = run.results["userbehavior_results"]["top_users"]
    # The embedded users are the most active by total time, ties by user_id: the run's own top users.
    for user in top_users:
        _search(page, user)
        assert page.text_content("#user-result .user-name") == user
        assert _points(page, "user-months") == _periods(run.users[user]["listening_activity"]["month"])
    left_out = sorted(set(run.users) - set(top_users))[0]
    _search(page, left_out)
    message = page.text_content("#user-result .not-found")
    assert f"No user “{left_out}” among the {len(top_users)} most active users this page holds" in message
    assert f"(of {len(run.users)})" in message and "results.users.jsonl" in message
    assert opened.console_errors == [] and opened.dialogs == []
    assert opened.requests == [opened.url]
    page.context.close()


def test_server_drawn_charts_work_without_javascript(browser: object, run: Run) -> None:
    opened = _open(browser, run.report, javascript=False)
    page, stats = opened.page, run.results["listening_stats"]
    assert _bars(page, "top-songs") == list(run.results["mapreduce_results"]["top_songs"].items())
    assert _cells(page, "heatmap") == _expected_cells(stats["daily_activity"])
    assert page.is_visible('[data-chart="heatmap"]')
    # The year/month/day switch is radio buttons and CSS.
    page.click("label[for=granularity-year]")
    assert page.is_visible('[data-chart="activity-year"]') and not page.is_visible('[data-chart="activity-month"]')
    assert _points(page, "activity-year") == _periods(stats["listening_activity"]["year"])
    assert page.is_visible("text=Searching needs JavaScript.")
    assert opened.requests == [opened.url]
    page.context.close()
