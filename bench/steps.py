"""What each of the broker's own steps costs, measured in process.

Calls the WSGI apps of `bench.factories` directly on one thread (no HTTP server, no load generator),
against the same instant STS as `bench.run`, and reports CPU time per exchange:

- floor, and the floor with the broker's STS client;
- the broker as `serve` builds it (prometheus multiprocess mode, audit to a file);
- the broker with one of its steps switched off at a time (diagnostic only: each variant is the
  same app with one function replaced for the duration of its rounds).

The apps run in interleaved rounds and each variant is compared with the broker round by round
(paired differences), so drift in a shared machine's load cancels out. A step's figure is what
it costs among everything else an exchange does, usually several times what the same step costs
in a tight loop of its own.

    python -m bench.steps            # 30 rounds of 300 exchanges per app (a few minutes)
    python -m bench.steps --quick    # proves the script works (CI); its figures mean nothing
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.factories import LISTED, broker_app, floor_app, variants
from bench.harness import ROOT, core_split, mint_tokens, signing_key, wait_http, write_config, wsgi_environ


def exchange_all(app: Any, tokens: list[str], body: bytes) -> None:
    """Every token through the app; raises unless each exchange was granted."""
    for token in tokens:
        statuses: list[str] = []

        def start_response(
            status: str, headers: Any, exc_info: Any = None, seen: list[str] = statuses
        ) -> None:
            seen.append(status)

        result = app(wsgi_environ(token, body), start_response)
        b"".join(result)
        getattr(result, "close", lambda: None)()
        if not statuses[0].startswith("200"):
            raise RuntimeError(f"exchange refused: {statuses[0]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="2 rounds of 20 exchanges")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 30)")
    parser.add_argument("--exchanges", type=int, help="exchanges per app per round (default 300)")
    args = parser.parse_args(argv)
    rounds = args.rounds or (2 if args.quick else 30)
    per_round = args.exchanges or (20 if args.quick else 300)

    with tempfile.TemporaryDirectory(prefix="ci-broker-steps-") as tmp:
        work = Path(tmp)
        # As under `serve`: metric samples in files, set before prometheus_client is imported.
        (work / "metrics").mkdir()
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(work / "metrics")
        with MeasuredApps(work) as (apps, mint):
            steps = variants()
            names = [*apps, *steps]
            tokens = mint(len(names) * (rounds * per_round + 20))
            body = json.dumps({"role": "bench-deploy"}).encode()
            cpu: dict[str, list[float]] = {name: [] for name in names}
            for round_ in range(-1, rounds):  # round -1 warms every app up and is not counted
                for name in names:
                    app = apps.get(name, apps["broker"])
                    batch = [next(tokens) for _ in range(per_round if round_ >= 0 else 20)]
                    with ExitStack() as patched:
                        for patch in steps[name]() if name in steps else []:
                            patched.enter_context(patch)
                        start = time.thread_time()
                        exchange_all(app, batch, body)
                        spent = time.thread_time() - start
                    if round_ >= 0:
                        cpu[name].append(spent / len(batch) * 1e6)
    print(report(cpu, rounds, per_round))
    return 0


class MeasuredApps:
    """The floor, the floor with the broker's STS client and the broker, with their STS and issuer."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.stack = ExitStack()

    def __enter__(self) -> tuple[dict[str, Any], Callable[[int], Iterator[str]]]:
        from cryptography.hazmat.primitives import serialization

        from broker.logs import configure_audit
        from broker.sandbox.issuer import LocalIssuer
        from broker.sandbox.stack import free_port

        # As in bench.run: the measured apps on the last core, the STS on the others.
        cores = core_split()
        pin = ["taskset", "-c", cores["load"]] if cores else []
        port = free_port()
        sts = subprocess.Popen(
            [
                *pin,
                sys.executable,
                "-m",
                "bench.apps",
                "sts",
                "--bind",
                f"127.0.0.1:{port}",
                "--threads",
                "4",
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.stack.callback(lambda: (sts.terminate(), sts.wait(30)))
        sts_url = f"http://127.0.0.1:{port}"
        wait_http(sts_url, sts, 60)
        issuer = LocalIssuer().start()
        self.stack.callback(issuer.stop)
        key = signing_key(self.work)
        audience = "http://127.0.0.1:8080"
        config = write_config(self.work / "broker.yaml", audience, issuer.url, sts_url, key)
        public = issuer.key.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        apps = {
            "floor": floor_app(public, key.read_bytes(), sts_url),
            "floor, broker's STS client": floor_app(public, key.read_bytes(), sts_url, brokers_client=True),
            "broker": broker_app(str(config), 300.0),
        }
        # The audit events on stdout, as `serve` writes them by default and bench/run.py measures
        # them, but with stdout sent to a file rather than onto this script's output.
        audit_out = (self.work / "audit.log").open("a", encoding="utf-8")
        self.stack.callback(audit_out.close)
        configure_audit(stream=audit_out)

        def mint(count: int) -> Iterator[str]:
            path = mint_tokens(issuer, audience, count, self.work / "tokens.txt")
            return iter(path.read_text().split())

        if cores:
            os.sched_setaffinity(0, {int(cores["server"])})
        return apps, mint

    def __exit__(self, *exc: Any) -> None:
        self.stack.close()


def report(cpu: dict[str, list[float]], rounds: int, per_round: int) -> str:
    broker = cpu["broker"]
    lines = [
        f"CPU per exchange, in process: {rounds} interleaved rounds of {per_round} exchanges per app",
        "",
        f"{'app':<38}{'median us':>11}{'vs broker us':>14}{'+-':>7}",
    ]
    for name, values in cpu.items():
        paired = [v - b for v, b in zip(values, broker, strict=True)]
        spread = statistics.stdev(paired) / math.sqrt(len(paired)) if len(paired) > 1 else 0.0
        lines.append(
            f"{name:<38}{statistics.median(values):>11.0f}{statistics.mean(paired):>+14.0f}{spread:>7.0f}"
        )
    lines += [
        "",
        "vs broker: mean paired difference per exchange (+- its standard error); a step switched",
        "off shows what it costs the broker.",
    ]
    if LISTED in cpu:
        floor = statistics.median(cpu["floor, broker's STS client"])
        listed = -statistics.mean(v - b for v, b in zip(cpu[LISTED], broker, strict=True))
        own = statistics.median(broker) - floor
        lines += [
            "",
            f"policy, replay, audit, logging and metrics together: {listed:.0f} us per exchange, "
            f"{listed / floor:.1%} of the floor with the broker's STS client",
            f"all of the broker's own steps: {own:.0f} us, {own / floor:.1%} of that floor",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
