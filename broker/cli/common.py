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

Handler = Callable[[argparse.Namespace], int]
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        default=os.environ.get(CONFIG_ENV),
        help=f"config file (default: ${CONFIG_ENV})",
    )


def load(args: argparse.Namespace) -> Config | None:
    """The config named by `--config`, or None after printing every finding with its key path."""
    from broker.config import ConfigError, load_config

    if not args.config:
        print(f"error: --config FILE (or {CONFIG_ENV}) is required", file=sys.stderr)
        return None
    try:
        return load_config(args.config)
    except ConfigError as exc:
        for finding in exc.findings:
            print(finding.render(exc.file), file=sys.stderr)
        return None
