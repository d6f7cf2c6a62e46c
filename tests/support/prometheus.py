"""A running Prometheus, asked through its HTTP API, and the Grafana dashboards' queries as
Grafana would send them (template variables substituted)."""

from __future__ import annotations

import datetime
import json
import math
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

from tests.support.waiting import wait_until

# What Grafana substitutes. The rate window spans several 1s scrapes, as $__rate_interval would.
GRAFANA_VARS = {"__rate_interval": "30s", "__interval": "2s", "__range": "10m", "datasource": "prometheus"}
PROMQL_WORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "offset", "bool", "inf", "nan", "atan2",
}  # fmt: skip


def http_get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def _timestamp(rfc3339: str) -> float:
    # Prometheus writes nanoseconds; fromisoformat (3.11) accepts them and keeps microseconds.
    return datetime.datetime.fromisoformat(rfc3339).timestamp()


@dataclass
class Prometheus:
    url: str  # base URL
    started: float  # time.time() before it started: range queries start here

    def api(self, path: str, **params: str) -> dict:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            body = http_get(url, timeout=10)
        except urllib.error.HTTPError as exc:
            body = exc.read()  # the API's JSON error, for the caller to report
        return json.loads(body)

    def query(self, expr: str) -> dict:
        return self.api("query", query=expr)

    def query_range(self, expr: str) -> dict:
        return self.api("query_range", query=expr, start=f"{self.started:.3f}", end=f"{time.time():.3f}", step="1")

    def wait_scraped_since(self, since: float, timeout: float = 60.0) -> None:
        """Wait until every active target has been scraped twice since ``since`` (a time.time())
        and every rule group evaluated since then: what rate() and the alert expressions need to
        see a change made before ``since``. A target's lastScrape is when its latest scrape
        started, and one target's scrapes never overlap, so a scrape that started a full interval
        after ``since`` means the one before it, also after ``since``, is stored."""

        def scraped_twice() -> bool:
            targets = self.api("targets", state="active")["data"]["activeTargets"]
            groups = self.api("rules")["data"]["groups"]
            return (
                bool(targets)
                and all(_timestamp(t["lastScrape"]) >= since + 2 * _seconds(t["scrapeInterval"]) for t in targets)
                and all(_timestamp(g["lastEvaluation"]) >= since for g in groups)
            )

        wait_until("two scrapes of every target and a rule evaluation", scraped_twice, timeout, ignore=(OSError,))


def _seconds(duration: str) -> float:
    """A Prometheus duration as the targets API writes scrape intervals (e.g. "1s", "1m30s")."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    parts = re.findall(r"(\d+)(ms|[smhdwy])", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a Prometheus duration: {duration!r}"
    return sum(int(n) * units[u] for n, u in parts)


# --- dashboards -------------------------------------------------------------------------------


def substitute(expr: str, variables: dict[str, str]) -> str:
    """Replace Grafana's $var, ${var} and [[var]] forms; fail on any left over."""
    for name, value in sorted(variables.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace("${" + name + "}", value).replace("[[" + name + "]]", value)
        expr = re.sub(r"\$" + re.escape(name) + r"\b", value, expr)
    assert "$" not in expr, f"unsubstituted variable in {expr!r}"
    return expr


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (a tokenizer, not a parser: enough for ours)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    names = set()
    for match in re.finditer(r"(?<![\w.])[a-zA-Z_:][a-zA-Z0-9_:]*", s):
        word = match.group(0)
        if s[match.end() :].lstrip().startswith("(") or word.lower() in PROMQL_WORDS:
            continue  # a function or aggregation, or a keyword
        names.add(word)
    return names


@dataclass
class Query:
    source: str  # where the expression comes from, for messages
    expr: str


def dashboard_panels(dashboard: dict) -> Iterator[dict]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # collapsed rows hold their panels


def dashboard_queries(dashboard: dict, variables: dict[str, str]) -> list[Query]:
    queries = []
    for panel in dashboard_panels(dashboard):
        for target in panel.get("targets", []):
            source = f"{dashboard['uid']} / {panel['title']} / {target['refId']}"
            queries.append(Query(source, substitute(target["expr"], variables)))
    return queries


def template_queries(dashboard: dict) -> dict[str, tuple[str, str]]:
    """name -> (metric, label) of each `label_values(metric, label)` query variable."""
    found = {}
    for var in dashboard["templating"]["list"]:
        if var["type"] != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        match = re.fullmatch(r"\s*label_values\(\s*([^,]+?)\s*,\s*(\w+)\s*\)\s*", query)
        assert match, f"{dashboard['uid']}: variable {var['name']}: unsupported query {query!r}"
        found[var["name"]] = (match.group(1), match.group(2))
    return found


def series_with_data(response: dict) -> list[dict]:
    """Result series holding at least one finite value (NaN is what Grafana shows as a gap)."""
    found = []
    for series in response["data"]["result"]:
        values = series.get("values") or [series["value"]]
        if any(math.isfinite(float(v)) for _, v in values):
            found.append(series)
    return found


def variable_values(prometheus: Prometheus, dashboard: dict) -> list[dict[str, str]]:
    """Every combination of template variable values, from the live label values."""
    combos: list[dict[str, str]] = [dict(GRAFANA_VARS)]
    for name, (metric, label) in template_queries(dashboard).items():
        reply = prometheus.api(f"label/{label}/values", **{"match[]": metric})
        values = reply["data"]
        assert values, f"{dashboard['uid']}: variable ${name} has no values"
        combos = [combo | {name: value} for combo in combos for value in values]
    return combos
