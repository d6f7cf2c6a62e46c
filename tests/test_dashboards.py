"""The Grafana dashboards' JSON, checked without Grafana: structure, variables, queries.

Whether every query returns data is checked against live services in test_observability.py.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import require_binary
from tests.support.prometheus import dashboard_panels

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD_DIR = ROOT / "charts" / "music-analytics" / "files" / "dashboards"
EXPECTED = {
    "music-analytics-overview.json": "music-analytics-overview",
    "music-analytics-service.json": "music-analytics-service",
}
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
WINDOWS = {"$__rate_interval", "$__range"}


def load(name: str) -> dict:
    return json.loads((DASHBOARD_DIR / name).read_text())


def exprs(dashboard: dict) -> list[str]:
    return [t["expr"] for p in dashboard_panels(dashboard) for t in p.get("targets", [])]


@pytest.fixture(params=sorted(EXPECTED))
def dashboard(request: pytest.FixtureRequest) -> dict:
    return load(request.param)


def test_the_two_dashboards_exist_with_fixed_uids() -> None:
    assert sorted(p.name for p in DASHBOARD_DIR.glob("*.json")) == sorted(EXPECTED)
    for name, uid in EXPECTED.items():
        dashboard = load(name)
        assert dashboard["uid"] == uid
        assert len(uid) <= 40  # Grafana's limit
        assert "id" not in dashboard or dashboard["id"] is None  # provisioning assigns the id
        assert dashboard["title"].startswith("music-analytics / ")
        assert "music-analytics" in dashboard["tags"]


def test_datasource_is_a_variable_used_everywhere(dashboard: dict) -> None:
    (var,) = [v for v in dashboard["templating"]["list"] if v["name"] == "datasource"]
    assert var["type"] == "datasource" and var["query"] == "prometheus"
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            assert var["datasource"] == DATASOURCE, var["name"]
    for panel in dashboard_panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]


def test_panels_are_complete_and_laid_out_on_the_grid(dashboard: dict) -> None:
    ids = [p["id"] for p in dashboard_panels(dashboard)]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard_panels(dashboard):
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["title"] and panel["description"], panel
        assert panel["targets"], panel["title"]
        assert panel["type"] == "heatmap" or panel["fieldConfig"]["defaults"].get("unit"), panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip() and target.get("legendFormat"), panel["title"]


def test_range_windows_are_grafana_variables(dashboard: dict) -> None:
    """`$__rate_interval` for rates (so they work at any scrape interval), `$__range` for totals."""
    for expr in exprs(dashboard):
        for window in re.findall(r"\[([^\]]*)\]", expr):
            assert window in WINDOWS, f"hard-coded window [{window}] in {expr}"
        for call in re.findall(r"\b(rate|irate|increase)\(", expr):
            assert "[$__" in expr, f"{call} without a window variable in {expr}"


def test_queries_do_not_depend_on_the_scrape_job(dashboard: dict) -> None:
    """The job label differs between ServiceMonitor and plain Prometheus scraping."""
    for expr in exprs(dashboard):
        assert not re.search(r"\bjob\s*(=|!=|=~|!~)", expr), expr


def test_service_dashboard_drills_down_by_service() -> None:
    dashboard = load("music-analytics-service.json")
    (var,) = [v for v in dashboard["templating"]["list"] if v["name"] == "service"]
    assert var["type"] == "query" and not var["includeAll"] and not var["multi"]
    assert re.fullmatch(r"label_values\(\w+, service\)", var["query"]["query"])
    for panel in dashboard_panels(dashboard):
        for target in panel.get("targets", []):
            assert "$service" in target["expr"], f"{panel['title']}: not filtered by $service"


def test_overview_covers_what_users_watch() -> None:
    """Traffic, errors, latency quantiles, events, batches, refused calls, streams, memory and CPU
    per pod, and the client pipeline's pushed metrics."""
    text = "\n".join(exprs(load("music-analytics-overview.json")))
    for needed in (
        "grpc_server_handled_total",
        'grpc_code!="OK"',
        "histogram_quantile(0.5, sum by (le, grpc_service, grpc_method) (rate(grpc_server_handling_seconds_bucket",
        "histogram_quantile(0.95, sum by (le, grpc_service, grpc_method) (rate(grpc_server_handling_seconds_bucket",
        "histogram_quantile(0.99, sum by (le, grpc_service, grpc_method) (rate(grpc_server_handling_seconds_bucket",
        "music_analytics_events_processed_total",
        "music_analytics_batch_size_events_bucket",
        "music_analytics_calls_rejected_total",
        "music_analytics_inflight_streams",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "music_analytics_client_events_read_total",
        "music_analytics_client_rows_rejected_total",
        "music_analytics_client_events_processed_total",
        "music_analytics_client_stage_duration_seconds",
        "music_analytics_client_last_run_timestamp_seconds",
    ):
        assert needed in text, needed


