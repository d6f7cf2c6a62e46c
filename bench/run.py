"""The benchmark: the full pipeline against DuckDB on the same generated CSV, side by side.

For each size it generates (and caches, under ``--data-dir``) the events with the project's generator.
For each replica count it starts the three services as separate processes and waits until they are
SERVING, then, ``--repeats`` times and alternating so both sides see the same machine noise:

* the pipeline: ``music-analytics run`` as its own process, wall time of that process;
* DuckDB: ``tests/oracle.py`` (the same analytics in SQL, 2 threads) as its own process.

Both compute the time statistics too, in ``--timezone``: the pipeline's ``listening_stats`` and its
per-user JSON Lines (``--user-stats``; the pipeline always writes them), DuckDB's the same in SQL,
its lines written by ``COPY``. The pipeline run compared with DuckDB has no personalized artists
(``--personalized-n 0``: DuckDB has no model); each repeat also runs the pipeline with them, and the
table shows what they add to the wall time (the recommender's budget is 30%).

Every pipeline result is compared with DuckDB's, key for key, and every per-user line with
DuckDB's line for the same user. Peak RSS comes from the kernel: ``wait4``
rusage for the client and DuckDB processes, ``VmHWM`` in ``/proc/PID/status`` for the long-running
services (read just before they are stopped, so it covers every repeat of that configuration).
CPU seconds (user + system) come from the same ``wait4`` rusage for the client and DuckDB, and from
``/proc/PID/stat`` for the services, read before and after each pipeline run. Between consecutive
sizes, the growth of the time per event is recorded for both sides (linear cost: a ratio near 1).

Before any work, the free disk is checked against what the sizes will write (the generated CSV
when it is not cached yet, the outputs, the services' and DuckDB's spill files); again before
generating each size and before running it. Too little: exit code 2 and a message saying where.

    python bench/run.py [--sizes 1000000,10000000] [--repeats 3] [--replicas 1,2] [--timezone Z] [--quick]

prints a table and writes ``bench/results.json``. Exit code 0 when every run succeeded and matched.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from music_analytics.client.demo import LocalServices
from music_analytics.client.generate import FORMAT_VERSION, _cardinalities, generate

ROOT = Path(__file__).resolve().parent.parent
# The benchmark runs from a checkout (`make bench`): the oracle is the test suite's. Fall back to the
# working directory in case this file was imported from an installed copy.
ORACLE = next((p for p in (ROOT / "tests" / "oracle.py", Path.cwd() / "tests" / "oracle.py") if p.exists()), None)
DEFAULT_DATA_DIR = ROOT / "bench" / "data"
DEFAULT_OUT = ROOT / "bench" / "results.json"

# The targets: pipeline wall time at most this many times DuckDB's (the 1M run includes the
# services' and the client's start-up), peak RSS per process of ours.
RATIO_TARGETS = {1_000_000: 1.15, 10_000_000: 1.15, 100_000_000: 1.5}
RSS_TARGET_MB = 600
# Above this size the services spill to disk instead of holding everything: a larger but fixed bar.
RSS_TARGET_LARGE_MB = 1024
RSS_LARGE_ABOVE_EVENTS = 10_000_000
# Linear cost: the pipeline's seconds per event at the larger size over that at the smaller one.
GROWTH_TARGETS = {(10_000_000, 100_000_000): 1.3}
# What training the recommender and scoring every user may add to the pipeline's wall time.
PERSONALIZED_OVERHEAD_TARGET = 0.30
# Keys of the per-user lines that come from the model, which DuckDB's lines do not have.
PERSONALIZED_KEYS = ("recommended_artists", "recommended_by")
QUICK_SIZE = 100_000
# A zone with an offset, so that local time is really computed (UTC could take a shortcut).
DEFAULT_TIMEZONE = "Europe/Berlin"

# What a size writes to disk, with margins over what was measured. The generated CSV: 59.96 bytes
# per event at 1M events, 61.25 at 10M, 62.48 at 100M (the ids get longer).
CSV_BYTES_PER_EVENT = 70
# One repeat's outputs of one configuration, per user: the results JSON of the pipeline, of the
# pipeline with recommendations and of DuckDB, and their three per-user JSON Lines files. The lines
# dominate and grow with a user's events (daily activity fills up to 168 cells): 8.3 KB in all at
# 1M events; 12.9 KB at 100M (DuckDB's lines 3.9 KB a user, its JSON 0.23 KB, the pipeline's the
# same, plus 0.5 KB of recommended artists).
OUTPUT_BYTES_PER_USER = 16_000
# The services' spill files, in the temporary directory (TMPDIR).
SERVICE_SPILL_BYTES_PER_EVENT = 25
# DuckDB keeps its working set in memory up to its limit, 80% of the machine's by default, and
# spills the rest to ``.tmp`` in its working directory (the bench runs it in the work dir).
DUCKDB_WORKING_BYTES_PER_EVENT = 300
DUCKDB_MEMORY_FRACTION = 0.8


@dataclass
class ProcessRun:
    wall: float
    peak_rss_mb: float
    cpu_seconds: float  # user + system
    returncode: int
    stderr_tail: str


# Starts the measured command and reports its rusage. Linux counts the RSS a process had when
# it was forked in its ``ru_maxrss``, even across exec: a command forked from the benchmark
# (hundreds of MB of results held for comparison) would report the benchmark's size. Forked from
# this small launcher instead, it inherits a few MB at most.
_LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
print(usage.ru_maxrss, usage.ru_utime + usage.ru_stime, file=open(sys.argv[0], "w"))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_process(cmd: list[str], log: Path, cwd: Path | None = None) -> ProcessRun:
    """Run ``cmd`` to completion; wall time, peak RSS and CPU time of that one process (not the
    bench's other children). Output goes to ``log`` so a pipe never blocks the child."""
    rss_file = log.with_suffix(".rusage")
    with log.open("wb") as out:
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-S", "-c", _LAUNCHER.replace("sys.argv[0]", repr(str(rss_file))), *cmd],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=False, cwd=cwd,
        )  # fmt: skip
        wall = time.perf_counter() - start
    tail = log.read_text(errors="replace")[-3000:] if proc.returncode else ""
    peak_kib, cpu = rss_file.read_text().split() if rss_file.exists() else ("0", "0")
    return ProcessRun(wall, int(peak_kib) / 1024, float(cpu), proc.returncode, tail)  # ru_maxrss: KiB


