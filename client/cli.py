"""The `music-analytics` command: run, serve, demo, generate, report, evaluate."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from music_analytics.services.common import contract

EXIT_OK, EXIT_SERVICE, EXIT_INPUT, EXIT_BAD_ROW, EXIT_NOT_STORED = 0, 1, 2, 3, 4
DEFAULT_RESULTS = "results/run_grpc_metrics.json"
DEFAULT_DATA = "data/stream_data.csv"
SERVICE_NAMES = tuple(contract.SERVICES)


def _add_run_arguments(p: argparse.ArgumentParser, data_required: bool) -> None:
    p.add_argument(
        "--data",
        required=data_required,
        default=None if data_required else DEFAULT_DATA,
        help="listening events: our CSV (header user_id,song_id,artist,duration,timestamp), or a ListenBrainz, "
        "Spotify or Last.fm export; a file, a folder, a glob or a zip",
    )
    p.add_argument(
        "--format",
        help="the input's format: csv, listenbrainz, spotify, lastfm-1k, lastfm-scrobbles or playcounts "
        "(default: told from the content)",
    )
    p.add_argument("--user", metavar="NAME", help="the user of an export that does not name one")
    p.add_argument("--out", default=DEFAULT_RESULTS, help=f"results JSON path (default {DEFAULT_RESULTS})")
    p.add_argument(
        "--user-stats",
        metavar="PATH",
        help="per-user statistics as JSON Lines (default: --out with .json replaced by .users.jsonl)",
    )
    p.add_argument(
        "--timezone",
        default="UTC",
        metavar="AREA/CITY",
        help="IANA time zone the time statistics (hour, weekday, day, month, year) are computed in (default UTC)",
    )
    p.add_argument(
        "--personalized-n",
        type=_non_negative_int,
        default=10,
        metavar="N",
        help="artists recommended to each user in the per-user statistics, learned from everyone's plays "
        "(default 10; 0: none)",
    )
    p.add_argument(
        "--recommender",
        default="",
        metavar="ALGORITHM",
        help="the recommender's algorithm (default: the service's, bm25; see `evaluate --help`)",
    )
    p.add_argument("--seed", type=_non_negative_int, default=0, help="seeds the recommender (default 0)")
    p.add_argument("--strict", action="store_true", help="stop at the first bad row (exit 3) instead of skipping it")
    p.add_argument("--quiet", action="store_true", help="print no summary")


def user_stats_path(out: str, user_stats: str | None) -> Path:
    """Where the per-user JSON Lines go: as asked, else beside the results JSON."""
    if user_stats:
        return Path(user_stats)
    path = Path(out)
    return path.with_name(path.name.removesuffix(".json") + ".users.jsonl")


def _check_timezone(name: str) -> str | None:
    """Why ``name`` is not a usable time zone, or None."""
    from music_analytics.services.common.clock import UnknownTimeZoneError, load_zone

    try:
        load_zone(name)
    except UnknownTimeZoneError as exc:
        return f"--timezone: {exc}"
    return None


def _check_recommender(name: str) -> str | None:
    """Why ``name`` is not an algorithm the Recommendation service has, or None (empty: its default)."""
    if not name:
        return None
    # Only a named algorithm needs the model's list: a run with the default loads none of the model.
    from music_analytics.services.recommendation.model import ALGORITHMS

    if name not in ALGORITHMS:
        return f"--recommender: unknown algorithm {name!r}; expected one of {', '.join(ALGORITHMS)}"
    return None


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _replica_counts(text: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or name not in SERVICE_NAMES:
            raise argparse.ArgumentTypeError(f"{item!r}: expected NAME=N with NAME one of {', '.join(SERVICE_NAMES)}")
        try:
            counts[name] = _positive_int(value)
        except (ValueError, argparse.ArgumentTypeError) as exc:
            raise argparse.ArgumentTypeError(f"{item!r}: {exc}") from None
    return counts


def _add_run_command_arguments(run: argparse.ArgumentParser) -> None:
    _add_run_arguments(run, data_required=True)
    for service in contract.SERVICES.values():
        name = service.name
        env = f"{name.upper()}_ADDR"
        run.add_argument(
            f"--{name}",
            default=os.environ.get(env, f"localhost:{service.grpc_port}"),
            help=f"gRPC target: host:port, ipv4:a:p,b:p or dns:///name:port (env {env})",
        )
    run.add_argument(
        "--wait-ready",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long to wait, for every service at once, until each reports SERVING (names that do not "
        "resolve yet included); a run whose services never come up fails after about this long. Also how long "
        "to wait for a replacement when a replica is lost (default 10)",
    )
    run.add_argument(
        "--expect-replicas",
        type=_replica_counts,
        default={},
        metavar="NAME=N[,NAME=N]",
        help="replicas to wait for, e.g. mapreduce=2,userbehavior=2 (default: every address a target lists "
        "when first resolved); after --wait-ready the run goes on with those that serve",
    )
    from music_analytics.client import tls

    for option in (tls.CA, tls.CERT, tls.KEY):
        run.add_argument(option.flag, metavar="PEM", help=f"{option.help} (env {option.env})")
    run.add_argument(tls.SERVER_NAME.flag, metavar="NAME", help=f"{tls.SERVER_NAME.help} (env {tls.SERVER_NAME.env})")
    run.add_argument("--pushgateway", metavar="URL", help="push the run's metrics to this Prometheus Pushgateway")
    run.add_argument(
        "--results-configmap", metavar="NAME", help="in Kubernetes: also write the summary to this ConfigMap"
    )


def _add_serve_command_arguments(serve: argparse.ArgumentParser) -> None:
    from music_analytics.services.common.config import add_serve_arguments

    add_serve_arguments(serve)


def _add_demo_command_arguments(demo: argparse.ArgumentParser) -> None:
    _add_run_arguments(demo, data_required=False)
    demo.add_argument("--replicas", type=_positive_int, default=1, help="replicas of MapReduce and UserBehavior")


def _add_generate_command_arguments(parser: argparse.ArgumentParser) -> None:
    from music_analytics.client import generate

    generate.add_arguments(parser)


def _add_report_command_arguments(parser: argparse.ArgumentParser) -> None:
    from music_analytics.client import report

    report.add_arguments(parser)


def _add_evaluate_command_arguments(parser: argparse.ArgumentParser) -> None:
    from music_analytics.client import evaluate

    evaluate.add_arguments(parser)


# Each command's one-line help and what adds its flags. The flags of generate, report, evaluate
# and serve are defined in their own modules, and importing those costs a `run` tens of
# milliseconds it never uses (their code, the model, the server settings): a command line only
# adds the flags of the command it names.
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]] = {
    "run": ("run the pipeline against running services", _add_run_command_arguments),
    "serve": ("run one service", _add_serve_command_arguments),
    "demo": ("start the services locally, run the pipeline, stop them", _add_demo_command_arguments),
    "generate": ("write realistic synthetic listening events", _add_generate_command_arguments),
    "report": ("one self-contained HTML page from a run's results", _add_report_command_arguments),
    "evaluate": (
        "offline metrics of the artist recommender against most-popular",
        _add_evaluate_command_arguments,
    ),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; with ``command``, only that command's flags are added (every
    command is still listed, and parses the same)."""
    parser = argparse.ArgumentParser(prog="music-analytics", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_line, add_arguments) in COMMANDS.items():
        subparser = sub.add_parser(name, help=help_line)
        if command is None or command == name:
            add_arguments(subparser)
    return parser


