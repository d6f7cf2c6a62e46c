"""Reading a service's /metrics the way Prometheus does, for assertions on counters."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from music_analytics.client.demo import ServiceProcess


def scrape(process: ServiceProcess) -> dict[tuple[str, tuple], float]:
    """Every sample of the service's /metrics, by (name, sorted labels)."""
    body = urllib.request.urlopen(f"http://{process.host}:{process.metrics_port}/metrics", timeout=10).read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)