def vm_hwm_mb(pid: int) -> float | None:
    """Peak resident set of a live process so far (Linux ``VmHWM``)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """CPU time a live process has used so far, user + system, its threads' and reaped children's
    included (``/proc/PID/stat``)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: count the fields after its ")".
    # utime, stime, cutime, cstime are fields 14 to 17; the first after ")" is field 3.
    fields = text.rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / CLOCK_TICKS


def services_cpu_seconds(services: LocalServices) -> dict[str, float | None]:
    return {
        f"{name}-{k}": cpu_seconds(proc.process.pid)
        for name, group in services.processes.items()
        for k, proc in enumerate(group)
    }


def cpu_used(before: dict[str, float | None], after: dict[str, float | None]) -> dict[str, float]:
    """Each service's CPU seconds between two readings (the services outlive the runs)."""
    return {k: after[k] - v for k, v in before.items() if v is not None and after.get(k) is not None}


def dataset(data_dir: Path, events: int, seed: int) -> tuple[Path, float | None]:
    """The cached CSV for (events, seed, generator version); generated when missing."""
    path = dataset_path(data_dir, events, seed)
    if path.exists():
        return path, None
    print(f"generating {events:,} events -> {path}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    generate(path, events, seed)
    return path, time.perf_counter() - start


@dataclass(frozen=True)
class DiskNeed:
    """Space the benchmark will take in one directory: ``kept`` until the end, or only for the
    duration of one size's runs (spill files, outputs deleted once compared)."""

    what: str
    directory: Path
    bytes: int
    kept: bool


def dataset_path(data_dir: Path, events: int, seed: int) -> Path:
    return data_dir / f"events-{events}-seed{seed}-v{FORMAT_VERSION}.csv"


def physical_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def duckdb_spill_bytes(events: int, memory: int | None = None) -> int:
    """What DuckDB spills for ``events``: its working set beyond its memory limit. Measured at 100M
    events on a 25 GB machine (a 20 GB limit): 21.8 GB resident at the peak plus 8.3 GB spilled, 300
    bytes an event in all. This estimates 9.8 GB there: high, as DuckDB's resident memory goes past
    its limit."""
    memory = physical_memory_bytes() if memory is None else memory
    return max(0, DUCKDB_WORKING_BYTES_PER_EVENT * events - int(DUCKDB_MEMORY_FRACTION * memory))


def disk_needs(
    events: int,
    *,
    csv_cached: bool,
    data_dir: Path,
    work_dir: Path,
    temp_dir: Path,
    configurations: int = 1,
    keep_outputs: bool = False,
    memory: int | None = None,
) -> list[DiskNeed]:
    """The disk one size of the benchmark needs, by directory: the generated CSV (``data_dir``,
    only when not ``csv_cached``), one repeat's outputs and DuckDB's spill (``work_dir``), the
    services' spill (``temp_dir``). With ``keep_outputs`` (a ``--work-dir`` given), the last
    repeat's outputs of each of the ``configurations`` stay. Users as the generator makes them."""
    outputs = OUTPUT_BYTES_PER_USER * _cardinalities(events).users
    needs = []
    if not csv_cached:
        needs.append(DiskNeed("the generated CSV", data_dir, CSV_BYTES_PER_EVENT * events, kept=True))
    needs.append(DiskNeed("the outputs of a run", work_dir, outputs, kept=False))
    if keep_outputs:
        needs.append(DiskNeed("the outputs kept", work_dir, outputs * configurations, kept=True))
    needs.append(DiskNeed("DuckDB's spill", work_dir, duckdb_spill_bytes(events, memory), kept=False))
    needs.append(DiskNeed("the services' spill", temp_dir, SERVICE_SPILL_BYTES_PER_EVENT * events, kept=False))
    return [n for n in needs if n.bytes > 0]


def _existing(path: Path) -> Path:
    # A directory the bench has not created yet is on the filesystem of its nearest existing parent.
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def _gb(n: int) -> str:
    return f"{n / 1e9:.1f} GB"


DISK_ADVICE = (
    "Free some space, or point the benchmark at a filesystem with room: --data-dir for the generated "
    "CSV, --work-dir for the outputs and DuckDB's spill, TMPDIR for the services' spill."
)


def disk_shortfalls(
    needs_by_size: dict[int, list[DiskNeed]], free_bytes: Callable[[Path], int] = _free_bytes
) -> list[str]:
    """One message per filesystem without room for ``needs_by_size`` (empty: enough everywhere).

    Needs on one filesystem add up: everything ``kept`` by every size, plus the largest size's
    other needs (spill files and outputs exist only while that size runs). ``free_bytes`` gives a
    directory's free space (``shutil.disk_usage``)."""
    by_device: dict[int, list[tuple[int, DiskNeed]]] = {}
    for events, needs in needs_by_size.items():
        for need in needs:
            by_device.setdefault(os.stat(_existing(need.directory)).st_dev, []).append((events, need))
    problems = []
    for entries in by_device.values():
        sizes = sorted({events for events, _ in entries})
        passing = {e: [n for events, n in entries if events == e and not n.kept] for e in sizes}
        largest = max(sizes, key=lambda e: sum(n.bytes for n in passing[e]))
        counted = [(e, n) for e, n in entries if n.kept] + [(largest, n) for n in passing[largest]]
        needed = sum(n.bytes for _, n in counted)
        free = free_bytes(_existing(entries[0][1].directory))
        if needed <= free:
            continue
        directories = list(dict.fromkeys(str(n.directory) for _, n in entries))
        several = len(directories) > 1
        parts = ", ".join(
            n.what + (f" of {e:,} events" if len(sizes) > 1 else "") + (f" in {n.directory}" if several else "")
            + f" {_gb(n.bytes)}"
            for e, n in counted
        )  # fmt: skip
        problems.append(
            f"not enough disk for the benchmark of {' and '.join(f'{e:,}' for e in sizes)} events: "
            f"{' and '.join(directories)} {'need' if several else 'needs'} {_gb(needed)} ({parts}), "
            f"{'their filesystem has' if several else 'it has'} {_gb(free)} free."
        )
    return problems


def warm_page_cache(path: Path) -> None:
    """Read the file once so that every timed run, the first included, reads it from the page cache."""
    with path.open("rb") as f:
        while f.read(16 << 20):
            pass


def compare(pipeline: dict[str, Any], oracle: dict[str, Any], limit: int = 5) -> list[str]:
    """Differences between the pipeline's results JSON and the oracle's (empty: identical)."""
    problems: list[str] = []

    def check(what: str, got: Any, want: Any) -> None:
        if got != want:
            problems.append(f"{what}: pipeline {_short(got)} != duckdb {_short(want)}")

    check("top_songs", list(pipeline["mapreduce_results"]["top_songs"].items()),
          list(oracle["mapreduce_results"]["top_songs"].items()))  # fmt: skip
    check("distinct_songs", pipeline["mapreduce_results"].get("distinct_songs"),
          oracle["mapreduce_results"]["distinct_songs"])  # fmt: skip
    check("events_processed", pipeline.get("events_processed"), oracle["events_processed"])
    check("rows_rejected", pipeline.get("rows_rejected"), 0)
    # Only the contract's fields: the client may add others to a user's entry.
    fields = ("user_id", "total_time", "top_artist")
    got_users = [{k: u.get(k) for k in fields} for u in pipeline["userbehavior_results"]["users"]]
    want_users = [{k: u[k] for k in fields} for u in oracle["userbehavior_results"]["users"]]
    check("number of users", len(got_users), len(want_users))
    bad = [(g, w) for g, w in zip(got_users, want_users, strict=False) if g != w]
    for g, w in bad[:limit]:
        check("user", g, w)
    if len(bad) > limit:
        problems.append(f"... {len(bad) - limit} more users differ")
    check("top_users", pipeline["userbehavior_results"]["top_users"], oracle["userbehavior_results"]["top_users"])
    got_rec = pipeline["recommendation_results"]
    want_rec = oracle["recommendation_results"]
    check("trending_songs", got_rec["trending_songs"], want_rec["trending_songs"])
    got_r, want_r = got_rec["recommendations"], want_rec["recommendations"]
    check("users with recommendations", len(got_r), len(want_r))
    diff = [u for u in want_r if got_r.get(u) != want_r[u]]
    for u in diff[:limit]:
        check(f"recommendations[{u}]", got_r.get(u), want_r[u])
    if len(diff) > limit:
        problems.append(f"... {len(diff) - limit} more users' recommendations differ")
    return problems


def compare_stats(pipeline: dict[str, Any], oracle: dict[str, Any]) -> list[str]:
    """Differences in the time statistics' section of the results JSON, named down to the entry."""
    got, want = pipeline.get("listening_stats"), oracle["listening_stats"]
    if not isinstance(got, dict):
        return [f"listening_stats: pipeline has {_short(got)}"]
    problems = []
    for key in ("timezone", "first_ts", "last_ts", "top_artists", "daily_activity"):
        if got.get(key) != want[key]:
            problems.append(f"listening_stats.{key}: pipeline {_short(got.get(key))} != duckdb {_short(want[key])}")
    activity = got.get("listening_activity") or {}
    for period, entries in want["listening_activity"].items():
        mine = activity.get(period)
        if mine != entries:
            mine = mine if isinstance(mine, list) else []
            bad = next((i for i, (g, w) in enumerate(zip(mine, entries, strict=False)) if g != w), None)
            if bad is None:
                where = f"pipeline has {len(mine)} entries, duckdb {len(entries)}"
            else:
                where = f"first at [{bad}]: pipeline {_short(mine[bad])} != duckdb {_short(entries[bad])}"
            problems.append(f"listening_stats.listening_activity.{period}: {where}")
    return problems


def compare_user_lines(pipeline: Path, oracle: Path, limit: int = 5) -> tuple[int, list[str]]:
    """Every per-user line of the pipeline's JSON Lines against DuckDB's, both sorted by user_id:
    (lines compared, differences). Streams both files: at 10M events they hold 200,000 users."""
    problems: list[str] = []
    compared = 0
    with pipeline.open(encoding="utf-8") as got_file, oracle.open(encoding="utf-8") as want_file:
        for number, (got_text, want_text) in enumerate(zip(got_file, want_file, strict=False), 1):
            compared += 1
            got, want = json.loads(got_text), json.loads(want_text)
            for key in PERSONALIZED_KEYS:
                got.pop(key, None)
            if got != want:
                if len(problems) < limit:
                    keys = [k for k in want.keys() | got.keys() if got.get(k) != want.get(k)]
                    problems.append(f"user line {number} ({_short(want.get('user_id'))}): {sorted(keys)} differ: "
                                    f"pipeline {_short({k: got.get(k) for k in keys})} != "
                                    f"duckdb {_short({k: want.get(k) for k in keys})}")  # fmt: skip
                else:
                    problems.append("")
        rest_got, rest_want = sum(1 for _ in got_file), sum(1 for _ in want_file)
    shown = [p for p in problems if p]
    if len(problems) > len(shown):
        shown.append(f"... {len(problems) - len(shown)} more user lines differ")
    if rest_got or rest_want:
        shown.append(f"user lines: pipeline has {compared + rest_got}, duckdb {compared + rest_want}")
    return compared, shown


def _short(value: Any, width: int = 200) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= width else text[: width - 3] + "..."


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 4) if values else None


