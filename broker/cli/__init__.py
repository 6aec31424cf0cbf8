"""The `ci-broker` command (contract section 1 and its extensions).

Each command group is one module of this package with a `register(sub)` that adds its parsers and
sets each one's `handler`; `main` only wires them. Shared pieces (loading a config, exit codes)
live in `broker.cli.common`. Heavy imports stay inside the handlers, so `ci-broker --help` and
`check` start fast.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from broker.cli import common, demo, incident, keys, policy, review, serve

COMMAND_GROUPS = (serve, policy, review, keys, incident, demo)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ci-broker",
        description="Exchange CI OIDC tokens for short-lived cloud credentials.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for group in COMMAND_GROUPS:
        group.register(sub)
    args = parser.parse_args(argv)
    handler: common.Handler = args.handler
    return handler(args)
