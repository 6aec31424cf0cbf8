"""What every command shares: exit codes, the `--config` option and loading a config."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    from broker.config import Config

EXIT_OK, EXIT_DENY, EXIT_ERROR = 0, 1, 2
CONFIG_ENV = "CI_BROKER_CONFIG"
# `serve --audit-log`'s default, and where block, unblock and revoke write their events too.
AUDIT_LOG_ENV = "CI_BROKER_AUDIT_LOG"

Handler = Callable[[argparse.Namespace], int]
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        default=os.environ.get(CONFIG_ENV),
        help=f"config file (default: ${CONFIG_ENV})",
    )


def load(args: argparse.Namespace, *, policy_only: bool = False) -> Config | None:
    """The config named by `--config`, or None after printing every finding with its key path."""
    if not args.config:
        print(f"error: --config FILE (or {CONFIG_ENV}) is required", file=sys.stderr)
        return None
    return load_file(args.config, policy_only=policy_only)


def load_file(path: str, *, policy_only: bool = False) -> Config | None:
    """A config file, or None after printing every finding. `policy_only` loads it without its
    signing key files (`broker.policyload`), for commands that only evaluate the policy."""
    from broker.config import ConfigError, load_config
    from broker.policyload import load_policy

    try:
        return load_policy(path) if policy_only else load_config(path)
    except ConfigError as exc:
        for finding in exc.findings:
            print(finding.render(exc.file), file=sys.stderr)
        return None
