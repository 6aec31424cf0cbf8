"""Commands on the policy itself: `check` and `explain`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from broker.cli.common import EXIT_DENY, EXIT_ERROR, EXIT_OK, Subparsers, add_config_option, load


def register(sub: Subparsers) -> None:
    p = sub.add_parser("check", help="validate a config and warn about risky rules")
    add_config_option(p)
    p.add_argument(
        "--policy-only",
        action="store_true",
        help="validate everything but the signing key files (a pull request's pipeline has no keys)",
    )
    p.set_defaults(handler=check)

    p = sub.add_parser("explain", help="evaluate the policy offline for a claims set")
    add_config_option(p)
    p.add_argument("--role", required=True)
    p.add_argument("--claims", required=True, help="JSON file with the token's claims")
    p.add_argument("--provider", help="provider name (default: the one whose issuer equals the claims' iss)")
    p.set_defaults(handler=explain)


def check(args: argparse.Namespace) -> int:
    from broker.lint import lint

    config = load(args, policy_only=args.policy_only)
    if config is None:
        return EXIT_ERROR
    findings = lint(config)
    for finding in findings:
        print(finding.render(config.file))
    errors = sum(f.level == "error" for f in findings)
    summary = f"{len(config.roles)} role(s), {len(config.providers)} provider(s), {len(findings) - errors} warning(s)"
    if errors:
        print(f"failed: {summary}, {errors} error(s)")
        return EXIT_ERROR
    print(f"ok: {summary}")
    return EXIT_OK


def explain(args: argparse.Namespace) -> int:
    from broker import strictjson
    from broker.explain import explain as explain_decision

    config = load(args)
    if config is None:
        return EXIT_ERROR
    try:
        claims = strictjson.loads(Path(args.claims).read_bytes())
    except (OSError, ValueError) as exc:
        print(f"error: {args.claims}: cannot read claims JSON: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if not isinstance(claims, dict):
        print(f"error: {args.claims}: claims must be a JSON object", file=sys.stderr)
        return EXIT_ERROR
    try:
        text, allowed = explain_decision(config, args.role, claims, args.provider)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(text)
    return EXIT_OK if allowed else EXIT_DENY
