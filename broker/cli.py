"""The `ci-broker` command: serve, check, explain, keygen, demo (contract section 1), and the
operator commands discovery and keys (`broker.opscli`)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from broker.config import Config, ConfigError, load_config

if TYPE_CHECKING:
    from broker.keys import SigningKey

EXIT_OK, EXIT_DENY, EXIT_ERROR = 0, 1, 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ci-broker", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--config",
            default=os.environ.get("CI_BROKER_CONFIG"),
            help="config file (default: $CI_BROKER_CONFIG)",
        )

    p = sub.add_parser("serve", help="run the broker under gunicorn")
    with_config(p)
    p.add_argument("--bind", default="127.0.0.1:8080", help="HOST:PORT (default 127.0.0.1:8080)")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes (default: 1 with the memory replay store, else CPU count)",
    )
    # 16: enough to overlap a ~50 ms cloud round trip on one core (bench/RESULTS.md).
    p.add_argument("--threads", type=int, default=16, help="threads per worker (default 16)")
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

    p = sub.add_parser("check", help="validate a config and warn about risky rules")
    with_config(p)

    p = sub.add_parser("explain", help="evaluate the policy offline for a claims set")
    with_config(p)
    p.add_argument("--role", required=True)
    p.add_argument("--claims", required=True, help="JSON file with the token's claims")
    p.add_argument("--provider", help="provider name (default: the one whose issuer equals the claims' iss)")

    p = sub.add_parser("keygen", help="write a new PEM signing key (mode 0600)")
    p.add_argument("--alg", choices=("ES256", "RS256"), default="ES256")
    p.add_argument("--out", required=True)

    p = sub.add_parser("demo", help="run the whole flow locally with no config and no cloud account")
    p.add_argument("--serve", action="store_true", help="keep everything running and print curl commands")

    from broker import opscli

    ops = opscli.add_commands(sub, with_config)

    args = parser.parse_args(argv)
    handler = {
        "serve": cmd_serve,
        "check": cmd_check,
        "explain": cmd_explain,
        "keygen": cmd_keygen,
        "demo": cmd_demo,
        **ops,
    }[args.command]
    return handler(args)


def _load(args: argparse.Namespace) -> Config | None:
    if not args.config:
        print("error: --config FILE (or CI_BROKER_CONFIG) is required", file=sys.stderr)
        return None
    try:
        return load_config(args.config)
    except ConfigError as exc:
        for finding in exc.findings:
            print(finding.render(exc.file), file=sys.stderr)
        return None


def cmd_check(args: argparse.Namespace) -> int:
    from broker.lint import lint

    config = _load(args)
    if config is None:
        return EXIT_ERROR
    findings = lint(config)
    for finding in findings:
        print(finding.render(config.file))
    print(f"ok: {len(config.roles)} role(s), {len(config.providers)} provider(s), {len(findings)} warning(s)")
    return EXIT_OK


def cmd_explain(args: argparse.Namespace) -> int:
    from broker.explain import explain

    config = _load(args)
    if config is None:
        return EXIT_ERROR
    try:
        from broker import strictjson

        claims = strictjson.loads(Path(args.claims).read_bytes())
    except (OSError, ValueError) as exc:
        print(f"error: {args.claims}: cannot read claims JSON: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if not isinstance(claims, dict):
        print(f"error: {args.claims}: claims must be a JSON object", file=sys.stderr)
        return EXIT_ERROR
    try:
        text, allowed = explain(config, args.role, claims, args.provider)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(text)
    return EXIT_OK if allowed else EXIT_DENY


def write_new_key(path: str, alg: str) -> SigningKey | None:
    """Write a new signing key, or print why not (never overwrites) and return None."""
    from broker.keys import write_private_key

    try:
        return write_private_key(Path(path), alg)
    except FileExistsError:
        print(f"error: {path} exists; refusing to overwrite a key", file=sys.stderr)
    except OSError as exc:
        print(f"error: cannot write {path}: {exc.strerror}", file=sys.stderr)
    return None


def cmd_keygen(args: argparse.Namespace) -> int:
    key = write_new_key(args.out, args.alg)
    if key is None:
        return EXIT_ERROR
    print(f"wrote {args.alg} key {args.out} (kid {key.kid})")
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    from broker.server import serve

    config = _load(args)
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
    if workers < 1 or args.threads < 1:
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


def cmd_demo(args: argparse.Namespace) -> int:
    from broker.demo import run_demo

    return run_demo(serve=args.serve)
