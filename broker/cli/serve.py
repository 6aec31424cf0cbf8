"""`ci-broker serve`: the broker under gunicorn (`broker.server`)."""

from __future__ import annotations

import argparse
import os
import sys

from broker.cli.common import EXIT_ERROR, EXIT_OK, Subparsers, add_config_option, load


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
        "--audit-log",
        default=os.environ.get("CI_BROKER_AUDIT_LOG"),
        help="append audit events to this file (default: stdout; $CI_BROKER_AUDIT_LOG)",
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
    serve(config, args.bind, workers, args.threads, audit_log=args.audit_log, log_level=args.log_level)
    return EXIT_OK


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
