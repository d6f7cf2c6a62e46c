"""The benchmark's bookkeeping around sizes: the free-disk check, the targets by size, the growth
of the time per event between sizes, and the CPU seconds it reads from the kernel."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.run import (
    CSV_BYTES_PER_EVENT,
    DISK_ADVICE,
    GROWTH_TARGETS,
    RATIO_TARGETS,
    DiskSpaceError,
    build_parser,
    check_disk,
    cpu_seconds,
    disk_needs,
    disk_shortfalls,
    growth,
    rss_target_mb,
    run_process,
)
from music_analytics.client.generate import FORMAT_VERSION

ROOT = Path(__file__).resolve().parent.parent
GB = 10**9
# Burns CPU in its own process until the process has used this much: an oracle the child measures.
BURN_SECONDS = 0.3
BURN = f"import time\nwhile time.process_time() < {BURN_SECONDS}: pass\nprint(time.process_time())"


def needs(events: int, tmp_path: Path, **kwargs: object) -> list:
    defaults = {"csv_cached": False, "data_dir": tmp_path / "data", "work_dir": tmp_path / "work"}
    return disk_needs(events, **(defaults | {"temp_dir": tmp_path, "memory": 64 * GB} | kwargs))


def test_enough_space_is_no_problem(tmp_path: Path) -> None:
    assert disk_shortfalls({10_000_000: needs(10_000_000, tmp_path)}, free_bytes=lambda _: 10**15) == []


def test_short_of_space_names_size_directories_need_and_free(tmp_path: Path) -> None:
    wanted = needs(10_000_000, tmp_path)
    total = sum(n.bytes for n in wanted)
    assert total > GB
    (message,) = disk_shortfalls({10_000_000: wanted}, free_bytes=lambda _: GB)
    assert "10,000,000 events" in message
    for directory in ("data", "work"):
        assert str(tmp_path / directory) in message
    assert f"{total / GB:.1f} GB" in message and "1.0 GB free" in message
    assert f"the generated CSV in {tmp_path / 'data'} {CSV_BYTES_PER_EVENT * 10_000_000 / GB:.1f} GB" in message


def test_a_cached_csv_needs_no_space(tmp_path: Path) -> None:
    cached = needs(10_000_000, tmp_path, csv_cached=True)
    fresh = needs(10_000_000, tmp_path)
    assert [n for n in fresh if n not in cached] == [n for n in fresh if n.what == "the generated CSV"]
    free = sum(n.bytes for n in cached)
    assert disk_shortfalls({10_000_000: cached}, free_bytes=lambda _: free) == []
    (message,) = disk_shortfalls({10_000_000: fresh}, free_bytes=lambda _: free)
    assert "the generated CSV" in message


def test_kept_files_add_up_across_sizes_spill_only_for_the_largest(tmp_path: Path) -> None:
    by_size = {events: needs(events, tmp_path, keep_outputs=True, configurations=2) for events in (10**6, 10**7)}
    kept = sum(n.bytes for ns in by_size.values() for n in ns if n.kept)
    passing = max(sum(n.bytes for n in ns if not n.kept) for ns in by_size.values())
    assert kept and passing
    assert disk_shortfalls(by_size, free_bytes=lambda _: kept + passing) == []
    (message,) = disk_shortfalls(by_size, free_bytes=lambda _: kept + passing - 1)
    assert "1,000,000 and 10,000,000 events" in message


def test_kept_outputs_only_with_a_work_dir(tmp_path: Path) -> None:
    what = {n.what for n in needs(10**6, tmp_path)}
    assert "the outputs kept" not in what and "the outputs of a run" in what
    kept = [n for n in needs(10**6, tmp_path, keep_outputs=True, configurations=3) if n.what == "the outputs kept"]
    (run,) = [n for n in needs(10**6, tmp_path) if n.what == "the outputs of a run"]
    assert [n.bytes for n in kept] == [3 * run.bytes]


def test_duckdb_spills_only_past_its_memory(tmp_path: Path) -> None:
    assert not any("DuckDB" in n.what for n in needs(10**7, tmp_path, memory=64 * GB))
    (spill,) = [n for n in needs(10**8, tmp_path, memory=8 * GB) if "DuckDB" in n.what]
    assert spill.directory == tmp_path / "work" and spill.bytes > 10 * GB


@pytest.mark.skipif(
    not Path("/dev/shm").is_dir() or os.stat("/dev/shm").st_dev == os.stat(Path.cwd()).st_dev,
    reason="needs /dev/shm on a filesystem of its own",
)
def test_needs_on_different_filesystems_do_not_add_up(tmp_path: Path) -> None:
    shm = Path("/dev/shm") / "music-analytics-bench-never-created"
    wanted = needs(10_000_000, tmp_path, temp_dir=shm)
    on_shm = sum(n.bytes for n in wanted if n.directory == shm)
    elsewhere = sum(n.bytes for n in wanted if n.directory != shm)
    assert on_shm and elsewhere
    free = max(on_shm, elsewhere)
    assert disk_shortfalls({10_000_000: wanted}, free_bytes=lambda _: free) == []
    (message,) = disk_shortfalls({10_000_000: wanted}, free_bytes=lambda p: free if p == Path("/dev/shm") else 0)
    assert "/dev/shm" not in message and str(tmp_path / "data") in message


def test_bench_refuses_a_size_the_disk_cannot_hold(tmp_path: Path) -> None:
    data, out = tmp_path / "data", tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--sizes", "10000000000", "--data-dir", str(data), "--out", str(out)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "not enough disk for the benchmark of 10,000,000,000 events" in proc.stderr
    assert str(data) in proc.stderr and " free" in proc.stderr
    assert DISK_ADVICE in proc.stderr
    for option in ("--data-dir", "--work-dir", "TMPDIR"):
        assert option in DISK_ADVICE
    assert not data.exists() and not out.exists()
    assert not list(tmp_path.glob(f"**/events-10000000000-*-v{FORMAT_VERSION}.csv*"))


def test_targets_by_size() -> None:
    assert rss_target_mb(1_000_000) == rss_target_mb(10_000_000) == 600
    assert rss_target_mb(100_000_000) == 1024
    assert RATIO_TARGETS == {1_000_000: 1.15, 10_000_000: 1.15, 100_000_000: 1.5}
    assert GROWTH_TARGETS == {(10_000_000, 100_000_000): 1.3}


def sizes_with(walls: dict[int, tuple[float, float]]) -> dict[str, dict]:
    """Results as the bench records them: per size, pipeline and paired DuckDB medians (1 replica)."""
    return {
        str(events): {"pipeline": {"1": {"wall_median": mine, "duckdb_wall_median": duck}}}
        for events, (mine, duck) in walls.items()
    }


def test_growth_of_the_time_per_event() -> None:
    # 10x the events in 12x the time: 1.2x the seconds per event; DuckDB's 15x: 1.5x.
    sizes = sizes_with({1_000_000: (1.0, 1.0), 10_000_000: (9.0, 8.0), 100_000_000: (108.0, 120.0)})
    (first, second) = growth(sizes, [1_000_000, 10_000_000, 100_000_000], [1])["1"]
    assert first["from"] == 1_000_000 and first["to"] == 10_000_000
    assert first["seconds_per_event_ratio"] == 0.9 and first["duckdb_seconds_per_event_ratio"] == 0.8
    assert first["max"] is None and first["met"] is None
    assert second == {
        "from": 10_000_000,
        "to": 100_000_000,
        "seconds_per_event_ratio": 1.2,
        "max": 1.3,
        "met": True,
        "duckdb_seconds_per_event_ratio": 1.5,
    }
    slower = sizes_with({10_000_000: (9.0, 8.0), 100_000_000: (126.0, 80.0)})
    (pair,) = growth(slower, [10_000_000, 100_000_000], [1])["1"]
    assert pair["seconds_per_event_ratio"] == 1.4 and pair["met"] is False


def test_growth_without_a_run_has_no_ratio() -> None:
    sizes = sizes_with({10_000_000: (9.0, 8.0)}) | {"100000000": {"error": "services would not start"}}
    (pair,) = growth(sizes, [10_000_000, 100_000_000], [1])["1"]
    assert pair["seconds_per_event_ratio"] is None and pair["met"] is None
    assert growth(sizes, [10_000_000], [1]) == {"1": []}


def test_cpu_seconds_of_a_live_process() -> None:
    child = subprocess.Popen([sys.executable, "-c", BURN + "\nimport sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert child.stdout is not None
        burnt = float(child.stdout.readline())  # the child's own count, once it has burnt its share
        seen = cpu_seconds(child.pid)
        assert seen is not None
        # Clock ticks are 1/100 s; start-up before the loop adds to what the kernel counts.
        assert burnt - 0.02 <= seen <= burnt + 1.0
    finally:
        child.communicate("")
    assert cpu_seconds(child.pid) is None  # reaped: no /proc entry


def test_cpu_seconds_with_a_parenthesis_in_the_name(tmp_path: Path) -> None:
    # The name field of /proc/PID/stat is the executable's name: it may hold ") " itself.
    odd = tmp_path / "a) b"
    odd.symlink_to(sys.executable)
    child = subprocess.Popen([str(odd), "-c", BURN + "\nimport sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert child.stdout is not None
        burnt = float(child.stdout.readline())
        seen = cpu_seconds(child.pid)
        assert seen is not None and burnt - 0.02 <= seen <= burnt + 1.0
    finally:
        child.communicate("")


def test_run_process_reports_the_cpu_the_process_used(tmp_path: Path) -> None:
    start = time.perf_counter()
    run = run_process([sys.executable, "-c", BURN], tmp_path / "burn.log")
    wall = time.perf_counter() - start
    assert run.returncode == 0
    burnt = float((tmp_path / "burn.log").read_text())
    assert burnt - 0.02 <= run.cpu_seconds <= wall
    assert run.peak_rss_mb > 1


def test_run_process_in_a_working_directory(tmp_path: Path) -> None:
    # DuckDB spills into its working directory: the bench runs it in the work dir.
    run = run_process([sys.executable, "-c", "import os; print(os.getcwd())"], tmp_path / "cwd.log", cwd=tmp_path)
    assert run.returncode == 0
    assert (tmp_path / "cwd.log").read_text().strip() == str(tmp_path)


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
@pytest.mark.parametrize(
    ("target", "sizes", "replicas"),
    # `make bench` leaves the sizes to the bench's default (1M and 10M).
    [("bench", None, [1, 2]), ("bench-large", [10_000_000, 100_000_000], [1])],
)
def test_make_targets_run_the_bench(tmp_path: Path, target: str, sizes: list[int] | None, replicas: list[int]) -> None:
    # make's own dry run, against a venv path that does not exist (so it would install, not run).
    commands = subprocess.run(
        ["make", "--no-print-directory", "-n", target, f"VENV={tmp_path / 'venv'}", "BENCH_ARGS=--repeats 1"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert commands.returncode == 0, commands.stderr
    (line,) = [c for c in commands.stdout.splitlines() if "-m bench.run" in c]
    args = build_parser().parse_args(shlex.split(line.split("-m bench.run", 1)[1]))
    # BENCH_ARGS come last, so they can override the target's own.
    assert (args.sizes, args.replicas, args.repeats) == (sizes, replicas, 1)


def test_check_before_each_size(tmp_path: Path) -> None:
    args = build_parser().parse_args(["--data-dir", str(tmp_path / "data"), "--work-dir", str(tmp_path / "work")])
    check_disk(20_000, args)  # a small size fits
    with pytest.raises(DiskSpaceError) as raised:
        check_disk(10_000_000_000, args)
    message = str(raised.value)
    assert "10,000,000,000 events" in message and str(tmp_path / "work") in message
    assert message.endswith(DISK_ADVICE)