def rss_target_mb(events: int) -> int:
    """The peak RSS each of our processes may reach at ``events``."""
    return RSS_TARGET_MB if events <= RSS_LARGE_ABOVE_EVENTS else RSS_TARGET_LARGE_MB


class DiskSpaceError(RuntimeError):
    """Not enough free disk for a size: the message says where, what is needed and what is free."""


def size_needs(events: int, args: argparse.Namespace) -> list[DiskNeed]:
    """:func:`disk_needs` for one size as ``args`` run it, its CSV counted unless it exists."""
    temp = Path(tempfile.gettempdir())
    return disk_needs(
        events, csv_cached=dataset_path(args.data_dir, events, args.seed).exists(), data_dir=args.data_dir,
        # A temporary work dir is named after the directory it is made in, which outlives it.
        work_dir=args.work_dir or temp, temp_dir=temp,
        configurations=len(args.replicas), keep_outputs=args.work_dir is not None,
    )  # fmt: skip


def check_disk(events: int, args: argparse.Namespace) -> None:
    problems = disk_shortfalls({events: size_needs(events, args)})
    if problems:
        raise DiskSpaceError(" ".join([*problems, DISK_ADVICE]))


def bench_size(events: int, args: argparse.Namespace, work: Path, table: list[dict[str, Any]]) -> dict[str, Any]:
    # Free space may have gone since the check before any work (other sizes' files, other programs):
    # checked again before generating, and before running once the file is there.
    check_disk(events, args)
    path, gen_seconds = dataset(args.data_dir, events, args.seed)
    if gen_seconds is not None:
        check_disk(events, args)
    warm_page_cache(path)
    size: dict[str, Any] = {
        "events": events,
        "file": str(path),
        "file_bytes": path.stat().st_size,
        "generate_seconds": round(gen_seconds, 3) if gen_seconds is not None else None,
        "pipeline": {},
    }
    duck_walls: list[float] = []
    duck_rss: list[float] = []
    duck_ok = True
    for replicas in args.replicas:
        logs = work / f"{events}-r{replicas}"
        logs.mkdir(parents=True, exist_ok=True)
        walls: list[float] = []
        paired_duck: list[float] = []  # DuckDB runs interleaved with this configuration's runs
        run_ratios: list[float] = []
        client_rss: list[float] = []
        stages: dict[str, list[float]] = {}
        mismatches: list[str] = []
        failures: list[str] = []
        lines_compared = 0
        recs_walls: list[float] = []
        recs_skipped: list[str] = []  # why runs asked for personalized artists have none
        train_seconds: list[float] = []
        recs_model: dict[str, Any] = {}
        cpu: dict[str, list[float]] = {}  # per process, the runs without personalized artists
        recs_cpu: dict[str, list[float]] = {}  # and with them
        with LocalServices(replicas=replicas, log_dir=logs) as services:
            target = {name: services.target(name) for name in ("mapreduce", "userbehavior", "recommendation")}
            # Per-address target syntax the client documents, also for one replica.
            target = {k: v if v.startswith("ipv4:") else f"ipv4:{v}" for k, v in target.items()}
            for i in range(args.repeats):
                out = logs / f"pipeline-{i}.json"
                cmd = [sys.executable, "-m", "music_analytics.client", "run", "--data", str(path)]
                for name, addr in target.items():
                    cmd += [f"--{name}", addr]
                duck_out = logs / f"duckdb-{i}.json"
                duck_cmd = [sys.executable, str(ORACLE), str(path), "--out", str(duck_out)]
                duck_cmd += ["--threads", str(args.threads)]
                lines, duck_lines = logs / f"pipeline-{i}.users.jsonl", logs / f"duckdb-{i}.users.jsonl"
                recs_out, recs_lines = logs / f"pipeline-recs-{i}.json", logs / f"pipeline-recs-{i}.users.jsonl"
                cmd += ["--timezone", args.timezone]
                duck_cmd += ["--timezone", args.timezone, "--user-stats", str(duck_lines)]
                # The same analytics as DuckDB's: no personalized artists (DuckDB has no model).
                # Then the same run with them, for what the recommender adds.
                plain = [*cmd, "--out", str(out), "--user-stats", str(lines), "--personalized-n", "0"]
                start_cpu = services_cpu_seconds(services)
                run = run_process(plain, logs / f"client-{i}.log")
                run_cpu = cpu_used(start_cpu, services_cpu_seconds(services))
                recs = [*cmd, "--out", str(recs_out), "--user-stats", str(recs_lines)]
                start_cpu = services_cpu_seconds(services)
                with_recs = run_process(recs, logs / f"client-recs-{i}.log")
                with_recs_cpu = cpu_used(start_cpu, services_cpu_seconds(services))
                # In the work dir: DuckDB spills to ``.tmp`` in its working directory.
                duck = run_process(duck_cmd, logs / f"duckdb-{i}.log", cwd=logs)
                if duck.returncode:
                    duck_ok = False
                    failures.append(f"duckdb run {i} exited {duck.returncode}: {duck.stderr_tail}")
                else:
                    duck_walls.append(duck.wall)
                    paired_duck.append(duck.wall)
                    duck_rss.append(duck.peak_rss_mb)
                    cpu.setdefault("duckdb", []).append(duck.cpu_seconds)
                if run.returncode:
                    failures.append(f"pipeline run {i} exited {run.returncode}: {run.stderr_tail}")
                    continue
                walls.append(run.wall)
                if not duck.returncode:
                    run_ratios.append(run.wall / duck.wall)
                client_rss.append(run.peak_rss_mb)
                for name, seconds in {"client": run.cpu_seconds, **run_cpu}.items():
                    cpu.setdefault(name, []).append(seconds)
                if with_recs.returncode:
                    failures.append(f"pipeline run {i} with recommendations exited {with_recs.returncode}: "
                                    f"{with_recs.stderr_tail}")  # fmt: skip
                else:
                    recs_walls.append(with_recs.wall)
                    client_rss.append(with_recs.peak_rss_mb)
                    for name, seconds in {"client": with_recs.cpu_seconds, **with_recs_cpu}.items():
                        recs_cpu.setdefault(name, []).append(seconds)
                    recs_document = json.loads(recs_out.read_text(encoding="utf-8"))
                    model = recs_document.get("personalized_recommendations") or {}
                    recs_model = {k: model.get(k) for k in ("algorithm", "users", "artists", "pairs", "users_by")}
                    train_seconds.append(model.get("train_seconds") or 0.0)
                    why = recs_document.get("personalized_recommendations_skipped")
                    if why:
                        # The run kept everything but the artists: the recommender's target is
                        # missed, and said so, apart from the analytics compared with DuckDB.
                        recs_skipped.append(f"run {i}: {why}")
                    elif model.get("users") != (recs_document.get("user_stats") or {}).get("users"):
                        failures.append(f"run {i}: the model answered {model.get('users')} users of "
                                        f"{recs_document['user_stats']['users']}")  # fmt: skip
                    # Each document is 1.4 GB of objects at 100M events, and DuckDB needs most of
                    # the machine's memory there: none is held while the next repeat runs.
                    del recs_document
                document = json.loads(out.read_text(encoding="utf-8"))
                for key, value in document.get("performance", {}).items():
                    if isinstance(value, int | float):
                        stages.setdefault(key, []).append(value)
                if not duck.returncode:
                    duck_document = json.loads(duck_out.read_text(encoding="utf-8"))
                    problems = compare(document, duck_document) + compare_stats(document, duck_document)
                    lines_compared, line_problems = compare_user_lines(lines, duck_lines)
                    got_users = (document.get("user_stats") or {}).get("users")
                    if got_users != duck_document["user_stats"]["users"]:
                        line_problems.append(f"user_stats.users: pipeline {got_users} != "
                                             f"duckdb {duck_document['user_stats']['users']}")  # fmt: skip
                    problems += line_problems
                    mismatches += [f"run {i}: {p}" for p in problems]
                    del duck_document
                del document
                # A user's lines are KBs (100M events: GBs per file): only the last repeat's stay,
                # and only in a work dir that outlives the bench.
                if i + 1 < args.repeats or args.work_dir is None:
                    for written in (out, duck_out, lines, duck_lines, recs_out, recs_lines):
                        written.unlink(missing_ok=True)
                print(
                    f"  {events:>11,} events, {replicas} replica(s), run {i + 1}/{args.repeats}: "
                    f"pipeline {run.wall:.2f} s (with recommendations {with_recs.wall:.2f} s), "
                    f"duckdb {duck.wall:.2f} s" + ("" if not mismatches else "  MISMATCH"),
                    file=sys.stderr,
                    flush=True,
                )
            service_rss: dict[str, float | None] = {}
            for name, group in services.processes.items():
                for k, proc in enumerate(group):
                    hwm = vm_hwm_mb(proc.process.pid)
                    service_rss[f"{name}-{k}"] = round(hwm, 1) if hwm is not None else None
        if failures:  # the services' side of the story, when they logged one
            for log in sorted(p for name in services.processes for p in logs.glob(f"{name}-*.log")):
                text = log.read_text(errors="replace")
                if "Traceback" in text or '"level": "error"' in text:
                    failures.append(f"{log.name}: {text[-1500:]}")
        peak = {"client": round(max(client_rss), 1) if client_rss else None} | service_rss
        matched = bool(walls) and len(walls) == args.repeats and not mismatches and not failures
        size["pipeline"][str(replicas)] = {
            "replicas": replicas,
            "wall_median": _median(walls),
            "wall_min": round(min(walls), 4) if walls else None,
            "wall_runs": [round(w, 4) for w in walls],
            "duckdb_wall_median": _median(paired_duck),
            "ratio_runs": [round(r, 3) for r in run_ratios],
            "stage_seconds_median": {k: _median(v) for k, v in stages.items()},
            "events_per_second": round(events / statistics.median(walls)) if walls else None,
            "peak_rss_mb": peak,
            "results_match": matched,
            "user_lines_compared": lines_compared,
            "cpu_seconds_median": {k: _median(cpu[k]) for k in sorted(cpu, key=lambda k: k == "duckdb")},
            "personalized": {
                "wall_median": _median(recs_walls),
                "wall_runs": [round(w, 4) for w in recs_walls],
                "train_seconds_median": _median(train_seconds),
                "overhead": round(statistics.median(recs_walls) / statistics.median(walls) - 1, 3)
                if recs_walls and walls
                else None,
                "overhead_runs": [round(a / b - 1, 3) for a, b in zip(recs_walls, walls, strict=False)],
                "cpu_seconds_median": {k: _median(v) for k, v in recs_cpu.items()},
                "model": recs_model,
                "skipped": recs_skipped[:3],
            },
            "mismatches": mismatches[:20],
            "failures": failures[:10],
        }
    duck_median = statistics.median(duck_walls) if duck_walls else None
    size["duckdb"] = {
        "threads": args.threads,
        "wall_median": _median(duck_walls),
        "wall_min": round(min(duck_walls), 4) if duck_walls else None,
        "wall_runs": [round(w, 4) for w in duck_walls],
        "events_per_second": round(events / duck_median) if duck_median else None,
        "peak_rss_mb": round(max(duck_rss), 1) if duck_rss else None,
        "ok": duck_ok,
    }
    target_ratio = RATIO_TARGETS.get(events)
    rss_target = rss_target_mb(events)
    for entry in size["pipeline"].values():
        # Against the DuckDB runs interleaved with this configuration's: the machine's load drifts
        # between configurations (other work on a 2-core box), pairing cancels most of it.
        paired = entry["duckdb_wall_median"]
        ratio = entry["wall_median"] / paired if entry["wall_median"] and paired else None
        entry["ratio_vs_duckdb"] = round(ratio, 3) if ratio is not None else None
        rss = [v for v in entry["peak_rss_mb"].values() if v is not None]
        entry["targets"] = {
            "ratio_max": target_ratio,
            "ratio_met": (ratio <= target_ratio) if ratio is not None and target_ratio else None,
            "rss_max_mb": rss_target,
            "rss_met": bool(rss) and max(rss) <= rss_target,
            "personalized_overhead_max": PERSONALIZED_OVERHEAD_TARGET,
            "personalized_overhead_met": False
            if entry["personalized"]["skipped"]
            else (entry["personalized"]["overhead"] <= PERSONALIZED_OVERHEAD_TARGET)
            if entry["personalized"]["overhead"] is not None
            else None,
        }
        table.append({"events": events, "duckdb": size["duckdb"], **entry})
    size["results_match"] = duck_ok and all(e["results_match"] for e in size["pipeline"].values())
    return size


