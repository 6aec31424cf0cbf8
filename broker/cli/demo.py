"""`ci-broker demo`: the embedded default (`broker.demo`)."""

from __future__ import annotations

import argparse

from broker.cli.common import Subparsers


def register(sub: Subparsers) -> None:
    p = sub.add_parser("demo", help="run the whole flow locally with no config and no cloud account")
    p.add_argument("--serve", action="store_true", help="keep everything running and print curl commands")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from broker.demo import run_demo

    return run_demo(serve=args.serve)
