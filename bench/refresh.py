"""What a session refresh (`POST /v1/refresh`) costs beside an exchange (`POST /v1/exchange`).

Calls the broker's WSGI app directly on one thread (no HTTP server, no load generator), against
the sandbox's local STS (moto behind the verifying stand-in, on its own threads), once per store
(memory, sqlite, and redis when `redis-server` is installed), in interleaved rounds: a batch of
exchanges (a fresh CI token each), then a batch of refreshes (one session's token chain).
It reports, per request, the broker thread's CPU time and the wall-clock latency, each as the
median over rounds of the batch means, and the refresh-to-exchange ratio.

A refresh skips what an exchange spends on the CI token (strict parsing, the signature check, the
claim checks, the single-use record) and instead reads its session (a token lookup), makes the
same policy decision on the recorded claims, and rotates the refresh token (one atomic write).
Both sign the same assertion and make the same STS call.

    python bench/refresh.py            # 10 rounds of 40 requests of each kind per store
    python bench/refresh.py --quick    # proves the script works; its figures mean nothing
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.harness import wsgi_environ

ROLE = "deploy-prod"


def call(app: Any, path: str, token: str, body: bytes) -> dict[str, Any]:
    statuses: list[str] = []

    def start_response(status: str, headers: Any, exc_info: Any = None) -> None:
        statuses.append(status)

    result = app(wsgi_environ(token, body, path), start_response)
    data = b"".join(result)
    getattr(result, "close", lambda: None)()
    if not statuses[0].startswith("200"):
        raise RuntimeError(f"{path} refused: {statuses[0]} {data[:200]!r}")
    return dict(json.loads(data))


def timed(work: Callable[[], None], count: int) -> tuple[float, float]:
    """(CPU µs, wall ms) per request for `count` requests done by `work`."""
    cpu, wall = time.thread_time(), time.perf_counter()
    work()
    return (time.thread_time() - cpu) / count * 1e6, (time.perf_counter() - wall) / count * 1e3


def measure(box: Any, store: str, rounds: int, per_round: int) -> dict[str, list[tuple[float, float]]]:
    config = box.config_dict()
    config["server"]["replay_store"] = store
    config["server"]["rate_limits"] = "off"  # one session refreshed hundreds of times a minute
    config["roles"][ROLE]["session_lifetime"] = 3600
    # Served at the sandbox's broker URL too: the STS fetches the broker's keys from there.
    app = box.serve_in_process(config)
    exchange_body = json.dumps({"role": ROLE}).encode()
    samples: dict[str, list[tuple[float, float]]] = {"exchange": [], "refresh": []}
    try:
        for round_ in range(-1, rounds):  # round -1 warms both paths up and is not counted
            tokens = [box.github_token() for _ in range(per_round)]  # minted outside the timing
            chain = [call(app, "/v1/exchange", box.github_token(), exchange_body)["session"]["refresh_token"]]

            def exchanges(tokens: list[str] = tokens) -> None:
                for token in tokens:
                    call(app, "/v1/exchange", token, exchange_body)

            def refreshes(chain: list[str] = chain) -> None:
                for _ in range(per_round):
                    chain.append(call(app, "/v1/refresh", chain[-1], b"{}")["session"]["refresh_token"])

            exchanged = timed(exchanges, per_round)
            refreshed = timed(refreshes, per_round)
            if round_ >= 0:
                samples["exchange"].append(exchanged)
                samples["refresh"].append(refreshed)
    finally:
        app.extensions["broker"].close()
    return samples


def stores(work: Path, stack: ExitStack) -> Iterator[tuple[str, str]]:
    yield "memory", "memory"
    yield "sqlite", f"sqlite:///{work / 'state.db'}"
    if shutil.which("redis-server"):
        from tests.redis_support import RedisServer

        server = RedisServer(work).start()
        stack.callback(server.stop)
        yield "redis", server.url
    else:
        print("redis-server not installed: the redis store is not measured", file=sys.stderr)


def report(results: dict[str, dict[str, list[tuple[float, float]]]], rounds: int, per_round: int) -> str:
    lines = [
        f"refresh vs exchange, in process, {rounds} rounds of {per_round} of each per store "
        "(median of round means)",
        "",
        f"{'store':<8}{'exchange CPU µs':>17}{'refresh CPU µs':>16}{'ratio':>8}"
        f"{'exchange ms':>14}{'refresh ms':>12}{'ratio':>8}",
    ]
    for store, samples in results.items():
        ex_cpu = statistics.median(c for c, _ in samples["exchange"])
        re_cpu = statistics.median(c for c, _ in samples["refresh"])
        ex_wall = statistics.median(w for _, w in samples["exchange"])
        re_wall = statistics.median(w for _, w in samples["refresh"])
        lines.append(
            f"{store:<8}{ex_cpu:>17.0f}{re_cpu:>16.0f}{re_cpu / ex_cpu:>8.2f}"
            f"{ex_wall:>14.2f}{re_wall:>12.2f}{re_wall / ex_wall:>8.2f}"
        )
    lines += [
        "",
        "CPU: the broker's own thread (the STS answers on its own threads); wall: the whole",
        "request including the sandbox STS round trip, which both kinds make once.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="2 rounds of 5 requests")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 10)")
    parser.add_argument("--requests", type=int, help="requests of each kind per round (default 40)")
    args = parser.parse_args(argv)
    rounds = args.rounds or (2 if args.quick else 10)
    per_round = args.requests or (5 if args.quick else 40)

    import logging

    from broker.sandbox.stack import Sandbox

    logging.getLogger("broker.audit").disabled = True  # both kinds write one event; not measured here
    with tempfile.TemporaryDirectory(prefix="ci-broker-refresh-bench-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        box = stack.enter_context(Sandbox(work / "sandbox"))
        results = {name: measure(box, url, rounds, per_round) for name, url in stores(work, stack)}
    print(report(results, rounds, per_round))
    return 0


if __name__ == "__main__":
    sys.exit(main())