def _per_event_ratio(small: int, small_wall: float | None, large: int, large_wall: float | None) -> float | None:
    if not small_wall or not large_wall:
        return None
    return round((large_wall / large) / (small_wall / small), 3)


def growth(sizes: dict[str, Any], order: list[int], replicas: list[int]) -> dict[str, list[dict[str, Any]]]:
    """Per replica count, for each pair of consecutive sizes in ``order``: the pipeline's seconds per
    event at the second over those at the first (1.0: linear cost), against its target where there
    is one, and DuckDB's same ratio (its runs interleaved with that configuration's)."""
    result: dict[str, list[dict[str, Any]]] = {}
    for replicas_count in replicas:
        pairs = []
        for small, large in itertools.pairwise(order):
            a, b = (sizes.get(str(e), {}).get("pipeline", {}).get(str(replicas_count)) or {} for e in (small, large))
            ratio = _per_event_ratio(small, a.get("wall_median"), large, b.get("wall_median"))
            limit = GROWTH_TARGETS.get((small, large))
            pairs.append({
                "from": small,
                "to": large,
                "seconds_per_event_ratio": ratio,
                "max": limit,
                "met": ratio <= limit if ratio is not None and limit is not None else None,
                "duckdb_seconds_per_event_ratio": _per_event_ratio(
                    small, a.get("duckdb_wall_median"), large, b.get("duckdb_wall_median")
                ),
            })  # fmt: skip
        result[str(replicas_count)] = pairs
    return result


