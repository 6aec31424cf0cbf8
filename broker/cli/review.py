"""Reviewing a policy change: `ci-broker test` and `ci-broker diff` (contract section 10).

Both evaluate the policy only, so both load configs without the broker's signing keys
(`broker.policyload`): a pull request's pipeline has the config, not the keys.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from broker.cli.common import (
    EXIT_DENY,
    EXIT_ERROR,
    EXIT_OK,
    Subparsers,
    add_config_option,
    load,
    load_file,
)

if TYPE_CHECKING:
    from broker.config import Config

# `diff /dev/null NEW`: there is no old config (the policy file is new in this change).
NO_CONFIG = os.devnull


def register(sub: Subparsers) -> None:
    p = sub.add_parser("test", help="run table-driven policy tests (claims -> roles allowed/denied)")
    add_config_option(p)
    p.add_argument("tests", help="YAML file of test cases")
    p.add_argument("--junit", metavar="FILE", help="also write the results as JUnit XML")
    p.set_defaults(handler=test)

    p = sub.add_parser("diff", help="exactly which identities gain or lose each role between two configs")
    p.add_argument("old", help=f"the config before the change ({NO_CONFIG} if there was none)")
    p.add_argument("new", help="the config after the change")
    p.add_argument("--format", choices=("text", "json", "markdown"), default="text")
    p.add_argument("--exit-code", action="store_true", help="exit 1 when any role is gained by anyone")
    p.set_defaults(handler=diff)


def test(args: argparse.Namespace) -> int:
    from broker import policytest

    config = load(args, policy_only=True)
    if config is None:
        return EXIT_ERROR
    try:
        cases = policytest.load_cases(args.tests, config)
    except policytest.TestFileError as exc:
        print("\n".join(exc.messages), file=sys.stderr)
        return EXIT_ERROR
    outcomes = policytest.run(config, cases)
    print(policytest.report(outcomes))
    if args.junit:
        try:
            Path(args.junit).write_bytes(policytest.junit(outcomes, Path(args.tests).stem))
        except OSError as exc:
            print(f"error: {args.junit}: cannot write the JUnit report: {exc}", file=sys.stderr)
            return EXIT_ERROR
    return EXIT_OK if all(o.passed for o in outcomes) else EXIT_DENY


def diff(args: argparse.Namespace) -> int:
    from broker import diffreport
    from broker.policydiff import DiffError, diff_configs

    old = _empty_like(args.new) if args.old == NO_CONFIG else load_file(args.old, policy_only=True)
    new = load_file(args.new, policy_only=True)
    if old is None or new is None:
        return EXIT_ERROR
    try:
        result = diff_configs(old, new)
    except DiffError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(diffreport.render(result, args.format))
    return EXIT_DENY if args.exit_code and result.gained_anything else EXIT_OK


def _empty_like(path: str) -> Config | None:
    """No old config: the new one's server and providers with no role, so every role is gained."""
    from dataclasses import replace

    new = load_file(path, policy_only=True)
    return None if new is None else replace(new, file=NO_CONFIG, roles={}, deny=())
