"""What the `run` command's process imports: only what a run uses, so that a small run's time is
the run's and not the loading of modules for other commands.

A real `run` against real services, in a fresh interpreter, then that interpreter's sys.modules.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from music_analytics.client.cli import COMMANDS, build_parser
from tests.conftest import ROOT, cli

# Modules a `run` has no use for: other commands' modules, the model (trained in the service),
# the servers' own libraries, and the test tools. A run loading any of them pays its import time.
NOT_IMPORTED_BY_RUN = (
    "music_analytics.client.generate",
    "music_analytics.client.report",
    "music_analytics.client.evaluate",
    "music_analytics.client.demo",
    "music_analytics.client.k8s_results",
    "music_analytics.client.telemetry",
    "music_analytics.services.common.config",
    "music_analytics.services.common.server",
    "music_analytics.services.recommendation.model",
    "scipy",
    "implicit",
    "threadpoolctl",
    "duckdb",
    "cryptography",
    "prometheus_client",
    "kubernetes",
    "yaml",
    # grpc's own __init__ imports the top-level grpc_health and grpc_reflection packages when
    # installed; the servers' health and reflection services are these modules.
    "grpc_health.v1.health",
    "grpc_reflection.v1alpha.reflection",
)

# Runs the command line as `music-analytics` does, then reports what the interpreter loaded.
MAIN_THEN_MODULES = """
import json, sys
from music_analytics.client.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def command_line_in_fresh_interpreter(*args: str) -> tuple[int, set[str], str]:
    """The exit code, the modules loaded, and what was printed before them."""
    proc = subprocess.run(
        [sys.executable, "-c", MAIN_THEN_MODULES, *args], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    printed, _, last = proc.stdout.rstrip("\n").rpartition("\n")
    report = json.loads(last)
    return report["code"], set(report["modules"]), printed


@pytest.fixture(scope="module")
def events_csv(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """A small listening history with enough shared taste for the recommender to train on."""
    path = tmp_path_factory.mktemp("startup") / "events.csv"
    rows = [
        f"u{u},s{(u * 7 + i) % 40},artist {(u + i) % 9},{120 + i},2024-03-{1 + i % 28:02d}T{i % 24:02d}:00:00Z"
        for u in range(30)
        for i in range(12)
    ]
    path.write_text("user_id,song_id,artist,duration,timestamp\n" + "\n".join(rows) + "\n")
    return path, len(rows)


def test_every_module_a_run_must_not_load_is_installed() -> None:
    """Otherwise the check below would pass for a module that could not have been loaded anyway."""
    missing = [m for m in NOT_IMPORTED_BY_RUN if importlib.util.find_spec(m) is None]
    assert not missing


def test_a_run_loads_only_what_it_uses(services, events_csv, tmp_path: Path) -> None:
    data, rows = events_csv
    out = tmp_path / "r.json"
    code, modules, _ = command_line_in_fresh_interpreter(
        "run", "--data", str(data), "--out", str(out), "--quiet",
        "--mapreduce", services.target("mapreduce"),
        "--userbehavior", services.target("userbehavior"),
        "--recommendation", services.target("recommendation"),
    )  # fmt: skip
    assert code == 0
    results = json.loads(out.read_text())
    # A whole run happened: every row went through, and the personalized artists were asked for.
    assert results["events_processed"] == rows
    assert results["personalized_recommendations"]
    assert [m for m in NOT_IMPORTED_BY_RUN if m in modules] == []


def test_run_help_loads_neither_grpc_nor_arrow() -> None:
    """`run --help` needs the flags only: the TLS flags' module does not load grpc or ssl for them."""
    code, modules, printed = command_line_in_fresh_interpreter("run", "--help")
    assert code == 0
    for flag in ("--data", "--mapreduce", "--tls-ca", "--tls-server-name", "--pushgateway"):
        assert flag in printed
    assert [m for m in ("grpc", "ssl", "numpy", "pyarrow", *NOT_IMPORTED_BY_RUN) if m in modules] == []


def test_run_help_from_the_installed_command() -> None:
    proc = cli("run", "--help")
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout.startswith("usage: music-analytics run ")


def _help_of(parser_args: list[str], parser: object) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        parser.parse_args(parser_args)  # type: ignore[attr-defined]
    assert exit_info.value.code == 0
    return out.getvalue()


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_command_parsed_alone_has_the_flags_of_the_whole_command_line(command: str) -> None:
    """The command line adds only the named command's flags: each must come out as the whole
    parser defines it (same usage, flags, defaults and help)."""
    alone = _help_of([command, "--help"], build_parser(command))
    assert alone == _help_of([command, "--help"], build_parser())
    assert alone.startswith(f"usage: music-analytics {command} ")


def test_a_command_parsed_alone_reads_the_same_values() -> None:
    line = ["run", "--data", "e.csv", "--timezone", "Europe/Berlin", "--expect-replicas", "mapreduce=2",
            "--tls-ca", "ca.pem", "--personalized-n", "3", "--strict"]  # fmt: skip
    assert build_parser("run").parse_args(line) == build_parser().parse_args(line)


def test_top_level_usage_errors_and_help_are_unchanged() -> None:
    """Without a command (or with one we do not have) no command's flags are added; argparse's
    own messages still list every command."""
    missing = cli()
    assert missing.returncode == 2 and "the following arguments are required: command" in missing.stderr
    unknown = cli("bogus", "--data", "x")
    assert unknown.returncode == 2 and "invalid choice: 'bogus'" in unknown.stderr
    for name in COMMANDS:
        assert f"'{name}'" in unknown.stderr
    listing = cli("--help")
    assert listing.returncode == 0
    for name, (help_line, _) in COMMANDS.items():
        assert name in listing.stdout and help_line.split()[0] in listing.stdout


def test_report_of_a_run_from_the_command_line(services, events_csv, tmp_path: Path) -> None:
    """The report command's flags and module, added and loaded only when it is named, still work."""
    data, _ = events_csv
    out = tmp_path / "r.json"
    proc = cli("run", "--data", str(data), "--out", str(out), "--quiet",
               "--mapreduce", services.target("mapreduce"), "--userbehavior", services.target("userbehavior"),
               "--recommendation", services.target("recommendation"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    page = tmp_path / "page.html"
    done = cli("report", str(out), "--out", str(page))
    assert done.returncode == 0 and done.stderr == f"Report written to {page}\n", done.stderr
    assert page.read_text(encoding="utf-8").lstrip().lower().startswith("<!doctype html>")