def _cpu_text(seconds: dict[str, float | None]) -> str:
    ours = {k: v for k, v in seconds.items() if k != "duckdb" and v is not None}
    if not ours:
        return "-"
    return " + ".join(f"{k} {v:.2f}" for k, v in ours.items()) + f" = {sum(ours.values()):.2f}"


def print_notes(rows: list[dict[str, Any]], growth_by_replicas: dict[str, list[dict[str, Any]]]) -> None:
    """Under the table: each configuration's CPU seconds, then each pair of sizes' growth."""
    for r in rows:
        cpu = r["cpu_seconds_median"]
        duck = cpu.get("duckdb")
        print(
            f"CPU-s {r['events']:>11,} x{r['replicas']}: {_cpu_text(cpu)}"
            f" (duckdb {f'{duck:.2f}' if duck is not None else '-'});"
            f" with recommendations: {_cpu_text(r['personalized']['cpu_seconds_median'])}"
        )
    for replicas, pairs in growth_by_replicas.items():
        for g in pairs:
            ratio, duck = g["seconds_per_event_ratio"], g["duckdb_seconds_per_event_ratio"]
            verdict = "" if g["max"] is None else f" (max {g['max']}: {'met' if g['met'] else 'NOT met'})"
            print(
                f"growth {g['from']:,} -> {g['to']:,} events, {replicas} replica(s): seconds per event "
                f"x{f'{ratio:.2f}' if ratio is not None else '-'}{verdict},"
                f" DuckDB's x{f'{duck:.2f}' if duck is not None else '-'}"
            )
    print("(CPU-s: user + system seconds per process, medians of the runs; growth: seconds per event at the"
          " larger size over those at the smaller, 1.00 is linear)")  # fmt: skip


