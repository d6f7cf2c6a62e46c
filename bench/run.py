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

    python bench/run.py [--sizes 1000000,10000000] [--repeats 3] [--replicas 1,2] [--timezone Z] [--quick]

prints a table and writes ``bench/results.json``. Exit code 0 when every run succeeded and matched.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from music_analytics.client.demo import LocalServices
from music_analytics.client.generate import FORMAT_VERSION, generate

ROOT = Path(__file__).resolve().parent.parent
# The benchmark runs from a checkout (`make bench`): the oracle is the test suite's. Fall back to the
# working directory in case this file was imported from an installed copy.
ORACLE = next((p for p in (ROOT / "tests" / "oracle.py", Path.cwd() / "tests" / "oracle.py") if p.exists()), None)
DEFAULT_DATA_DIR = ROOT / "bench" / "data"
DEFAULT_OUT = ROOT / "bench" / "results.json"

# The targets: pipeline wall time at most this many times DuckDB's, peak RSS per process.
RATIO_TARGETS = {1_000_000: 1.2, 10_000_000: 1.5}
RSS_TARGET_MB = 600
# What training the recommender and scoring every user may add to the pipeline's wall time.
PERSONALIZED_OVERHEAD_TARGET = 0.30
# Keys of the per-user lines that come from the model, which DuckDB's lines do not have.
PERSONALIZED_KEYS = ("recommended_artists", "recommended_by")
QUICK_SIZE = 100_000
# A zone with an offset, so that local time is really computed (UTC could take a shortcut).
DEFAULT_TIMEZONE = "Europe/Berlin"


@dataclass
class ProcessRun:
    wall: float
    peak_rss_mb: float
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
print(usage.ru_maxrss, file=open(sys.argv[0], "w"))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_process(cmd: list[str], log: Path) -> ProcessRun:
    """Run ``cmd`` to completion; wall time and peak RSS of that one process (not the bench's other
    children). Output goes to ``log`` so a pipe never blocks the child."""
    rss_file = log.with_suffix(".maxrss")
    with log.open("wb") as out:
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-S", "-c", _LAUNCHER.replace("sys.argv[0]", repr(str(rss_file))), *cmd],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=False,
        )  # fmt: skip
        wall = time.perf_counter() - start
    tail = log.read_text(errors="replace")[-3000:] if proc.returncode else ""
    peak_kib = int(rss_file.read_text()) if rss_file.exists() else 0
    return ProcessRun(wall, peak_kib / 1024, proc.returncode, tail)  # ru_maxrss is KiB on Linux


def vm_hwm_mb(pid: int) -> float | None:
    """Peak resident set of a live process so far (Linux ``VmHWM``)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def dataset(data_dir: Path, events: int, seed: int) -> tuple[Path, float | None]:
    """The cached CSV for (events, seed, generator version); generated when missing."""
    path = data_dir / f"events-{events}-seed{seed}-v{FORMAT_VERSION}.csv"
    if path.exists():
        return path, None
    print(f"generating {events:,} events -> {path}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    generate(path, events, seed)
    return path, time.perf_counter() - start


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


def bench_size(events: int, args: argparse.Namespace, work: Path, table: list[dict[str, Any]]) -> dict[str, Any]:
    path, gen_seconds = dataset(args.data_dir, events, args.seed)
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
        train_seconds: list[float] = []
        recs_model: dict[str, Any] = {}
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
                run = run_process(plain, logs / f"client-{i}.log")
                recs = [*cmd, "--out", str(recs_out), "--user-stats", str(recs_lines)]
                with_recs = run_process(recs, logs / f"client-recs-{i}.log")
                duck = run_process(duck_cmd, logs / f"duckdb-{i}.log")
                if duck.returncode:
                    duck_ok = False
                    failures.append(f"duckdb run {i} exited {duck.returncode}: {duck.stderr_tail}")
                else:
                    duck_walls.append(duck.wall)
                    paired_duck.append(duck.wall)
                    duck_rss.append(duck.peak_rss_mb)
                if run.returncode:
                    failures.append(f"pipeline run {i} exited {run.returncode}: {run.stderr_tail}")
                    continue
                walls.append(run.wall)
                if not duck.returncode:
                    run_ratios.append(run.wall / duck.wall)
                client_rss.append(run.peak_rss_mb)
                if with_recs.returncode:
                    failures.append(f"pipeline run {i} with recommendations exited {with_recs.returncode}: "
                                    f"{with_recs.stderr_tail}")  # fmt: skip
                else:
                    recs_walls.append(with_recs.wall)
                    client_rss.append(with_recs.peak_rss_mb)
                    recs_document = json.loads(recs_out.read_text(encoding="utf-8"))
                    model = recs_document.get("personalized_recommendations") or {}
                    recs_model = {k: model.get(k) for k in ("algorithm", "users", "artists", "pairs", "users_by")}
                    train_seconds.append(model.get("train_seconds") or 0.0)
                    if model.get("users") != (recs_document.get("user_stats") or {}).get("users"):
                        failures.append(f"run {i}: the model answered {model.get('users')} users of "
                                        f"{recs_document['user_stats']['users']}")  # fmt: skip
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
                # The outputs of 10M runs are tens of MB each: keep only the last.
                if i + 1 < args.repeats:
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
            "personalized": {
                "wall_median": _median(recs_walls),
                "wall_runs": [round(w, 4) for w in recs_walls],
                "train_seconds_median": _median(train_seconds),
                "overhead": round(statistics.median(recs_walls) / statistics.median(walls) - 1, 3)
                if recs_walls and walls
                else None,
                "overhead_runs": [round(a / b - 1, 3) for a, b in zip(recs_walls, walls, strict=False)],
                "model": recs_model,
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
            "rss_max_mb": RSS_TARGET_MB,
            "rss_met": bool(rss) and max(rss) <= RSS_TARGET_MB,
            "personalized_overhead_max": PERSONALIZED_OVERHEAD_TARGET,
            "personalized_overhead_met": (entry["personalized"]["overhead"] <= PERSONALIZED_OVERHEAD_TARGET)
            if entry["personalized"]["overhead"] is not None
            else None,
        }
        table.append({"events": events, "duckdb": size["duckdb"], **entry})
    size["results_match"] = duck_ok and all(e["results_match"] for e in size["pipeline"].values())
    return size


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
        overhead = f"{added:+.0%}" if added is not None else "-"
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
    args.data_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    table: list[dict[str, Any]] = []
    sizes: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="music-analytics-bench-") as tmp:
        work = args.work_dir or Path(tmp)
        for events in args.sizes:
            try:
                sizes[str(events)] = bench_size(events, args, work, table)
            except RuntimeError as exc:  # services that would not start
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
        "results_match": all(s["results_match"] for s in sizes.values()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print()
    print_table(table)
    print(f"\nwritten: {args.out}")
    for events, s in sizes.items():
        for entry in s.get("pipeline", {}).values():
            for line in entry["mismatches"][:5] + entry["failures"][:3]:
                print(f"{int(events):,} events, {entry['replicas']} replica(s): {line}", file=sys.stderr)
    if not document["results_match"]:
        print("error: some runs failed or differ from DuckDB (see above and the JSON)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
