"""`ci-broker serve`: the broker under gunicorn (`broker.server`)."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import TYPE_CHECKING

from broker.cli.common import AUDIT_LOG_ENV, EXIT_ERROR, EXIT_OK, Subparsers, add_config_option, load

if TYPE_CHECKING:
    from broker.metricslistener import MetricsListener


def register(sub: Subparsers) -> None:
    p = sub.add_parser("serve", help="run the broker under gunicorn")
    add_config_option(p)
    p.add_argument("--bind", default="127.0.0.1:8080", help="HOST:PORT (default 127.0.0.1:8080)")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes (default: 1 with the memory replay store, else CPU count)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        # The default has one home, broker.server.DEFAULT_THREADS; importing it here would load
        # gunicorn for every command.
        help="threads per worker (default: broker.server.DEFAULT_THREADS; see docs/operations.md)",
    )
    p.add_argument(
        "--metrics-bind",
        default=None,
        metavar="HOST:PORT",
        help="serve /metrics on this address only, not on --bind (see docs/operations.md)",
    )
    p.add_argument(
        "--audit-log",
        default=os.environ.get(AUDIT_LOG_ENV),
        help=f"append audit events to this file (default: stdout; ${AUDIT_LOG_ENV})",
    )
    p.add_argument(
        "--log-level",
        default=os.environ.get("CI_BROKER_LOG_LEVEL", "INFO"),
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        type=str.upper,
        help="operational log level (default INFO; $CI_BROKER_LOG_LEVEL)",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from broker.server import serve

    config = load(args)
    if config is None:
        return EXIT_ERROR
    workers = args.workers or (1 if config.server.replay_store == "memory" else (os.cpu_count() or 1))
    if config.server.replay_store == "memory" and workers > 1:
        print(
            "error: server.replay_store is memory, which each worker keeps separately: a token "
            "could be replayed once per worker. Use --workers 1 or a shared store "
            "(sqlite:///PATH for one host, redis:// for several).",
            file=sys.stderr,
        )
        return EXIT_ERROR
    problem = _replay_store_problem(config.server.replay_store)
    if problem:
        print(f"error: server.replay_store: {problem}", file=sys.stderr)
        return EXIT_ERROR
    if workers < 1 or (args.threads is not None and args.threads < 1):
        print("error: --workers and --threads must be at least 1", file=sys.stderr)
        return EXIT_ERROR
    listener = None
    if args.metrics_bind is not None:
        listener, problem = _metrics_listener(args.metrics_bind, args.bind)
        if problem:
            print(f"error: --metrics-bind {args.metrics_bind}: {problem}", file=sys.stderr)
            return EXIT_ERROR
    serve(
        config,
        args.bind,
        workers,
        args.threads,
        audit_log=args.audit_log,
        log_level=args.log_level,
        metrics_listener=listener,
    )
    return EXIT_OK


def _metrics_listener(bind: str, main_bind: str) -> tuple[MetricsListener | None, str | None]:
    """Bind the metrics address now, so a bad or busy one fails before gunicorn starts."""
    from broker.metricslistener import MetricsListener, parse_bind

    try:
        address = parse_bind(bind)
    except ValueError as exc:
        return None, str(exc)
    with contextlib.suppress(ValueError):  # --bind may be unix:PATH, which gunicorn checks
        if address[1] == parse_bind(main_bind)[1]:
            return None, "the port must differ from --bind's"
    try:
        return MetricsListener(bind), None
    except OSError as exc:
        return None, f"cannot listen there: {exc.strerror or exc}"


def _replay_store_problem(url: str) -> str | None:
    """Open the store once before forking, so a bad path fails here and not in every worker.

    An unreachable redis is not a problem: the broker answers 503 until it returns.
    """
    from broker.errors import Unavailable
    from broker.replay import open_store

    try:
        store = open_store(url)
    except (ValueError, Unavailable) as exc:
        return getattr(exc, "reason", None) or str(exc)
    getattr(store, "close", lambda: None)()
    return None
