"""Serve one of the benchmark's apps (`bench.factories`) under the gunicorn settings `serve` uses.

    python -m bench.apps {hello,floor,sts,broker} --bind HOST:PORT [...]

`--worker-class sync` serves the floor as the issue's deployed-shape floor does (sync workers,
one request at a time each); anything else runs gthread workers like `ci-broker serve`.
"""

from __future__ import annotations

import argparse
import os
import shutil
from typing import Any

from bench.factories import broker_app, floor_app, hello_app, sts_app


def main() -> None:
    from gunicorn.app.base import BaseApplication

    from broker.server import apply_options, gunicorn_options, prepare_metrics_dir

    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=("hello", "floor", "sts", "broker"))
    parser.add_argument(
        "--brokers-sts-client", action="store_true", help="floor: use the broker's STS client"
    )
    parser.add_argument("--bind", required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--worker-class", choices=("gthread", "sync"), default="gthread")
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--issuer-public-key")
    parser.add_argument("--signing-key")
    parser.add_argument("--sts-url")
    parser.add_argument("--config")
    parser.add_argument("--jwks-refresh", type=float, default=300.0)
    parser.add_argument(
        "--without-listed",
        action="store_true",
        help="broker: policy, replay, audit, logging and metrics off (diagnostic)",
    )
    args = parser.parse_args()

    def load() -> Any:
        if args.kind == "hello":
            return hello_app()
        if args.kind == "sts":
            return sts_app(args.delay)
        if args.kind == "floor":
            with open(args.issuer_public_key, "rb") as f, open(args.signing_key, "rb") as k:
                return floor_app(f.read(), k.read(), args.sts_url, args.brokers_sts_client)
        return broker_app(args.config, args.jwks_refresh, args.without_listed)

    options = gunicorn_options(args.bind, args.workers, args.threads, "WARNING")
    options["worker_class"] = args.worker_class

    class App(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            apply_options(self.cfg, options)

        def load(self) -> Any:
            return load()

    metrics_dir, made = prepare_metrics_dir() if args.kind == "broker" else ("", False)
    master = os.getpid()
    try:
        App().run()
    finally:
        if made and os.getpid() == master:  # workers leave through this frame too
            shutil.rmtree(metrics_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