def _command_named(argv: Sequence[str]) -> str:
    """The command ``argv`` names: its first word that is not an option (the top level has no
    option that takes a value), or "" when there is none."""
    return next((word for word in argv if not word.startswith("-")), "")


def main(argv: Sequence[str] | None = None) -> int:
    # gRPC core logs every failed TLS handshake (and more) at INFO on stderr, as plain text: the
    # client says what failed in its own one-line error, the services log JSON lines only. Read
    # once, when grpc is first imported: set it before that. A user's own setting wins.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    words = sys.argv[1:] if argv is None else list(argv)
    # No command, or one that is not ours: nothing is parsed past the top level, and argparse's
    # usage or "invalid choice" error needs no command's flags.
    args = build_parser(_command_named(words)).parse_args(words)
    if args.command == "serve":
        return _serve(args)
    if args.command == "run":
        return _run(args)
    if args.command == "demo":
        return _demo(args)
    if args.command == "generate":
        from music_analytics.client import generate

        return generate.main(args)
    if args.command == "report":
        from music_analytics.client import report

        return report.main(args)
    if args.command == "evaluate":
        from music_analytics.client import evaluate

        return evaluate.main(args)
    raise AssertionError(args.command)


def _serve(args: argparse.Namespace) -> int:
    from music_analytics.services.common.server import serve_from_args

    return serve_from_args(args)


