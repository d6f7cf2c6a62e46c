"""Dashboards and alerts against a real Prometheus scraping the real services.

One module-scoped stack: the three services as processes, a Pushgateway, and Prometheus
(scrape_interval 1s) loading the alerting rules. The pipeline runs once over a CSV with bad rows,
then three bad RPCs are sent with the real grpcurl. Then every dashboard panel query and every
alert expression is evaluated through Prometheus' HTTP API. The stack runs twice, scraped the
way kube-prometheus-stack scrapes the chart's ServiceMonitor and the way a plain annotation-based
Prometheus does (see scrape_jobs).

Needs the Debian packages `prometheus` and `prometheus-pushgateway` (.ci/run installs them):
missing binaries fail the tests under CI (CI=true) and skip them elsewhere.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from music_analytics.client.demo import LocalServices, free_port
from tests.conftest import require_binary
from tests.support.prometheus import (
    GRAFANA_VARS,
    Prometheus,
    dashboard_queries,
    http_get,
    metric_names,
    series_with_data,
    template_queries,
    variable_values,
)
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
CHART_FILES = ROOT / "charts" / "music-analytics" / "files"
DASHBOARDS = sorted((CHART_FILES / "dashboards").glob("*.json"))
RULES = CHART_FILES / "prometheus-rules.yaml"
BIN = Path(sys.executable).parent
SERVICES = ("mapreduce", "userbehavior", "recommendation")

# Series Prometheus itself adds for every target: not in any scrape.
SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}


def alert_rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


# --- the stack --------------------------------------------------------------------------------


@dataclass
class Stack(Prometheus):
    """Prometheus (``url``) scraping ``services`` and a Pushgateway the pipeline pushed to."""

    services: LocalServices
    pushgateway: str
    workdir: Path
    results: dict = field(default_factory=dict)

    def metrics_urls(self) -> dict[str, str]:
        return {p.name: f"http://127.0.0.1:{p.metrics_port}/metrics" for p in self.services.all()}


def write_csv(path: Path) -> int:
    """2000 good rows and 50 bad ones of every client-side kind; returns the number of bad rows."""
    lines = ["user_id,song_id,artist,duration,timestamp"]
    bad = [
        ",s1,Artist 1,100,2024-01-01T00:00:00",  # empty_field
        "u1,s1,Artist 1,-5,2024-01-01T00:00:00",  # invalid_duration
        "u1,s1,Artist 1,abc,2024-01-01T00:00:00",  # invalid_duration
        "u1,s1,Artist 1,100",  # wrong_field_count
        "u1,s1,Artist 1,100,yesterday",  # invalid_timestamp
    ]
    count = 0
    for i in range(2000):
        lines.append(f"u{i % 97},s{i % 53},Artist {i % 53 % 11},{30 + i % 200},2024-03-{1 + i % 28:02d}T12:00:00Z")
        if i % 40 == 0:
            lines.append(bad[count % len(bad)])
            count += 1
    path.write_text("\n".join(lines) + "\n")
    return count


BAD_RPCS = {
    # service -> (method, JSON request stream); each must fail with InvalidArgument (exit 64 + 3).
    "mapreduce": (
        "music.v1.MapReduceService/CountPlays",
        '{"events":{"records":{"events":[{"user_id":"u","song_id":"","artist":"a","duration":1}]}}}',
    ),
    "userbehavior": ("music.v1.UserBehaviorService/AnalyzeUsers", '{"events":{"records":{}}}'),
    "recommendation": (
        "music.v1.RecommendationService/Recommend",
        '{"users":{"user_ids":["u"],"top_artist":["a"]}}',
    ),
}


def scrape_jobs(style: str, services: LocalServices) -> list[dict]:
    """The services' scrape jobs, shaped like one of the two ways the chart gets scraped.

    ``servicemonitor``: what kube-prometheus-stack generates from the chart's ServiceMonitor: a
    job per Kubernetes Service, target labels namespace/service/pod/endpoint, and honorLabels
    (so our own `service` label wins over the Service name). ``plain``: one annotation-style job
    for every pod, no extra labels.
    """
    if style == "servicemonitor":
        return [
            {
                "job_name": f"music-analytics-{p.name}",
                "honor_labels": True,
                "static_configs": [
                    {
                        "targets": [f"127.0.0.1:{p.metrics_port}"],
                        "labels": {
                            "namespace": "music",
                            "service": f"music-analytics-{p.name}",
                            "pod": f"music-analytics-{p.name}-7d4b9c-x{p.grpc_port}",
                            "endpoint": "metrics",
                        },
                    }
                ],
            }
            for p in services.all()
        ]
    return [
        {
            "job_name": "kubernetes-pods",
            "static_configs": [{"targets": [f"127.0.0.1:{p.metrics_port}" for p in services.all()]}],
        }
    ]


def prometheus_config(stack_dir: Path, style: str, services: LocalServices, pushgateway_port: int) -> Path:
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            *scrape_jobs(style, services),
            {
                # Pushed metrics keep the job label they were pushed with.
                "job_name": "pushgateway",
                "honor_labels": True,
                "static_configs": [{"targets": [f"127.0.0.1:{pushgateway_port}"]}],
            },
        ],
    }
    path = stack_dir / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="module", params=["servicemonitor", "plain"])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prometheus_bin = require_binary("prometheus")
    pushgateway_bin = require_binary("prometheus-pushgateway")
    grpcurl = str(BIN / "grpcurl")
    workdir = tmp_path_factory.mktemp(f"observability-{request.param}")
    started = time.time()
    processes: list[subprocess.Popen] = []
    logs = [open(workdir / f"{name}.log", "wb") for name in ("pushgateway", "prometheus")]  # noqa: SIM115
    services = LocalServices(replicas=1, log_dir=workdir)
    try:
        services.__enter__()
        pg_port, prom_port = free_port(), free_port()
        processes.append(
            subprocess.Popen(
                [pushgateway_bin, f"--web.listen-address=127.0.0.1:{pg_port}", "--log.level=warn"],
                stdout=subprocess.DEVNULL,
                stderr=logs[0],
            )
        )
        config = prometheus_config(workdir, request.param, services, pg_port)
        check = subprocess.run(
            [require_binary("promtool"), "check", "config", str(config)], capture_output=True, text=True
        )
        assert check.returncode == 0, check.stdout + check.stderr
        processes.append(
            subprocess.Popen(
                [
                    prometheus_bin,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{prom_port}",
                    "--log.level=warn",
                ],
                stdout=subprocess.DEVNULL,
                stderr=logs[1],
            )
        )
        s = Stack(f"http://127.0.0.1:{prom_port}", started, services, f"http://127.0.0.1:{pg_port}", workdir)
        wait_until("Prometheus ready", lambda: http_get(f"{s.url}/-/ready"), 30, ignore=(OSError,))
        wait_until("Pushgateway ready", lambda: http_get(f"{s.pushgateway}/-/ready"), 30, ignore=(OSError,))

        def all_up() -> bool:
            targets = s.api("targets")["data"]["activeTargets"]
            return len(targets) == len(services.all()) + 1 and all(t["health"] == "up" for t in targets)

        wait_until("every target scraped", all_up, 30, ignore=(OSError,))

        # The pipeline, with bad rows, pushing its own metrics.
        data, out = workdir / "events.csv", workdir / "results.json"
        bad_rows = write_csv(data)
        run = subprocess.run(
            [
                str(BIN / "music-analytics"), "run", "--data", str(data), "--out", str(out), "--quiet",
                "--mapreduce", services.target("mapreduce"),
                "--userbehavior", services.target("userbehavior"),
                "--recommendation", services.target("recommendation"),
                "--pushgateway", s.pushgateway,
            ],
            capture_output=True, text=True, timeout=120, cwd=ROOT,
        )  # fmt: skip
        assert run.returncode == 0, run.stdout + run.stderr
        assert "warning" not in run.stderr, run.stderr  # the push succeeded
        s.results = json.loads(out.read_text())
        assert s.results["rows_rejected"] == bad_rows

        # Bad RPCs, with the real grpcurl.
        for name, (method, body) in BAD_RPCS.items():
            bad = subprocess.run(
                [grpcurl, "-plaintext", "-d", body, services.target(name), method],
                capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            assert bad.returncode == 64 + 3, f"{method}: exit {bad.returncode}\n{bad.stdout}{bad.stderr}"
            assert "InvalidArgument" in bad.stderr, bad.stderr

        # Prometheus has seen all of it, and scraped twice more since: rate() and increase() need
        # two samples after the last change to show it.
        finished = time.time()
        s.wait_scraped_since(finished)
        wait_until(
            "the bad RPCs and the pushed metrics in Prometheus",
            lambda: (
                len(s.query('grpc_server_handled_total{grpc_code="InvalidArgument"} > 0')["data"]["result"]) == 3
                and s.query("music_analytics_client_events_read_total")["data"]["result"]
            ),
            30,
        )
        yield s
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for log in logs:
            log.close()
        services.stop()


# --- tests ------------------------------------------------------------------------------------


def test_template_variables_list_every_service(stack: Stack) -> None:
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        for name, (metric, label) in template_queries(dashboard).items():
            values = stack.api(f"label/{label}/values", **{"match[]": metric})["data"]
            if name == "service":
                assert sorted(values) == sorted(SERVICES), values


@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.stem for p in DASHBOARDS])
def test_every_dashboard_query_returns_data(stack: Stack, path: Path) -> None:
    dashboard = json.loads(path.read_text())
    failures = []
    checked = 0
    for variables in variable_values(stack, dashboard):
        for query in dashboard_queries(dashboard, variables):
            chosen = {k: v for k, v in variables.items() if k not in GRAFANA_VARS}
            where = f"{query.source} {chosen}" if chosen else query.source
            reply = stack.query_range(query.expr)
            checked += 1
            if reply.get("status") != "success":
                failures.append(f"{where}: {reply.get('errorType')}: {reply.get('error')}\n    {query.expr}")
            elif not series_with_data(reply):
                failures.append(f"{where}: no data\n    {query.expr}")
    assert checked >= 20
    assert not failures, f"{len(failures)} of {checked} panel queries failed:\n" + "\n".join(failures)


def test_dashboards_and_alerts_use_only_exposed_metrics(stack: Stack) -> None:
    """Every metric name a panel or an alert selects is in a live scrape of a service or the gateway."""
    exposed: set[str] = set()
    for url in [*stack.metrics_urls().values(), f"{stack.pushgateway}/metrics"]:
        for family in text_string_to_metric_families(http_get(url).decode()):
            exposed.update(sample.name for sample in family.samples)
    used: dict[str, set[str]] = {}
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        variables = GRAFANA_VARS | {name: "x" for name in template_queries(dashboard)}
        for query in dashboard_queries(dashboard, variables):
            for name in metric_names(query.expr):
                used.setdefault(name, set()).add(query.source)
        for metric, _label in template_queries(dashboard).values():
            used.setdefault(metric, set()).add(f"{dashboard['uid']} variables")
    for rule in alert_rules():
        for name in metric_names(rule["expr"]):
            used.setdefault(name, set()).add(f"alert {rule['alert']}")
    assert len(used) >= 10, sorted(used)  # the tokenizer found the metrics
    missing = {name: sorted(where) for name, where in used.items() if name not in exposed | SYNTHETIC}
    assert not missing, f"metrics used but not exposed: {json.dumps(missing, indent=1)}"
    # The tokenizer's findings are real series in Prometheus too.
    for name in used:
        assert stack.query(f'count({{__name__="{name}"}})')["data"]["result"], name


def test_alert_rules_load_and_every_expression_evaluates(stack: Stack) -> None:
    loaded = {
        rule["name"]: rule
        for group in stack.api("rules")["data"]["groups"]
        for rule in group["rules"]
        if rule["type"] == "alerting"
    }
    assert sorted(loaded) == sorted(r["alert"] for r in alert_rules())
    for name, rule in loaded.items():
        assert rule["health"] == "ok", f"{name}: {rule.get('lastError')}"
    for rule in alert_rules():
        reply = stack.query(rule["expr"])
        assert reply["status"] == "success", f"{rule['alert']}: {reply.get('error')}"


def firing_expr(stack: Stack, alert: str) -> list[dict]:
    (rule,) = [r for r in alert_rules() if r["alert"] == alert]
    return stack.query(rule["expr"])["data"]["result"]


def test_rows_rejected_alerts_see_the_bad_input(stack: Stack) -> None:
    # The three bad RPCs: each service counted one rejection (an empty song_id, an empty batch,
    # users before candidates).
    rejected = {
        r["metric"]["service"]: r["metric"]["reason"] for r in firing_expr(stack, "MusicAnalyticsCallsRejected")
    }
    assert rejected == {"mapreduce": "empty_field", "userbehavior": "invalid_batch", "recommendation": "invalid_batch"}
    # 50 bad rows out of 2050 read: 2.4% > 1%.
    (client,) = firing_expr(stack, "MusicAnalyticsClientRowsRejected")
    assert client["metric"]["job"] == "music-analytics-client"
    assert float(client["value"][1]) == pytest.approx(stack.results["rows_rejected"] / 2050)
    # InvalidArgument is the caller's fault: no server error ratio, and the run was quick.
    assert firing_expr(stack, "MusicAnalyticsHighErrorRatio") == []
    assert firing_expr(stack, "MusicAnalyticsHighLatency") == []
    assert firing_expr(stack, "MusicAnalyticsTargetDown") == []
    assert firing_expr(stack, "MusicAnalyticsServiceDown") == []


def test_promtool_check_metrics_is_clean_on_every_service(stack: Stack) -> None:
    for name, url in stack.metrics_urls().items():
        checked = subprocess.run(
            [require_binary("promtool"), "check", "metrics"], input=http_get(url), capture_output=True, timeout=30
        )
        report = (checked.stdout + checked.stderr).decode()
        assert checked.returncode == 0 and not report.strip(), f"{name} {url}:\n{report}"


def test_client_run_pushed_its_metrics(stack: Stack) -> None:
    """`music-analytics run --pushgateway` pushed what the dashboards' client row shows."""
    pushed: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(http_get(f"{stack.pushgateway}/metrics").decode()):
        for sample in family.samples:
            if sample.name.startswith("music_analytics_client_"):
                assert sample.labels["job"] == "music-analytics-client", sample
                key = tuple(sorted((k, v) for k, v in sample.labels.items() if k not in ("job", "instance")))
                pushed.setdefault(sample.name, {})[key] = sample.value
    results = stack.results
    assert pushed["music_analytics_client_events_read_total"] == {(): 2050}
    assert pushed["music_analytics_client_events_processed_total"] == {(): results["events_processed"]}
    rejected = {dict(k)["reason"]: v for k, v in pushed["music_analytics_client_rows_rejected_total"].items()}
    assert rejected == {k: float(v) for k, v in results["rows_rejected_by_reason"].items()}
    assert sum(rejected.values()) == results["rows_rejected"] == 50
    stages = {dict(k)["stage"]: v for k, v in pushed["music_analytics_client_stage_duration_seconds"].items()}
    assert set(stages) >= {"mapreduce", "userbehavior", "recommendation", "total"}, stages
    assert all(0 <= seconds <= stages["total"] for seconds in stages.values()), stages
    (finished,) = pushed["music_analytics_client_last_run_timestamp_seconds"].values()
    assert stack.started <= finished <= time.time()


# Last: stops a service.
def test_service_down_alerts_fire_when_a_service_stops(stack: Stack) -> None:
    (process,) = stack.services.processes["recommendation"]
    assert process.stop() == 0
    down = wait_until("MusicAnalyticsTargetDown", lambda: firing_expr(stack, "MusicAnalyticsTargetDown"), 15)
    assert [(d["metric"]["service"], d["metric"]["instance"]) for d in down] == [
        ("recommendation", f"127.0.0.1:{process.metrics_port}")
    ]
    gone = wait_until("MusicAnalyticsServiceDown", lambda: firing_expr(stack, "MusicAnalyticsServiceDown"), 15)
    assert [g["metric"]["service"] for g in gone] == ["recommendation"]