def print_table(rows: list[dict[str, Any]]) -> None:
    def mb(value: float | None) -> str:
        return f"{value:.0f}" if value is not None else "-"

    def sec(value: float | None) -> str:
        return f"{value:.2f}" if value is not None else "-"

    header = (
        f"{'events':>11} {'repl':>4} {'pipeline s':>10} {'duckdb s':>8} {'ratio':>6} {'events/s':>10} "
        f"{'client MB':>9} {'mapred MB':>9} {'userb MB':>9} {'recom MB':>8} {'duckdb MB':>9} {'+recs':>6}  match"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        peak = r["peak_rss_mb"]

        def group_max(name: str, peak: dict[str, float | None] = peak) -> float | None:
            values = [v for k, v in peak.items() if k.startswith(name + "-") and v is not None]
            return max(values) if values else None

        ratio = r["ratio_vs_duckdb"]
        eps = r["events_per_second"]
        added = r["personalized"]["overhead"]
        overhead = "skip" if r["personalized"]["skipped"] else f"{added:+.0%}" if added is not None else "-"
        print(
            f"{r['events']:>11,} {r['replicas']:>4} {sec(r['wall_median']):>10} {sec(r['duckdb_wall_median']):>8} "
            f"{(f'{ratio:.2f}' if ratio is not None else '-'):>6} {(f'{eps:,}' if eps else '-'):>10} "
            f"{mb(peak.get('client')):>9} {mb(group_max('mapreduce')):>9} {mb(group_max('userbehavior')):>9} "
            f"{mb(group_max('recommendation')):>8} {mb(r['duckdb']['peak_rss_mb']):>9} "
            f"{overhead:>6}  {'yes' if r['results_match'] else 'NO'}"
        )
    print(
        "(wall times: medians of whole processes, DuckDB's runs interleaved with each configuration's;"
        " MB: peak RSS, the largest replica for replicated services, of the runs with and without"
        " personalized artists; +recs: the wall time those add, median against median)"
    )


def _int_list(text: str) -> list[int]:
    return [int(x.replace("_", "")) for x in text.split(",") if x.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=_int_list, default=None, help="comma-separated event counts (1000000,10000000)")
    p.add_argument("--repeats", type=int, default=None, help="runs of each side per configuration (3)")
    p.add_argument("--replicas", type=_int_list, default=[1, 2], help="replica counts to compare (1,2)")
    p.add_argument("--seed", type=int, default=42, help="generator seed (42)")
    p.add_argument("--threads", type=int, default=2, help="DuckDB threads (2, the machine's cores)")
    p.add_argument("--timezone", default=DEFAULT_TIMEZONE, help=f"zone of the time statistics ({DEFAULT_TIMEZONE})")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="where generated data is cached")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results JSON (bench/results.json)")
    p.add_argument("--work-dir", type=Path, default=None, help="keep logs and outputs here (default: temporary)")
    p.add_argument("--quick", action="store_true", help=f"{QUICK_SIZE:,} events, 1 repeat: a smoke test")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.sizes is None:
        args.sizes = [QUICK_SIZE] if args.quick else [1_000_000, 10_000_000]
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.repeats < 1 or not args.sizes or not args.replicas or min(args.replicas) < 1:
        print("error: --repeats, --sizes and --replicas must be positive", file=sys.stderr)
        return 2
    if ORACLE is None:
        print("error: tests/oracle.py not found: run the benchmark from the project checkout", file=sys.stderr)
        return 2
    # Absolute: DuckDB runs in the work dir, with these paths in its command line.
    args.data_dir, args.out = args.data_dir.absolute(), args.out.absolute()
    args.work_dir = args.work_dir.absolute() if args.work_dir else None
    started = time.time()
    table: list[dict[str, Any]] = []
    sizes: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="music-analytics-bench-") as tmp:
        work = args.work_dir or Path(tmp)
        problems = disk_shortfalls({events: size_needs(events, args) for events in args.sizes})
        if problems:
            for problem in problems:
                print(f"error: {problem}", file=sys.stderr)
            print(DISK_ADVICE, file=sys.stderr)
            return 2
        args.data_dir.mkdir(parents=True, exist_ok=True)
        for events in args.sizes:
            try:
                sizes[str(events)] = bench_size(events, args, work, table)
            except RuntimeError as exc:  # services that would not start, or a disk filled meanwhile
                print(f"error: {events:,} events: {exc}", file=sys.stderr)
                sizes[str(events)] = {"events": events, "error": str(exc), "results_match": False}
    import duckdb  # only for its version in the report: the measured DuckDB runs in its own process

    document = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": round(time.time() - started, 1),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "duckdb": duckdb.__version__,
        },
        "settings": {
            "sizes": args.sizes,
            "repeats": args.repeats,
            "replicas": args.replicas,
            "seed": args.seed,
            "duckdb_threads": args.threads,
            "timezone": args.timezone,
            "generator_format_version": FORMAT_VERSION,
        },
        "sizes": sizes,
        "growth": growth(sizes, args.sizes, args.replicas),
        "results_match": all(s["results_match"] for s in sizes.values()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print()
    print_table(table)
    print_notes(table, document["growth"])
    print(f"\nwritten: {args.out}")
    for events, s in sizes.items():
        for entry in s.get("pipeline", {}).values():
            for line in entry["mismatches"][:5] + entry["failures"][:3]:
                print(f"{int(events):,} events, {entry['replicas']} replica(s): {line}", file=sys.stderr)
            for line in entry["personalized"]["skipped"][:1]:
                print(f"{int(events):,} events, {entry['replicas']} replica(s): no personalized artists: {line}",
                      file=sys.stderr)  # fmt: skip
    if not document["results_match"]:
        print("error: some runs failed or differ from DuckDB (see above and the JSON)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
