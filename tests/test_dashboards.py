"""The Grafana dashboards' JSON, checked without Grafana: structure, variables, queries.

Whether every query returns data is checked against live services in test_observability.py.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import require_binary

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


def panels(dashboard: dict) -> Iterator[dict]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def exprs(dashboard: dict) -> list[str]:
    return [t["expr"] for p in panels(dashboard) for t in p.get("targets", [])]


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
    for panel in panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]


def test_panels_are_complete_and_laid_out_on_the_grid(dashboard: dict) -> None:
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    cells: dict[tuple[int, int], str] = {}
    for panel in panels(dashboard):
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
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            assert "$service" in target["expr"], f"{panel['title']}: not filtered by $service"


def test_overview_covers_what_users_watch() -> None:
    """The issue's list: traffic, errors, latency quantiles, events, batches, rejections, streams,
    memory and CPU per pod, and the client pipeline's pushed metrics."""
    text = "\n".join(exprs(load("music-analytics-overview.json")))
    for needed in (
        "grpc_server_handled_total",
        'grpc_code!="OK"',
        "histogram_quantile(0.5, sum by (le, grpc_service, grpc_method) (rate(grpc_server_handling_seconds_bucket",
        "histogram_quantile(0.95, sum by (le, grpc_service, grpc_method) (rate(grpc_server_handling_seconds_bucket",
        "histogram_quantile(0.99, sum by (le, grpc_service, grpc_method) (rate(grpc_server_handling_seconds_bucket",
        "music_analytics_events_processed_total",
        "music_analytics_batch_size_events_bucket",
        "music_analytics_rows_rejected_total",
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
