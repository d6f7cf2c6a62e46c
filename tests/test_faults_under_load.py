"""Faults under load: replicas killed and terminated while many pipelines share the services.

Two replicas of each service run as real processes. Several pipelines run at once against them;
while they stream, one MapReduce replica is SIGKILLed and one UserBehavior replica SIGTERMed.
Every pipeline must end with results equal to the DuckDB oracle, or exit 1 with an error naming
the service; no other service process may crash; every live replica must answer its health
check within a second all along. Then many more pipelines run against the surviving replicas
and replacements of the lost ones, and no service process may grow: its resident memory at the
end (the lower of the last two waves of runs) must be within 10% of what it was after the first
runs (the higher of the waves ending at runs 5 and 10).

The scenario runs once (a module fixture); each test checks one of those promises. Figures go
to build/faults-under-load/report.json and a one-line summary is printed (pytest -s) and ends
every failure message. The sizes can be raised for a longer run: MUSIC_ANALYTICS_FAULTS_EVENTS,
_PIPELINES (at once, under the faults), _RUNS (the memory check's runs), _WAVE (how many of
those at once).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from music_analytics.client.demo import ServiceProcess, free_port, start_service
from music_analytics.services.common.contract import SERVICES
from tests.conftest import BIN, ROOT, cli
from tests.oracle import first_difference, oracle, oracle_stats
from tests.support.metrics import scrape, value
from tests.support.oracle_match import oracle_mismatches
from tests.support.service_watch import HealthProber, rss_kib
from tests.support.waiting import wait_until

EVENTS = int(os.environ.get("MUSIC_ANALYTICS_FAULTS_EVENTS", "150000"))
PIPELINES = int(os.environ.get("MUSIC_ANALYTICS_FAULTS_PIPELINES", "8"))
MEMORY_RUNS = int(os.environ.get("MUSIC_ANALYTICS_FAULTS_RUNS", "50"))
MEMORY_WAVE = int(os.environ.get("MUSIC_ANALYTICS_FAULTS_WAVE", "5"))
# Memory is compared from here on: the first runs warm a process up (thread pool, allocator
# arenas), after which a leak is what makes it grow. A process's RSS between calls also moves
# with what the allocators keep of the last calls, in which threads (measured on UserBehavior:
# from one wave to the next by up to 10%, with no trend over 150 runs): so the baseline is the
# higher of two waves and the end the lower of two. A leak raises both; that noise does not.
RSS_BASELINE_RUN = 5
RSS_TOLERANCE = 0.10
REPLICAS = 2
KILLED, TERMINATED = "mapreduce-0", "userbehavior-1"
# Short, so the test is quick, but not zero: the terminated replica goes through the whole
# graceful path (NOT_SERVING, delay, drain) as in a cluster.
SHUTDOWN_DELAY_SECONDS = 0.5
STOP_TIMEOUT_SECONDS = 60
INFLIGHT = "music_analytics_inflight_streams"
REPORT = ROOT / "build" / "faults-under-load" / "report.json"
SERVICE_NAMES = tuple(SERVICES)


@dataclass
class Fleet:
    """The service processes by replica name ("mapreduce-0"), logging to ``log_dir``."""

    log_dir: Path
    replicas: dict[str, ServiceProcess] = field(default_factory=dict)
    signalled: dict[str, str] = field(default_factory=dict)  # replica -> signal name

    def start(self, name: str, prober: HealthProber) -> str:
        replica = f"{name}-{sum(p.name == name for p in self.replicas.values())}"
        process = start_service(name, self.log_dir / f"{replica}.log", shutdown_delay=SHUTDOWN_DELAY_SECONDS)
        self.replicas[replica] = process
        process.wait_serving()
        prober.watch(replica, process.address, SERVICES[name].full_name)
        return replica

    def live(self, name: str | None = None) -> dict[str, ServiceProcess]:
        return {
            r: p
            for r, p in self.replicas.items()
            if r not in self.signalled and (name is None or p.name == name)
        }  # fmt: skip

    def targets(self) -> dict[str, str]:
        """Every service's live replicas, as the client's ``ipv4:`` target."""
        return {name: "ipv4:" + ",".join(p.address for p in self.live(name).values()) for name in SERVICE_NAMES}

    def signal(self, replica: str, signum: signal.Signals, prober: HealthProber) -> None:
        prober.exclude(replica)
        self.signalled[replica] = signum.name
        self.replicas[replica].process.send_signal(signum)

    def inflight(self, replica: str) -> float:
        process = self.replicas[replica]
        return value(scrape(process), INFLIGHT, service=process.name)

    def stop_all(self) -> dict[str, int | None]:
        """SIGTERM once to every process still running, then each one's exit code (None: it did
        not exit in time and was killed). Once: a second SIGTERM that lands while the
        interpreter is exiting ends the process by the signal, which is not what is tested."""
        running = [p for p in self.replicas.values() if p.process.poll() is None]
        for process in running:
            process.process.send_signal(signal.SIGTERM)
        codes: dict[str, int | None] = {}
        for replica, process in self.replicas.items():
            try:
                codes[replica] = process.process.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                process.process.kill()
                process.process.wait()
                codes[replica] = None
        return codes


@dataclass
class Pipeline:
    name: str  # "load-3", "run-17"
    process: subprocess.Popen
    out: Path
    stderr_path: Path
    outcome: str = ""  # "exact", "clear error", or what was wrong
    recoveries: dict[str, int] = field(default_factory=dict)


def start_pipeline(name: str, data: Path, targets: dict[str, str], work: Path, *extra: str) -> Pipeline:
    """``music-analytics run`` against ``targets`` (by service), its output files named ``name``."""
    out, err = work / f"{name}.json", work / f"{name}.stderr"
    with err.open("wb") as stderr:
        process = subprocess.Popen(
            [str(BIN / "music-analytics"), "run", "--data", str(data), "--out", str(out), "--quiet",
             *(arg for service in SERVICE_NAMES for arg in (f"--{service}", targets[service])), *extra],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr,
        )  # fmt: skip
    return Pipeline(name, process, out, err)


def judge(pipeline: Pipeline, expected: dict, may_fail: bool, stats: dict | None = None) -> None:
    """Set ``pipeline.outcome`` once it has exited: "exact" (exit 0, results equal the oracle, and
    with ``stats`` the time statistics and every per-user line too),
    "clear error" (when ``may_fail``: exit 1, the last stderr line an error naming a service, no
    traceback), or what is wrong."""
    code = pipeline.process.wait()
    stderr = pipeline.stderr_path.read_text(errors="replace").strip()
    if code == 0:
        results = json.loads(pipeline.out.read_text())
        pipeline.recoveries = results["replica_recoveries"]
        differences = oracle_mismatches(results, expected)
        if stats is not None:
            lines = [json.loads(line) for line in Path(results["user_stats"]["path"]).read_text().splitlines()]
            for what, got, want in (
                ("listening_stats", results["listening_stats"], stats["listening_stats"]),
                ("per-user lines", lines, stats["user_lines"]),
            ):
                if (difference := first_difference(got, want, what)) is not None:
                    differences.append(difference)
        pipeline.outcome = "exact" if not differences else f"exit 0 but wrong: {'; '.join(differences)}"
        return
    last = stderr.splitlines()[-1] if stderr else ""
    names_service = last.startswith("error: ") and any(name in last for name in SERVICE_NAMES)
    if code == 1 and may_fail and names_service and "Traceback" not in stderr:
        pipeline.outcome = "clear error"
        return
    pipeline.outcome = f"exit {code}, stderr: {stderr[-600:]!r}"


def finish(pipelines: list[Pipeline], timeout: float) -> None:
    """Wait for every pipeline; any still running after ``timeout`` seconds is killed."""
    deadline = time.monotonic() + timeout
    try:
        for p in pipelines:
            p.process.wait(max(deadline - time.monotonic(), 0.1))
    finally:
        for p in pipelines:
            if p.process.poll() is None:
                p.process.kill()
                p.process.wait()


def wait_streaming(fleet: Fleet, replica: str, streams: int, pipelines: list[Pipeline]) -> float:
    """Wait until ``replica`` serves ``streams`` calls at once; returns how many it serves."""
    seen = 0.0

    def enough() -> bool:
        nonlocal seen
        for p in pipelines:
            if p.process.poll() is not None:
                stderr = p.stderr_path.read_text(errors="replace").strip()[-600:]
                raise AssertionError(
                    f"{p.name} ended (exit {p.process.returncode}, stderr {stderr!r}) before {replica} had "
                    f"{streams} streams in flight (most seen: {seen:g}); a fault must land while all run "
                    "(if they are just too quick, raise MUSIC_ANALYTICS_FAULTS_EVENTS)"
                )
        seen = max(seen, fleet.inflight(replica))
        return seen >= streams

    wait_until(f"{replica} to serve {streams} streams", enough, 120, interval=0.01)
    return seen


def settled_rss(fleet: Fleet) -> dict[str, int]:
    """Each live replica's RSS (KiB), once no call is in flight on any (a finished client's call
    may still be unwinding on the server)."""
    wait_until("every call to end", lambda: all(fleet.inflight(r) == 0 for r in fleet.live()), 30, interval=0.05)
    return {replica: rss_kib(process.process.pid) for replica, process in fleet.live().items()}


def waves(first: int, last: int, size: int) -> list[range]:
    return [range(start, min(start + size, last + 1)) for start in range(first, last + 1, size)]


@dataclass
class Scenario:
    report: dict
    problems: dict[str, list[str]]  # by promise: results, processes, health, memory
    summary: str


def load_phase(
    fleet: Fleet, prober: HealthProber, data: Path, work: Path, expected: dict, stats: dict, s: Scenario
) -> None:
    """Every pipeline streams to every replica; one replica is killed outright and another
    told to stop while they do. Each signal waits until half the pipelines stream to it."""
    started = time.monotonic()
    load = [start_pipeline(f"load-{n}", data, fleet.targets(), work) for n in range(1, PIPELINES + 1)]
    faults = []
    try:
        for replica, signum in ((KILLED, signal.SIGKILL), (TERMINATED, signal.SIGTERM)):
            streams = wait_streaming(fleet, replica, max(1, PIPELINES // 2), load)
            fleet.signal(replica, signum, prober)
            faults.append({"replica": replica, "signal": signum.name, "streams_in_flight": streams,
                           "seconds_into_phase": round(time.monotonic() - started, 2)})  # fmt: skip
    finally:
        finish(load, 300)
    # Through the faults, the per-user statistics too: a lost shard's answer is started over.
    for p in load:
        judge(p, expected, may_fail=True, stats=stats)
    try:
        terminated_code: int | None = fleet.replicas[TERMINATED].process.wait(STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        terminated_code = None  # stop_all kills it
    # The calls it had to drain, as it logged them when the signal came.
    draining = [
        json.loads(line)["in_flight"]
        for line in fleet.replicas[TERMINATED].log_path.read_text(errors="replace").splitlines()
        if '"message": "shutting down"' in line
    ]
    outcomes = [p.outcome for p in load]
    s.report["under_faults"] = {
        "pipelines": len(load),
        "exact": outcomes.count("exact"),
        "clear_error": outcomes.count("clear error"),
        "faults": faults,
        "outcomes": {p.name: p.outcome for p in load},
        "shards_rebuilt": {p.name: p.recoveries for p in load},
        "terminated_replica_exit_code": terminated_code,
        "terminated_replica_calls_drained": draining[0] if draining else None,
        "health_checks_made": prober.checks,
        "seconds": round(time.monotonic() - started, 1),
    }
    s.problems["results"] += [f"{p.name}: {p.outcome}" for p in load if p.outcome not in ("exact", "clear error")]
    if not any(p.recoveries.get("mapreduce") for p in load):
        s.problems["results"].append(f"no pipeline rebuilt a MapReduce shard: the kill of {KILLED} missed every run")
    if terminated_code is None:
        # Whether it got as far as "stopped" tells a signal never handled from an exit that stalled.
        tail = fleet.replicas[TERMINATED].log_path.read_text(errors="replace").splitlines()[-80:]
        s.problems["processes"].append(f"{TERMINATED} still running {STOP_TIMEOUT_SECONDS}s after SIGTERM; "
                                       "the end of its log:\n" + "\n".join(tail))  # fmt: skip
    elif terminated_code != 0:
        s.problems["processes"].append(f"{TERMINATED} exited {terminated_code} after one SIGTERM, not 0")
    died = {r: p.process.returncode for r, p in fleet.live().items() if p.process.poll() is not None}
    if died:
        s.problems["processes"].append(f"service processes died under load: {died}")


def memory_phase(fleet: Fleet, prober: HealthProber, data: Path, work: Path, expected: dict, s: Scenario) -> None:
    """Replacements for the two lost replicas, then many fault-free runs, ``MEMORY_WAVE`` at once;
    RSS is read after run ``RSS_BASELINE_RUN`` and after the last, with no call in flight."""
    started = time.monotonic()
    for name in (fleet.replicas[KILLED].name, fleet.replicas[TERMINATED].name):
        fleet.start(name, prober)
    rss: dict[int, dict[str, int]] = {}
    runs: list[Pipeline] = []
    for numbers in waves(1, RSS_BASELINE_RUN, MEMORY_WAVE) + waves(RSS_BASELINE_RUN + 1, MEMORY_RUNS, MEMORY_WAVE):
        wave = [start_pipeline(f"run-{n}", data, fleet.targets(), work) for n in numbers]
        finish(wave, 180)
        for p in wave:
            judge(p, expected, may_fail=False)
        runs += wave
        if numbers[-1] >= RSS_BASELINE_RUN:
            rss[numbers[-1]] = settled_rss(fleet)
    s.problems["results"] += [f"{p.name}: {p.outcome}" for p in runs if p.outcome != "exact"]
    ends = sorted(rss)
    first, last = ends[:2], ends[-2:]
    before = {r: max(rss[n][r] for n in first) for r in rss[ends[-1]]}
    after = {r: min(rss[n][r] for n in last) for r in rss[ends[-1]]}
    s.report["memory"] = {
        "runs": len(runs),
        "at_once": MEMORY_WAVE,
        "baseline_run": RSS_BASELINE_RUN,
        "exact": sum(p.outcome == "exact" for p in runs),
        "seconds": round(time.monotonic() - started, 1),
        "rss_kib": {
            r: {"after_baseline": before[r], "after_last": after[r], "growth": round(after[r] / before[r] - 1, 4)}
            for r in after
        },
    }
    s.problems["memory"] += [
        f"{r}: RSS {before[r]} KiB after runs {first[0]}-{first[-1]} (the higher), {after[r]} KiB after runs "
        f"{last[0]}-{last[-1]} (the lower): {after[r] / before[r] - 1:+.1%}, grown by more than {RSS_TOLERANCE:.0%}"
        for r in after
        if after[r] / before[r] - 1 > RSS_TOLERANCE
    ]


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    assert MEMORY_RUNS > RSS_BASELINE_RUN, f"MUSIC_ANALYTICS_FAULTS_RUNS must be more than {RSS_BASELINE_RUN}"
    started = time.monotonic()
    root = tmp_path_factory.mktemp("faults-under-load")
    data, work = root / f"events-{EVENTS}.csv", root / "runs"
    work.mkdir()
    proc = cli("generate", "--events", str(EVENTS), "--seed", "17", "--out", str(data))
    assert proc.returncode == 0, proc.stderr
    expected = oracle(data)
    stats = oracle_stats(data)
    s = Scenario(
        report={"events_per_pipeline": EVENTS, "replicas_per_service": REPLICAS},
        problems={"results": [], "processes": [], "health": [], "memory": []},
        summary="",
    )
    fleet = Fleet(root)
    # Health is probed from the first replica's start to the last run's end.
    prober = HealthProber(period=0.25, deadline=1.0)
    try:
        for name in SERVICE_NAMES:
            for _ in range(REPLICAS):
                fleet.start(name, prober)
        load_phase(fleet, prober, data, work, expected, stats, s)
        memory_phase(fleet, prober, data, work, expected, s)
    finally:
        prober.stop()
        exit_codes = fleet.stop_all()

    for replica, code in exit_codes.items():
        if code is None:
            s.problems["processes"].append(f"{replica} still running {STOP_TIMEOUT_SECONDS}s after SIGTERM: killed")
        elif fleet.signalled.get(replica) != "SIGKILL" and code != 0:
            s.problems["processes"].append(f"{replica} exited {code} after SIGTERM, not 0")
        log = fleet.replicas[replica].log_path.read_text(errors="replace")
        if "Traceback" in log:
            s.problems["processes"].append(f"{replica}'s log has a traceback: {log[log.index('Traceback') :][:800]!r}")
    s.problems["health"] += [f"{f.replica} at {f.seconds}s: {f.error}" for f in prober.failures]
    signals = list(fleet.signalled.values())
    s.report.update(
        pipelines_run=s.report["under_faults"]["pipelines"] + s.report["memory"]["runs"],
        faults_survived={"SIGKILL": signals.count("SIGKILL"), "SIGTERM": signals.count("SIGTERM")},
        health_checks={"made": prober.checks, "failed": len(prober.failures), "slowest_seconds": prober.slowest()},
        service_exit_codes=exit_codes,
        duration_seconds=round(time.monotonic() - started, 1),
        problems=s.problems,
    )
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps(s.report, indent=2) + "\n")
    under, memory = s.report["under_faults"], s.report["memory"]
    growth = ", ".join(f"{r} {v['growth']:+.1%}" for r, v in memory["rss_kib"].items())
    s.summary = (
        f"faults under load: {s.report['pipelines_run']} pipelines; {under['pipelines']} at once through a SIGKILL "
        f"and a SIGTERM: {under['exact']} exact, {under['clear_error']} clear errors; {memory['runs']} more: "
        f"{memory['exact']} exact; health {prober.checks} checks, {len(prober.failures)} failed; RSS run "
        f"{RSS_BASELINE_RUN} to {MEMORY_RUNS}: {growth}; {s.report['duration_seconds']}s "
        f"({REPORT.relative_to(ROOT)})"
    )
    print("\n" + s.summary)
    return s


def test_every_pipeline_is_exact_or_names_the_failed_service(scenario: Scenario) -> None:
    assert not scenario.problems["results"], "\n".join([*scenario.problems["results"], scenario.summary])


def test_no_service_process_crashes_and_the_terminated_one_exits_0(scenario: Scenario) -> None:
    assert not scenario.problems["processes"], "\n".join([*scenario.problems["processes"], scenario.summary])


def test_every_live_replica_answers_health_within_a_second_throughout(scenario: Scenario) -> None:
    assert scenario.report["health_checks"]["made"] > 0
    assert not scenario.problems["health"], "\n".join([*scenario.problems["health"], scenario.summary])


def test_service_memory_after_many_runs_is_within_10_percent_of_after_five(scenario: Scenario) -> None:
    assert not scenario.problems["memory"], "\n".join([*scenario.problems["memory"], scenario.summary])


def test_a_run_that_cannot_reach_its_services_is_a_clear_error_only_where_one_is_allowed(tmp_path: Path) -> None:
    """The judge of the runs above, against the real CLI: exit 1 naming the service is accepted
    under faults and nowhere else."""
    data = tmp_path / "events.csv"
    data.write_text("user_id,song_id,artist,duration,timestamp\nu1,s1,a1,10,2026-01-01T00:00:00Z\n")
    nothing_there = f"127.0.0.1:{free_port()}"
    run = start_pipeline("unreachable", data, dict.fromkeys(SERVICE_NAMES, nothing_there), tmp_path,
                         "--wait-ready", "0.5")  # fmt: skip
    finish([run], 60)
    judge(run, {}, may_fail=True)
    assert run.outcome == "clear error", run.outcome
    judge(run, {}, may_fail=False)
    assert run.outcome.startswith("exit 1, stderr: 'error: mapreduce: not serving"), run.outcome
