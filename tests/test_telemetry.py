"""client/telemetry.py: what the client pushes, and that a failed push is a clear error."""

from __future__ import annotations

import math
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from music_analytics.client.demo import free_port
from music_analytics.client.telemetry import PushgatewayError, pipeline_registry, push_pipeline_metrics
from tests.conftest import require_binary
from tests.support.waiting import wait_until

RUN = {
    "events_read": 1050,
    "rows_rejected": {"empty_field": 30, "invalid_duration": 20, "invalid_timestamp": 0},
    "stage_seconds": {"mapreduce": 0.5, "userbehavior": 0.75, "recommendation": 0.125, "total": 1.5},
    "events_processed": 1000,
}


def samples(text: str) -> dict[str, dict[tuple, float]]:
    """name -> {sorted label items (job and instance left out) -> value}."""
    found: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k not in ("job", "instance")))
            found.setdefault(sample.name, {})[labels] = sample.value
    return found


def expected(run: dict, finished_at: float) -> dict[str, dict[tuple, float]]:
    return {
        "music_analytics_client_events_read_total": {(): run["events_read"]},
        "music_analytics_client_rows_rejected_total": {(("reason", r),): v for r, v in run["rows_rejected"].items()},
        "music_analytics_client_events_processed_total": {(): run["events_processed"]},
        "music_analytics_client_stage_duration_seconds": {(("stage", s),): v for s, v in run["stage_seconds"].items()},
        "music_analytics_client_last_run_timestamp_seconds": {(): finished_at},
    }


def test_exposition_has_exactly_the_documented_metrics() -> None:
    text = generate_latest(pipeline_registry(**RUN, finished_at=1_700_000_000.5)).decode()
    assert samples(text) == expected(RUN, 1_700_000_000.5)  # no `_created` series either
    assert "# TYPE music_analytics_client_events_read_total counter" in text
    assert "# TYPE music_analytics_client_stage_duration_seconds gauge" in text


def test_exposition_passes_promtool_check_metrics() -> None:
    promtool = require_binary("promtool")
    text = generate_latest(pipeline_registry(**RUN))
    checked = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=30)
    report = (checked.stdout + checked.stderr).decode()
    assert checked.returncode == 0 and not report.strip(), report


@pytest.mark.parametrize(
    "change, message",
    [
        ({"events_read": -1}, "events_read"),
        ({"events_processed": 1.5}, "events_processed"),
        ({"events_read": True}, "events_read"),
        ({"rows_rejected": {"": 1}}, "reason"),
        ({"rows_rejected": {"empty_field": -2}}, "empty_field"),
        ({"stage_seconds": {"total": math.nan}}, "total"),
        ({"stage_seconds": {"total": -0.1}}, "total"),
        ({"stage_seconds": {"": 1.0}}, "stage"),
    ],
)
def test_invalid_numbers_are_refused_before_pushing(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        push_pipeline_metrics("http://127.0.0.1:1", **(RUN | change))


class Recorder(BaseHTTPRequestHandler):
    """A stand-in gateway that records requests and answers with the server's `status`."""

    requests: list[tuple[str, str, bytes]]
    status = 200

    def do_PUT(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.requests.append((self.command, self.path, body))  # type: ignore[attr-defined]
        self.send_response(self.server.status)  # type: ignore[attr-defined]
        self.end_headers()
        self.wfile.write(b"gateway says no\n" if self.server.status >= 400 else b"")  # type: ignore[attr-defined]

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    server.requests = []  # type: ignore[attr-defined]
    server.status = 200  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_push_replaces_the_job_group(recorder: ThreadingHTTPServer) -> None:
    before = time.time()
    push_pipeline_metrics(f"http://127.0.0.1:{recorder.server_port}", **RUN)
    (method, path, body), *more = recorder.requests  # type: ignore[attr-defined]
    assert not more
    assert (method, path) == ("PUT", "/metrics/job/music-analytics-client")  # PUT: replace the group
    pushed = samples(body.decode())
    (finished,) = pushed["music_analytics_client_last_run_timestamp_seconds"].values()
    assert before <= finished <= time.time()
    assert pushed == expected(RUN, finished)


def test_push_with_job_and_grouping_labels(recorder: ThreadingHTTPServer) -> None:
    push_pipeline_metrics(f"127.0.0.1:{recorder.server_port}", **RUN, job="nightly", grouping={"instance": "run-42"})
    (_, path, _), *_ = recorder.requests  # type: ignore[attr-defined]
    assert path == "/metrics/job/nightly/instance/run-42"


def test_gateway_error_is_a_clear_exception(recorder: ThreadingHTTPServer) -> None:
    recorder.status = 500  # type: ignore[attr-defined]
    url = f"http://127.0.0.1:{recorder.server_port}"
    with pytest.raises(PushgatewayError, match=r"Pushgateway at http://127\.0\.0\.1:\d+.*500") as err:
        push_pipeline_metrics(url, **RUN)
    assert "--pushgateway" in str(err.value)


def test_unreachable_gateway_is_a_clear_exception() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(PushgatewayError, match="could not push the client metrics") as err:
        push_pipeline_metrics(url, **RUN)
    assert url in str(err.value)
    assert isinstance(err.value.__cause__, OSError)


def test_round_trip_through_a_real_pushgateway() -> None:
    """Push twice to the Debian pushgateway: the second run's numbers replace the first's."""
    binary = require_binary("prometheus-pushgateway")
    port = free_port()
    gateway = subprocess.Popen(
        [binary, f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            assert gateway.poll() is None, f"pushgateway exited with code {gateway.returncode}"
            urllib.request.urlopen(f"{url}/-/ready", timeout=1).close()
            return True

        wait_until("the pushgateway to be ready", ready, timeout=15, interval=0.1, ignore=(OSError,))
        push_pipeline_metrics(url, **RUN)
        second = RUN | {"rows_rejected": {"empty_field": 1}, "events_read": 11, "events_processed": 10}
        push_pipeline_metrics(url, **second)
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
            text = response.read().decode()
        pushed = {k: v for k, v in samples(text).items() if k.startswith("music_analytics_client_")}
        (finished,) = pushed["music_analytics_client_last_run_timestamp_seconds"].values()
        assert pushed == expected(second, finished)
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name.startswith("music_analytics_client_"):
                    assert sample.labels["job"] == "music-analytics-client"
    finally:
        gateway.send_signal(signal.SIGTERM)
        try:
            gateway.wait(10)
        except subprocess.TimeoutExpired:
            gateway.kill()
            gateway.wait()
