"""The client pipeline's own metrics, pushed to a Prometheus Pushgateway.

The pipeline runs as a batch job (a Kubernetes Job on the cluster) that usually ends before
Prometheus would scrape it, so it pushes its totals once, at the end of a run. Each push replaces
every metric of its grouping key (HTTP PUT), so the gateway always holds the last run's numbers.

Prometheus must scrape the Pushgateway with ``honor_labels: true`` (ServiceMonitor
``honorLabels: true``), otherwise the pushed ``job`` label becomes ``exported_job``.

Metrics (names match the dashboards and charts/music-analytics/files/prometheus-rules.yaml):

- ``music_analytics_client_events_read_total``: rows read from the input.
- ``music_analytics_client_rows_rejected_total{reason}``: rows left out as invalid, by reason.
- ``music_analytics_client_events_processed_total``: events sent to the services and aggregated.
- ``music_analytics_client_stage_duration_seconds{stage}``: wall time of each stage of the run
  (``mapreduce``, ``userbehavior``, ``recommendation``, ``total``).
- ``music_analytics_client_last_run_timestamp_seconds``: when the run finished (Unix time).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping

from prometheus_client import CollectorRegistry, push_to_gateway
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = [
    "DEFAULT_JOB",
    "PushgatewayError",
    "pipeline_registry",
    "push_pipeline_metrics",
]

DEFAULT_JOB = "music-analytics-client"
PUSH_TIMEOUT_SECONDS = 10.0


class PushgatewayError(RuntimeError):
    """The metrics could not be pushed. The run's results are unaffected; warn and carry on."""


class _PipelineCollector(Collector):
    """Yields the metric families of one finished run, exactly as given.

    A custom collector rather than Counter/Gauge objects: no ``_created`` series are pushed
    (they would be a second, meaningless gauge per counter on the gateway), and the values are
    set, not accumulated.
    """

    def __init__(
        self,
        *,
        events_read: int,
        rows_rejected: Mapping[str, int],
        stage_seconds: Mapping[str, float],
        events_processed: int,
        finished_at: float,
    ) -> None:
        self._events_read = events_read
        self._rows_rejected = dict(rows_rejected)
        self._stage_seconds = dict(stage_seconds)
        self._events_processed = events_processed
        self._finished_at = finished_at

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "music_analytics_client_events_read",
            "Rows read from the input by the last pipeline run.",
            value=self._events_read,
        )
        rejected = CounterMetricFamily(
            "music_analytics_client_rows_rejected",
            "Input rows left out as invalid by the last pipeline run, by reason.",
            labels=("reason",),
        )
        for reason, count in sorted(self._rows_rejected.items()):
            rejected.add_metric((reason,), count)
        yield rejected
        yield CounterMetricFamily(
            "music_analytics_client_events_processed",
            "Events the last pipeline run sent to the services and had aggregated.",
            value=self._events_processed,
        )
        stages = GaugeMetricFamily(
            "music_analytics_client_stage_duration_seconds",
            "Wall time of each stage of the last pipeline run, in seconds.",
            labels=("stage",),
        )
        for stage, seconds in sorted(self._stage_seconds.items()):
            stages.add_metric((stage,), seconds)
        yield stages
        yield GaugeMetricFamily(
            "music_analytics_client_last_run_timestamp_seconds",
            "Unix time at which the last pipeline run finished.",
            value=self._finished_at,
        )


def _check_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")


def pipeline_registry(
    *,
    events_read: int,
    rows_rejected: Mapping[str, int],
    stage_seconds: Mapping[str, float],
    events_processed: int,
    finished_at: float | None = None,
) -> CollectorRegistry:
    """A registry holding one run's metrics (what ``push_pipeline_metrics`` sends).

    Raises ValueError for negative or non-integer counts, empty label values and durations that
    are negative or not finite.
    """
    _check_count("events_read", events_read)
    _check_count("events_processed", events_processed)
    for reason, count in rows_rejected.items():
        if not reason:
            raise ValueError("rows_rejected: a reason must be a non-empty string")
        _check_count(f"rows_rejected[{reason!r}]", count)
    for stage, seconds in stage_seconds.items():
        if not stage:
            raise ValueError("stage_seconds: a stage must be a non-empty string")
        if not isinstance(seconds, int | float) or not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"stage_seconds[{stage!r}] must be a finite number >= 0, got {seconds!r}")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(
        _PipelineCollector(
            events_read=events_read,
            rows_rejected=rows_rejected,
            stage_seconds=stage_seconds,
            events_processed=events_processed,
            finished_at=time.time() if finished_at is None else finished_at,
        )
    )
    return registry


def push_pipeline_metrics(
    gateway_url: str,
    *,
    events_read: int,
    rows_rejected: Mapping[str, int],
    stage_seconds: Mapping[str, float],
    events_processed: int,
    job: str = DEFAULT_JOB,
    grouping: Mapping[str, str] | None = None,
) -> None:
    """Push one finished run's metrics to the Pushgateway at ``gateway_url``.

    ``gateway_url`` is ``http://host:port`` (or ``host:port``). The push replaces the metrics
    previously pushed under the same ``job`` and ``grouping`` labels. Pass every rejection
    reason the client knows, with 0 for those that did not occur, so the dashboards show zeros
    rather than "No data".

    Raises ValueError for invalid arguments, and PushgatewayError when the gateway cannot be
    reached or refuses the push.
    """
    if not gateway_url:
        raise ValueError("gateway_url must be the Pushgateway's address, e.g. http://pushgateway:9091")
    if not job:
        raise ValueError("job must be a non-empty string")
    registry = pipeline_registry(
        events_read=events_read,
        rows_rejected=rows_rejected,
        stage_seconds=stage_seconds,
        events_processed=events_processed,
    )
    try:
        push_to_gateway(
            gateway_url,
            job=job,
            registry=registry,
            grouping_key=dict(grouping or {}),
            timeout=PUSH_TIMEOUT_SECONDS,
        )
    except Exception as exc:  # urllib raises URLError, HTTPError, OSError, ValueError, timeouts
        raise PushgatewayError(
            f"could not push the client metrics to the Pushgateway at {gateway_url} (job {job!r}): "
            f"{exc}. Check the --pushgateway URL and that the gateway is reachable; "
            "the run's results are not affected."
        ) from exc