def test_every_query_parses_with_promtool(tmp_path: Path) -> None:
    """Each expression, variables substituted, as a recording rule: `promtool check rules` parses it."""
    promtool = require_binary("promtool")
    rules = []
    for name in sorted(EXPECTED):
        for i, expr in enumerate(exprs(load(name))):
            concrete = expr.replace("$__rate_interval", "1m").replace("$__range", "1h")
            concrete = concrete.replace("$service", "mapreduce")
            assert "$" not in concrete, concrete
            rules.append({"record": f"dashboard:{name.removesuffix('.json').replace('-', '_')}:{i}", "expr": concrete})
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    checked = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rules)} rules found" in checked.stdout


GRPC_SERVER_METRICS = re.compile(r"\bgrpc_server_\w+")


def test_application_traffic_panels_ignore_health_checks(tmp_path: Path) -> None:
    """Kubelet probes call grpc.health.v1.Health every few seconds. Evaluated by Prometheus' own
    engine (`promtool test rules`): with only health-check traffic, every gRPC traffic query is
    empty; with application calls as well, they see those."""
    promtool = require_binary("promtool")
    queries = [
        expr.replace("$__rate_interval", "1m").replace("$__range", "1h").replace("$service", "mapreduce")
        for name in sorted(EXPECTED)
        for expr in exprs(load(name))
        if GRPC_SERVER_METRICS.search(expr)
    ]
    assert len(queries) >= 10

    def series(service: str, method: str) -> list[dict[str, str]]:
        labels = f'grpc_service="{service}",grpc_method="{method}",grpc_type="unary",job="ma",instance="p:9051"'
        out = [
            {"series": f"grpc_server_{m}{{{labels}}}", "values": "0+10x20"}
            for m in ("started_total", "msg_received_total", "msg_sent_total")
        ]
        out.append({"series": f'grpc_server_handled_total{{{labels},grpc_code="OK"}}', "values": "0+10x20"})
        out.append({"series": f'grpc_server_handled_total{{{labels},grpc_code="Unavailable"}}', "values": "0+1x20"})
        for le in ("0.1", "+Inf"):
            out.append({"series": f'grpc_server_handling_seconds_bucket{{{labels},le="{le}"}}', "values": "0+10x20"})
        return out

    inflight = {
        "series": 'music_analytics_inflight_streams{service="mapreduce",job="ma",instance="p:9051"}',
        "values": "0x20",
    }
    health_only = [*series("grpc.health.v1.Health", "Check"), inflight]
    with_app = [*health_only, *series("music.v1.MapReduceService", "StreamEvents")]
    tests = [
        {
            "interval": "1m",
            "input_series": health_only,
            "promql_expr_test": [{"expr": q, "eval_time": "15m", "exp_samples": []} for q in queries],
        }
    ]
    (tmp_path / "empty-rules.yaml").write_text("groups: []\n")
    (tmp_path / "health.yaml").write_text(yaml.safe_dump({"rule_files": ["empty-rules.yaml"], "tests": tests}))
    checked = subprocess.run(
        [promtool, "test", "rules", "health.yaml"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert checked.returncode == 0, checked.stdout[-4000:] + checked.stderr[-4000:]
    # The same queries see application calls: expecting "empty" must now fail for each of them.
    for q in queries:
        tests = [
            {
                "interval": "1m",
                "input_series": with_app,
                "promql_expr_test": [{"expr": q, "eval_time": "15m", "exp_samples": []}],
            }
        ]
        (tmp_path / "app.yaml").write_text(yaml.safe_dump({"rule_files": ["empty-rules.yaml"], "tests": tests}))
        checked = subprocess.run(
            [promtool, "test", "rules", "app.yaml"], cwd=tmp_path, capture_output=True, text=True, timeout=120
        )
        assert checked.returncode != 0, f"sees no application traffic: {q}"


def test_calls_refused_by_services_and_csv_rows_skipped_by_the_client_stay_apart() -> None:
    """Two different things: whole calls a service refused (music_analytics_calls_rejected_total)
    and CSV rows the client left out (music_analytics_client_rows_rejected_total). No panel mixes
    them, and each panel's title says which one it counts."""
    seen = {"service": 0, "client": 0}
    for name in sorted(EXPECTED):
        for panel in dashboard_panels(load(name)):
            text = " ".join(t["expr"] for t in panel.get("targets", []))
            service = "music_analytics_calls_rejected_total" in text
            client = "music_analytics_client_rows_rejected_total" in text
            assert not (service and client), panel["title"]
            if service:
                seen["service"] += 1
                assert "calls" in panel["title"].lower() and "rows" not in panel["title"].lower(), panel["title"]
            if client:
                seen["client"] += 1
                assert "csv rows" in panel["title"].lower() and "client" in panel["title"].lower(), panel["title"]
    assert seen["service"] >= 4 and seen["client"] >= 2, seen
    # The old service-side name is gone for good.
    for name in sorted(EXPECTED):
        assert not re.search(r"\bmusic_analytics_rows_rejected_total", (DASHBOARD_DIR / name).read_text()), name


# ---------------------------------------------------------------- grpc_code spellings

# Go's codes.Code.String(), indexed by code number: the label values go-grpc-middleware (and our
# services) put in grpc_code. Cross-checked against grpc.StatusCode's numbering below.
GO_CODE_NAMES = (
    "OK", "Canceled", "Unknown", "InvalidArgument", "DeadlineExceeded", "NotFound", "AlreadyExists",
    "PermissionDenied", "ResourceExhausted", "FailedPrecondition", "Aborted", "OutOfRange",
    "Unimplemented", "Internal", "Unavailable", "DataLoss", "Unauthenticated",
)  # fmt: skip
# Where a grpc_code can be written: the monitoring files, the chart (templates, NOTES, values,
# schema) and the k8s/ monitoring values.
CODE_SOURCES = sorted(
    [
        *DASHBOARD_DIR.glob("*.json"),
        ROOT / "charts" / "music-analytics" / "files" / "prometheus-rules.yaml",
        *(ROOT / "tests" / "promtool").glob("*.yaml"),
        *(ROOT / "charts" / "music-analytics" / "templates").rglob("*"),
        ROOT / "charts" / "music-analytics" / "values.yaml",
        ROOT / "charts" / "music-analytics" / "values.schema.json",
        *(ROOT / "k8s").glob("*.yaml"),
    ]
)
MATCHER = re.compile(r'grpc_code\s*(=~|!~|!=|=)\s*\\?"((?:[^"\\]|\\[^"])*)\\?"')
WORD = re.compile(r"[A-Za-z_]+")


def grpc_code_problems(text: str) -> tuple[list[str], list[str]]:
    """(problems, matched values): every value a grpc_code matcher names that is not a Go spelling,
    and any spelling of a code name in prose that is not Go's (CANCELLED, Cancelled,
    RESOURCE_EXHAUSTED, Ok...). Lower-case English words ("unknown", "internal") are prose."""
    problems, values = [], []
    for op, value in MATCHER.findall(text):
        alternatives = value.split("|") if op in ("=~", "!~") else [value]
        for alternative in alternatives:
            values.append(alternative)
            if alternative not in GO_CODE_NAMES:
                problems.append(f"grpc_code{op}{value!r}: {alternative!r} is not a Go code name")
    canonical = {name.lower(): name for name in GO_CODE_NAMES} | {"cancelled": "Canceled"}
    for word in WORD.findall(text):
        folded = word.lower().replace("_", "")
        if folded not in canonical or word == canonical[folded]:
            continue
        if word.islower() and folded != "cancelled":
            continue
        problems.append(f"{word!r} (Go spells it {canonical[folded]!r})")
    return problems, values


def test_go_code_names_match_grpc_numbering() -> None:
    import grpc

    for status in grpc.StatusCode:
        number, _description = status.value
        camel = "".join(part.capitalize() for part in status.name.split("_"))
        # Python (like C core) spells 1 CANCELLED; Go, and so grpc_code, Canceled.
        assert GO_CODE_NAMES[number] == {"Ok": "OK", "Cancelled": "Canceled"}.get(camel, camel), status
    assert len(GO_CODE_NAMES) == len(grpc.StatusCode)


def test_grpc_code_spelling_check_catches_non_go_spellings() -> None:
    for bad in (
        'rate(grpc_server_handled_total{grpc_code="Cancelled"}[5m])',
        'grpc_code=~"Unknown|CANCELLED"',
        'grpc_code!~\\"OK|cancelled\\"',
        "a client that gave up shows as Cancelled",
        "refused with RESOURCE_EXHAUSTED",
        'grpc_code="deadline_exceeded"',
    ):
        assert grpc_code_problems(bad)[0], bad
    for good in ('grpc_code!~"OK|Canceled"', "an unknown reason, internal use", 'grpc_code="ResourceExhausted"'):
        assert not grpc_code_problems(good)[0], good


def test_every_grpc_code_is_spelled_as_go_spells_it() -> None:
    problems, values = [], []
    for path in CODE_SOURCES:
        if not path.is_file():
            continue
        found, matched = grpc_code_problems(path.read_text())
        problems += [f"{path.relative_to(ROOT)}: {p}" for p in found]
        values += matched
    assert not problems, "\n".join(problems)
    # The scan did see the matchers: the error-ratio alert's codes, the panels' exclusions.
    assert {"OK", "Canceled", "Internal", "DeadlineExceeded", "ResourceExhausted"} <= set(values), sorted(set(values))