def _progress_printer() -> object | None:
    if not sys.stderr.isatty():
        return None
    start = time.monotonic()

    def show(done: int, total: int) -> None:
        fraction = done / total if total else 1.0
        bar = "#" * int(fraction * 30)
        rate = done / max(time.monotonic() - start, 1e-9) / 1e6
        sys.stderr.write(f"\r[{bar:<30}] {fraction:6.1%} {rate:7.1f} MB/s")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return show


def _run(args: argparse.Namespace) -> int:
    from music_analytics.client.csv_source import BadRowError, InputError
    from music_analytics.client.pipeline import PipelineConfig, ServiceError, run_pipeline
    from music_analytics.client.results import print_summary, to_json, write_json
    from music_analytics.client.targets import TargetError
    from music_analytics.client.tls import TlsSettingError, load_client_tls
    from music_analytics.services.common import logging as json_logging

    json_logging.configure("client", os.environ.get("MUSIC_ANALYTICS_LOG_LEVEL", "warning"))
    problem = _check_timezone(args.timezone) or _check_recommender(args.recommender)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_INPUT
    try:
        tls = load_client_tls(args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name)
    except TlsSettingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    config = PipelineConfig(
        data=Path(args.data),
        mapreduce=args.mapreduce,
        userbehavior=args.userbehavior,
        recommendation=args.recommendation,
        strict=args.strict,
        wait_ready=args.wait_ready,
        expected_replicas=args.expect_replicas,
        progress=_progress_printer(),
        tls=tls,
        timezone=args.timezone,
        user_stats=user_stats_path(args.out, args.user_stats),
        format=args.format,
        user=args.user,
        personalized_n=args.personalized_n,
        algorithm=args.recommender,
        seed=args.seed,
    )
    try:
        result = run_pipeline(config)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except BadRowError as exc:
        print(f"error: {exc} (--strict stops at the first bad row)", file=sys.stderr)
        return EXIT_BAD_ROW
    except TargetError as exc:
        print(f"error: bad service target: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_SERVICE
    except OSError as exc:
        print(f"error: cannot write results to {exc.filename}: {exc.strerror}", file=sys.stderr)
        return EXIT_INPUT
    document = to_json(result)
    out = Path(args.out)
    try:
        write_json(document, out)
    except OSError as exc:
        print(f"error: cannot write results to {out}: {exc.strerror}", file=sys.stderr)
        return EXIT_INPUT
    if not args.quiet:
        print_summary(document, sys.stdout, args.data, str(out))
    if result.personalized_skipped:
        print(
            f"warning: the per-user statistics have no personalized artists: {result.personalized_skipped}. "
            "Give the Recommendation service more memory (--max-call-bytes, or its memory limit), or run "
            "with --personalized-n 0",
            file=sys.stderr,
        )
    _push_metrics(args, document)
    if args.results_configmap:
        from music_analytics.client.k8s_results import ResultsPublishError, publish_results_configmap

        # Where the results were asked to be stored, a run that could not store them has failed:
        # a Job that exits 0 here would report success with nothing to show for it.
        try:
            publish_results_configmap(args.results_configmap, _summary(document))
        except ResultsPublishError as exc:
            print(f"error: results not stored: {exc}", file=sys.stderr)
            return EXIT_NOT_STORED
    return EXIT_OK


def _push_metrics(args: argparse.Namespace, document: dict) -> None:
    """The Pushgateway is monitoring, not results: a failed push is reported but does not fail the run."""
    log = logging.getLogger("music_analytics.client")
    if getattr(args, "pushgateway", None):
        try:
            from music_analytics.client.telemetry import push_pipeline_metrics

            push_pipeline_metrics(
                args.pushgateway,
                events_read=document["events_processed"] + document["rows_rejected"],
                rows_rejected=document["rows_rejected_by_reason"],
                stage_seconds={
                    k.removesuffix("_time").replace("total_workflow", "total"): v
                    for k, v in document["performance"].items()
                    if k.endswith("_time")
                },
                events_processed=document["events_processed"],
            )
        except Exception as exc:
            print(f"warning: could not push metrics to {args.pushgateway}: {exc}", file=sys.stderr)
            log.warning("pushgateway push failed", extra={"error": str(exc)})


def _summary(document: dict) -> dict:
    """The small part of the results that fits a ConfigMap (every user does not)."""
    return {
        "events_processed": document["events_processed"],
        "rows_rejected": document["rows_rejected"],
        "performance": document["performance"],
        "top_songs": document["mapreduce_results"]["top_songs"],
        "top_users": document["userbehavior_results"]["top_users"],
        "trending_songs": document["recommendation_results"]["trending_songs"],
        "users": len(document["userbehavior_results"]["users"]),
        "rejected_examples": document["rejected_examples"][:5],
        # How the run went in the cluster: replicas used, lost shards rebuilt elsewhere.
        "replicas": document["replicas"],
        "replica_recoveries": document["replica_recoveries"],
        # Site-wide only: the per-user statistics are a file on the results volume. Listens per
        # day are left out too: a day per line since the first listen would outgrow a ConfigMap
        # (1 MiB) past about 18 years of history; the results JSON on the volume has them.
        "listening_stats": _without_days(document["listening_stats"]),
        "user_stats": document["user_stats"],
        # The model only; each user's artists are in the per-user file.
        "personalized_recommendations": document["personalized_recommendations"],
    }


def _without_days(stats: dict) -> dict:
    activity = stats.get("listening_activity", {})
    return stats | {"listening_activity": {k: v for k, v in activity.items() if k != "day"}}


def _demo(args: argparse.Namespace) -> int:
    import tempfile

    from music_analytics.client.demo import LocalServices
    from music_analytics.client.sources import InputError, open_source

    try:
        open_source(args.data, format=args.format, user=args.user)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    problem = _check_timezone(args.timezone)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_INPUT
    with tempfile.TemporaryDirectory(prefix="music-analytics-demo-") as logs:
        print(f"Starting services ({args.replicas} replica(s) of each streaming service)...", file=sys.stderr)
        services = LocalServices(replicas=args.replicas, log_dir=Path(logs))
        try:
            services.start()
        except RuntimeError as exc:  # names the service and ends with its last log lines
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_SERVICE
        try:
            for p in services.all():
                print(
                    f"  {p.name:<15} gRPC {p.address}  metrics http://127.0.0.1:{p.metrics_port}/metrics",
                    file=sys.stderr,
                )
            run_args = [
                "run",
                "--data",
                args.data,
                "--out",
                args.out,
                "--timezone",
                args.timezone,
                "--user-stats",
                str(user_stats_path(args.out, args.user_stats)),
                "--mapreduce",
                services.target("mapreduce"),
                "--userbehavior",
                services.target("userbehavior"),
                "--recommendation",
                services.target("recommendation"),
            ]
            run_args += ["--personalized-n", str(args.personalized_n), "--seed", str(args.seed)]
            if args.recommender:
                run_args += ["--recommender", args.recommender]
            if args.format:
                run_args += ["--format", args.format]
            if args.user is not None:
                run_args += ["--user", args.user]
            if args.strict:
                run_args.append("--strict")
            if args.quiet:
                run_args.append("--quiet")
            code = main(run_args)
        finally:
            services.stop()
    if code == EXIT_OK:
        from music_analytics.client.report import ReportError, default_report_path, write_report

        try:
            page = write_report(
                Path(args.out), user_stats_path(args.out, args.user_stats), default_report_path(Path(args.out))
            )
        except ReportError as exc:
            print(f"error: report not written: {exc}", file=sys.stderr)
            return EXIT_INPUT
        if not args.quiet:
            print(f"Report written to {page}")
    return code
