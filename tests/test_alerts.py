"""The alerting rules: valid for Prometheus, unit-tested with `promtool test rules`, portable."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import require_binary

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "charts" / "music-analytics" / "files" / "prometheus-rules.yaml"
PROMTOOL_TESTS = sorted((ROOT / "tests" / "promtool").glob("*.yaml"))
REQUIRED = {  # what the alerts must cover, by the alert that covers it
    "service down": "MusicAnalyticsServiceDown",
    "error ratio": "MusicAnalyticsHighErrorRatio",
    "p95 latency": "MusicAnalyticsHighLatency",
    "calls refused as bad input": "MusicAnalyticsCallsRejected",
    "calls refused over a service's limits": "MusicAnalyticsCallsOverLimit",
}


def rules() -> list[dict]:
    document = yaml.safe_load(RULES.read_text())
    assert list(document) == ["groups"], "a plain rules file: `groups:` only (the chart wraps it)"
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_promtool_check_rules() -> None:
    checked = subprocess.run([require_binary("promtool"), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rules())} rules found" in checked.stdout


@pytest.mark.parametrize("test_file", PROMTOOL_TESTS, ids=[p.name for p in PROMTOOL_TESTS])
def test_promtool_test_rules(test_file: Path) -> None:
    checked = subprocess.run(
        [require_binary("promtool"), "test", "rules", test_file.name],
        capture_output=True, text=True, cwd=test_file.parent,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout


def test_every_alert_has_firing_and_quiet_unit_tests() -> None:
    fires: set[str] = set()
    quiet: set[str] = set()
    for path in PROMTOOL_TESTS:
        document = yaml.safe_load(path.read_text())
        assert RULES.resolve() in [(path.parent / f).resolve() for f in document["rule_files"]]
        for case in document["tests"]:
            for check in case.get("alert_rule_test", []):
                (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    alerts = {rule["alert"] for rule in rules() if "alert" in rule}
    assert set(REQUIRED.values()) <= alerts
    assert not alerts - fires, f"alerts never shown firing in a unit test: {sorted(alerts - fires)}"
    assert not alerts - quiet, f"alerts never shown quiet in a unit test: {sorted(alerts - quiet)}"


def test_rules_are_documented_and_portable() -> None:
    for rule in rules():
        name = rule["alert"]
        assert re.fullmatch(r"MusicAnalytics[A-Z]\w+", name), name
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
        # The job label is the Service name under a ServiceMonitor and anything under plain
        # Prometheus: select on metric names and on the labels our metrics carry.
        assert not re.search(r"\bjob\s*(=|!=|=~|!~)", rule["expr"]), name
        if "for" in rule:
            assert re.fullmatch(r"\d+[smh]", rule["for"]), name
