"""Our own code against the library that could replace it, measured where it matters to us.

Three places write by hand what a library offers:

* the gRPC server metrics interceptor (services/common/interceptor.py, metrics.py) against
  py-grpc-prometheus' PromServerInterceptor: cost per call on a real loopback server (the
  project's MapReduce and UserBehavior servicers and the standard health service, in a process
  of their own), for small unary health checks and for streams of event batches, the server's
  CPU time included; then what each records for an answered call, a refused one
  (InvalidArgument), a client cancel, a passed deadline and a bidirectional stream, in the names
  and labels the dashboards and alerts use;
* the JSON log formatter (services/common/logging.py) against python-json-logger (its json and
  orjson formatters, configured as close to ours as its options allow): cost per record, and
  how the lines differ;
* the client's progress bar (client/cli.py) against tqdm: cost per update.

And for each candidate, what it adds: import time in the process that would use it, installed
size, and runtime dependencies missing from the image's lock (k8s/image-requirements.txt).

    python -m bench.libraries [--calls 4000] [--streams 40] [--messages 100] [--repeats 9] [--out ...]

Needs the project installed (`make test-venv`) and PyPI: the candidates, at the versions in
CANDIDATES, are pip-installed with --no-deps into a temporary directory that only this process
and the servers it starts put on their path; the project's environment is left as it is.
Prints a report and writes it as JSON (build/bench-libraries.json).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "build" / "bench-libraries.json"
LOCK = ROOT / "k8s" / "image-requirements.txt"
# The versions measured; newer ones may differ in behaviour as well as in speed.
CANDIDATES = {"py-grpc-prometheus": "0.8.0", "python-json-logger": "4.2.0", "tqdm": "4.70.1"}
INTERCEPTORS = ("none", "ours", "py-grpc-prometheus")
MAX_STREAMS = 16  # the services' default --max-streams
ROWS_PER_MESSAGE = 16  # small batches, so the per-message cost of the interceptor shows


# --------------------------------------------------------------------------------------- installing


def install_candidates(directory: Path) -> dict[str, dict[str, Any]]:
    """pip-install each candidate (no dependencies) into a directory of its own; put it on sys.path.
    Returns name -> version, installed bytes and files, and declared runtime dependencies."""
    from importlib.metadata import PathDistribution

    from packaging.requirements import Requirement

    found = {}
    for name, version in CANDIDATES.items():
        target = directory / name
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile", "--target",
             str(target), f"{name}=={version}"],
            check=True,
        )  # fmt: skip
        files = [p for p in target.rglob("*") if p.is_file()]
        (dist_info,) = target.glob("*.dist-info")
        requires = [Requirement(r) for r in PathDistribution(dist_info).requires or []]
        # What pip would install here: no extras, markers evaluated for this platform.
        runtime = [str(r) for r in requires if r.marker is None or r.marker.evaluate({"extra": ""})]
        found[name] = {
            "version": version,
            "installed_bytes": sum(p.stat().st_size for p in files),
            "installed_files": len(files),
            "requires": runtime,
            "requires_missing_from_lock": {
                dependency: installed_bytes(directory / f"dependency-{dependency}", dependency)
                for dependency in missing_from_lock(runtime)
            },
        }
        sys.path.insert(0, str(target))
    return found


def installed_bytes(target: Path, requirement: str) -> int:
    """Bytes that ``pip install --no-deps`` of ``requirement`` lays down (its newest version)."""
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile", "--target", str(target),
         requirement],
        check=True,
    )  # fmt: skip
    return sum(p.stat().st_size for p in target.rglob("*") if p.is_file())


def missing_from_lock(requirements: list[str]) -> list[str]:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    locked = {
        canonicalize_name(line.split("==")[0])
        for line in LOCK.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    names = [canonicalize_name(Requirement(r).name) for r in requirements]
    return [n for n in names if n not in locked]


def import_ms(module: str, already: str, runs: int = 7) -> float:
    """What importing ``module`` adds, in ms, to a process that has imported ``already``: the
    least, over fresh interpreters, of `-X importtime`'s cumulative time of the top-level imports
    ``module`` causes (other load on the machine only adds time)."""
    package = module.split(".")[0]
    samples = []
    for _ in range(runs):
        proc = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", f"import {already}\nimport {module}"],
            capture_output=True, text=True, check=True, env=_env(),
        )  # fmt: skip
        total_us = 0
        for line in proc.stderr.splitlines():
            # "import time: self [us] | cumulative | imported package"; nesting indents the name.
            if not line.startswith("import time:") or "cumulative" in line:
                continue
            _self, cumulative, name = line.removeprefix("import time:").split("|")
            if not name.startswith("  ") and name.strip().split(".")[0] == package:
                total_us += int(cumulative)
        samples.append(total_us / 1000)
    return round(min(samples), 1)


def _env() -> dict[str, str]:
    """This process's environment, with the candidates' directories on PYTHONPATH."""
    extra = [p for p in sys.path if "bench-libraries-" in p]
    return os.environ | {"PYTHONPATH": os.pathsep.join([*extra, os.environ.get("PYTHONPATH", "")])}


# --------------------------------------------------------------------------------------- the server


def serve(kind: str) -> None:
    """A MapReduce and UserBehavior server with the standard health service, its gRPC metrics
    recorded as ``kind`` records them (none, ours, the library's).
    Prints its ports as one JSON line; stops when its standard input closes."""
    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    from prometheus_client import CollectorRegistry, start_http_server

    from music_analytics.services.common.config import CallLimits
    from music_analytics.services.common.interceptor import CallInterceptor
    from music_analytics.services.common.metrics import ServiceMetrics
    from music_analytics.services.mapreduce.servicer import SPEC
    from music_analytics.services.userbehavior.servicer import SPEC as BIDI_SPEC

    logging.disable(logging.CRITICAL)
    metrics = ServiceMetrics(SPEC.name)  # the servicer's own metrics, the same for every kind
    interceptors: list[grpc.ServerInterceptor] = []
    exposed = metrics.registry
    if kind == "ours":
        interceptors.append(CallInterceptor(metrics, max_calls=MAX_STREAMS, max_tooling_calls=2))
        metrics.register_methods(SPEC.descriptor)
        metrics.register_methods(BIDI_SPEC.descriptor)
        metrics.register_methods(health_pb2.DESCRIPTOR.services_by_name["Health"])
    elif kind == "py-grpc-prometheus":
        from py_grpc_prometheus.prometheus_server_interceptor import PromServerInterceptor

        # Its own registry: it registers the same grpc_server_* names as ServiceMetrics.
        exposed = CollectorRegistry()
        interceptors.append(PromServerInterceptor(enable_handling_time_histogram=True, registry=exposed))
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=MAX_STREAMS + 8), interceptors=interceptors,
        options=[("grpc.so_reuseport", 0)],
    )  # fmt: skip
    SPEC.attach(server, metrics, CallLimits())
    BIDI_SPEC.attach(server, metrics, CallLimits())  # AnalyzeUsers: a bidirectional stream
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    grpc_port = server.add_insecure_port("127.0.0.1:0")
    http, _ = start_http_server(0, addr="127.0.0.1", registry=exposed)
    server.start()
    print(json.dumps({"grpc_port": grpc_port, "metrics_port": http.server_port}), flush=True)
    sys.stdin.read()
    server.stop(0)


class Server:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.libraries", "serve", kind],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=_env(),
        )  # fmt: skip
        line = self.process.stdout.readline()  # type: ignore[union-attr]
        if not line:
            raise RuntimeError(f"the {kind} server did not start (exit code {self.process.wait()})")
        ports = json.loads(line)
        self.grpc_port, self.metrics_port = ports["grpc_port"], ports["metrics_port"]

    def cpu_seconds(self) -> float:
        """CPU time the server's threads have run so far, in nanoseconds' resolution (schedstat;
        /proc/PID/stat counts 10 ms ticks). The gRPC pool's threads live as long as the server,
        so no thread's time is lost between two readings."""
        total_ns = 0
        for task in Path(f"/proc/{self.process.pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError):
                total_ns += int((task / "schedstat").read_text().split()[0])
        return total_ns / 1e9

    def samples(self) -> list[tuple[str, dict[str, str], float]]:
        from prometheus_client.parser import text_string_to_metric_families

        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        return [(s.name, s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples]

    def stop(self) -> None:
        self.process.stdin.close()  # type: ignore[union-attr]
        self.process.wait(10)


# --------------------------------------------------------------------------------------- interceptor


def batch_message(rows: int, song: str = "s") -> Any:
    import pyarrow as pa

    from music_analytics.api import mapreduce_pb2
    from music_analytics.client.encoding import encode_batch

    table = pa.table({
        "user_id": [f"u{i}" for i in range(rows)], "song_id": [song] * rows, "artist": ["A"] * rows,
        "duration": pa.array([1] * rows, type=pa.uint32()),
    })  # fmt: skip
    return mapreduce_pb2.CountPlaysRequest.FromString(encode_batch(table))


def measure_calls(
    servers: list[Server], calls: int, streams: int, messages: int, repeats: int
) -> dict[str, dict[str, float]]:
    """Per unary health check and per stream message: client wall time and server CPU, medians
    over ``repeats`` rounds that visit the servers in turn (so they share the machine's noise).
    Messages go as ``streams`` calls of ``messages`` each: the servicer's own cost per message
    grows with the messages of a call already held, which would drown the interceptor's."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from music_analytics.api import mapreduce_pb2_grpc

    message = batch_message(ROWS_PER_MESSAGE)
    rounds: dict[str, dict[str, list[float]]] = {s.kind: {} for s in servers}
    channels = {s.kind: grpc.insecure_channel(f"127.0.0.1:{s.grpc_port}") for s in servers}
    try:
        for round_ in range(repeats + 1):  # round 0 warms up and is not counted
            for server in servers:
                channel = channels[server.kind]
                check = health_pb2_grpc.HealthStub(channel).Check
                count_plays = mapreduce_pb2_grpc.MapReduceServiceStub(channel).CountPlays
                request = health_pb2.HealthCheckRequest()
                cpu, start = server.cpu_seconds(), time.perf_counter()
                for _ in range(calls):
                    check(request, timeout=10)
                unary = (time.perf_counter() - start, server.cpu_seconds() - cpu)
                cpu, start = server.cpu_seconds(), time.perf_counter()
                for _ in range(streams):
                    reply = count_plays(iter([message] * messages), timeout=60)
                    assert reply.events_processed == messages * ROWS_PER_MESSAGE, reply.events_processed
                stream = (time.perf_counter() - start, server.cpu_seconds() - cpu)
                if round_:
                    r = rounds[server.kind]
                    r.setdefault("unary_wall_us", []).append(unary[0] / calls * 1e6)
                    r.setdefault("unary_server_cpu_us", []).append(unary[1] / calls * 1e6)
                    r.setdefault("message_wall_us", []).append(stream[0] / (streams * messages) * 1e6)
                    r.setdefault("message_server_cpu_us", []).append(stream[1] / (streams * messages) * 1e6)
    finally:
        for channel in channels.values():
            channel.close()
    return {kind: {k: round(statistics.median(v), 1) for k, v in r.items()} for kind, r in rounds.items()}


def total(series: list[tuple[str, dict[str, str], float]], name: str) -> float:
    return sum(value for n, _labels, value in series if n == name)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} after {timeout:g}s")
        time.sleep(0.02)


def recorded_calls(server: Server) -> dict[str, Any]:
    """What the server's metrics say about four CountPlays streams (answered, refused as
    InvalidArgument, cancelled by the client, past their deadline), one health check and one
    answered AnalyzeUsers (bidirectional) stream."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from music_analytics.api import mapreduce_pb2_grpc, userbehavior_pb2, userbehavior_pb2_grpc

    def count_plays_series() -> list[tuple[str, dict[str, str], float]]:
        return [s for s in server.samples() if s[1].get("grpc_method") == "CountPlays"]

    before_any_call = count_plays_series()
    good, bad = batch_message(4), batch_message(1, song="")  # an empty song_id: InvalidArgument
    release = threading.Event()

    def stalled(first: Any) -> Iterator[Any]:
        yield first
        release.wait(30)  # the client sends nothing more: the server waits inside the call

    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = mapreduce_pb2_grpc.MapReduceServiceStub(channel)
        stub.CountPlays(iter([good, good]), timeout=10)
        with contextlib.suppress(grpc.RpcError):
            stub.CountPlays(iter([bad]), timeout=10)
        cancelled = stub.CountPlays.future(stalled(good), timeout=30)
        # Cancel once the server holds the call, waiting for the stream's next message.
        wait_for(lambda: total(count_plays_series(), "grpc_server_msg_received_total") >= 4, "the stalled stream")
        cancelled.cancel()
        late = stub.CountPlays.future(stalled(good), timeout=0.5)
        with contextlib.suppress(grpc.RpcError, grpc.FutureCancelledError):
            late.result()
        release.set()
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        analyze = userbehavior_pb2_grpc.UserBehaviorServiceStub(channel).AnalyzeUsers
        answers = list(analyze(iter([userbehavior_pb2.AnalyzeUsersRequest.FromString(good.SerializeToString())]),
                               timeout=10))  # fmt: skip
        assert answers, "AnalyzeUsers answered nothing"
    # A cancel or a deadline ends the call on the server a little later than on the client; an
    # interceptor that never records them leaves the count short, which is the finding.
    with contextlib.suppress(TimeoutError):
        wait_for(lambda: total(count_plays_series(), "grpc_server_handled_total") >= 4, "4 handled", timeout=5)
    series = count_plays_series()
    codes = {labels["grpc_code"]: int(v) for n, labels, v in series if n == "grpc_server_handled_total" and v}
    started = total(series, "grpc_server_started_total")
    timed = total(series, "grpc_server_handling_seconds_count")
    bidi = [s for s in server.samples() if s[1].get("grpc_method") == "AnalyzeUsers"]
    health_codes = sorted({
        labels["grpc_code"] for n, labels, v in server.samples()
        if n == "grpc_server_handled_total" and labels.get("grpc_service") == "grpc.health.v1.Health" and v
    })  # fmt: skip
    return {
        "grpc_type": sorted({labels["grpc_type"] for _n, labels, _v in series}),
        "series_before_any_call": len(before_any_call),
        "started_of_4_streams": int(started),
        "handled_codes_of_4_streams (OK, InvalidArgument, cancel, deadline)": codes,
        "timed_of_4_streams": int(timed),
        "health_check_code": health_codes,
        "bidi_stream_answered (started, handled, timed)": [
            int(total(bidi, "grpc_server_started_total")),
            {labels["grpc_code"]: int(v) for n, labels, v in bidi if n == "grpc_server_handled_total" and v},
            int(total(bidi, "grpc_server_handling_seconds_count")),
        ],
        "admission_limit_and_inflight_gauge": server.kind == "ours",
    }


# --------------------------------------------------------------------------------------- logging


def per_call_us(action: Callable[[], Any], number: int, repeats: int) -> float:
    """The fastest of ``repeats`` timings of ``number`` calls, per call: other load on the machine
    only ever adds time, so the minimum is the cost of the code itself."""
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(number):
            action()
        samples.append((time.perf_counter() - start) / number * 1e6)
    return round(min(samples), 2)


def library_formatter(module: str) -> logging.Formatter:
    """python-json-logger set up as close to ours as its options go (no subclass)."""
    import importlib

    formatter_class = importlib.import_module(f"pythonjsonlogger.{module}")
    cls = formatter_class.OrjsonFormatter if module == "orjson" else formatter_class.JsonFormatter
    kwargs: dict[str, Any] = {} if module == "orjson" else {"json_ensure_ascii": False}
    formatter = cls(
        "%(asctime)s %(levelname)s %(name)s %(message)s",
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger", "exc_info": "exception"},
        static_fields={"service": "mapreduce"},
        **kwargs,
    )
    # logging.Formatter's own time settings give our timestamp exactly: UTC, milliseconds, "Z".
    formatter.converter = time.gmtime  # type: ignore[method-assign]
    formatter.default_time_format = "%Y-%m-%dT%H:%M:%S"
    formatter.default_msec_format = "%s.%03dZ"
    return formatter


def measure_logging(number: int, repeats: int) -> dict[str, Any]:
    from music_analytics.services.common.logging import JsonFormatter

    formatters = {
        "ours": JsonFormatter("mapreduce"),
        "python-json-logger (json)": library_formatter("json"),
        "python-json-logger (orjson)": library_formatter("orjson"),
    }
    fields = {"rows": 4096, "seconds": 0.0123, "replica": "127.0.0.1:50051", "artist": "Sigur Rós"}
    record = logging.makeLogRecord({"name": "music_analytics.ingest", "levelno": logging.INFO,
                                    "levelname": "INFO", "msg": "batch done", "args": (), **fields})  # fmt: skip
    try:
        raise ValueError("bad batch")
    except ValueError:
        failed = logging.makeLogRecord({"name": "x", "levelno": logging.ERROR, "levelname": "ERROR",
                                        "msg": "failed", "exc_info": sys.exc_info()})  # fmt: skip
    out: dict[str, Any] = {}
    for name, formatter in formatters.items():
        line = formatter.format(record)
        failure = json.loads(formatter.format(failed))
        out[name] = {
            "format_us": per_call_us(lambda f=formatter: f.format(record), number, repeats),
            "line": line,
            "exception_key": [k for k in failure if "Traceback" in str(failure[k])],
        }
    ours = json.loads(out["ours"]["line"])
    for name in formatters:
        theirs = json.loads(out[name]["line"])
        out[name]["differs_from_ours"] = {
            k: [ours.get(k), theirs.get(k)] for k in sorted(set(ours) | set(theirs)) if ours.get(k) != theirs.get(k)
        }  # fmt: skip
        out[name]["key_order"] = list(theirs)
    return out


# --------------------------------------------------------------------------------------- progress


class _Terminal(io.TextIOBase):
    """A stderr that says it is a terminal and throws the text away."""

    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> int:
        return len(text)


def measure_progress(number: int, repeats: int) -> dict[str, Any]:
    from tqdm import tqdm

    from music_analytics.client import cli

    total = 10**12
    terminal = _Terminal()
    real_stderr, sys.stderr = sys.stderr, terminal  # ours writes to whatever sys.stderr is
    try:
        show = cli._progress_printer()
        assert show is not None
        done = iter(range(1, 10**9))
        ours = per_call_us(lambda: show(next(done), total), number, repeats)  # type: ignore[operator]
    finally:
        sys.stderr = real_stderr
    bar = tqdm(total=total, unit="B", unit_scale=True, file=terminal)
    theirs = per_call_us(lambda: bar.update(1), number, repeats)
    bar.close()
    from music_analytics.client.csv_source import CHUNK_BYTES

    return {
        "update_us": {"ours": ours, "tqdm": theirs},
        "updates_per_GB_of_csv": round(1e9 / CHUNK_BYTES),  # the pipeline reports once per chunk read
    }


# --------------------------------------------------------------------------------------- report


def report(results: dict[str, Any]) -> str:
    lines = ["gRPC server metrics: per call (medians)"]
    calls = results["interceptor"]["cost"]
    base = calls["none"]
    lines.append(f"  {'interceptor':<20} {'unary wall':>11} {'unary CPU':>10} {'msg wall':>9} {'msg CPU':>8}  (µs)")
    for kind, c in calls.items():
        lines.append(
            f"  {kind:<20} {c['unary_wall_us']:>11} {c['unary_server_cpu_us']:>10} "
            f"{c['message_wall_us']:>9} {c['message_server_cpu_us']:>8}"
        )
        if kind != "none":
            lines.append(
                f"  {'  over none':<20} {c['unary_wall_us'] - base['unary_wall_us']:>+11.1f} "
                f"{c['unary_server_cpu_us'] - base['unary_server_cpu_us']:>+10.1f} "
                f"{c['message_wall_us'] - base['message_wall_us']:>+9.1f} "
                f"{c['message_server_cpu_us'] - base['message_server_cpu_us']:>+8.1f}"
            )
    lines.append("gRPC server metrics: what is recorded")
    for kind, r in results["interceptor"]["recorded"].items():
        lines.append(f"  {kind}:")
        lines.extend(f"    {k}: {v}" for k, v in r.items())
    lines.append("JSON logs: per record")
    for name, r in results["logging"].items():
        lines.append(
            f"  {name:<28} {r['format_us']:>6} µs  traceback under {r['exception_key']}, "
            f"differs: {r['differs_from_ours'] or '-'}"
        )
    p = results["progress"]
    lines.append(
        f"progress: per update ours {p['update_us']['ours']} µs, tqdm {p['update_us']['tqdm']} µs; "
        f"{p['updates_per_GB_of_csv']} updates per GB of CSV"
    )
    lines.append("what each candidate adds")
    for name, c in results["candidates"].items():
        lines.append(
            f"  {name} {c['version']}: {c['installed_bytes'] / 1024:.0f} KiB in {c['installed_files']} files, "
            f"import {c['import_ms']} ms, needs {c['requires'] or '-'}, not in the lock: "
            f"{c['requires_missing_from_lock'] or '-'}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.libraries", description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=4000, help="unary health checks per round")
    parser.add_argument("--streams", type=int, default=40, help="CountPlays calls per round")
    parser.add_argument("--messages", type=int, default=100, help="messages per CountPlays call")
    parser.add_argument("--repeats", type=int, default=9, help="measured rounds (medians are reported)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-libraries-") as tmp:
        candidates = install_candidates(Path(tmp))
        # What each adds to the process that would use it: a service has grpc and prometheus_client
        # imported already, every process logging and json; the client is measured from scratch.
        modules = {
            "py-grpc-prometheus": ("py_grpc_prometheus.prometheus_server_interceptor", "grpc, prometheus_client"),
            "python-json-logger": ("pythonjsonlogger.json", "logging, json"),
            "tqdm": ("tqdm", "sys"),
        }
        for name, (module, already) in modules.items():
            candidates[name]["import_ms"] = import_ms(module, already)
        servers = [Server(kind) for kind in INTERCEPTORS]
        try:
            cost = measure_calls(servers, args.calls, args.streams, args.messages, args.repeats)
        finally:
            for server in servers:
                server.stop()
        recorded = {}
        for kind in INTERCEPTORS[1:]:
            server = Server(kind)  # fresh: counters start at zero
            try:
                recorded[kind] = recorded_calls(server)
            finally:
                server.stop()
        results = {
            "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
            "settings": vars(args) | {"out": str(args.out), "rows_per_message": ROWS_PER_MESSAGE},
            "candidates": candidates,
            "interceptor": {"cost": cost, "recorded": recorded},
            "logging": measure_logging(20_000, args.repeats),
            "progress": measure_progress(20_000, args.repeats),
        }
    print(report(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "serve":
        serve(sys.argv[2])
    else:
        sys.exit(main())
