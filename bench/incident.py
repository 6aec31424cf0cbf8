"""What incident response costs an exchange, measured in process: blocks, alerts, the webhook.

Calls the broker's WSGI app directly on one thread (no HTTP server), against the instant STS of
`bench/apps.py`, with the broker on a real redis-server as it runs with several replicas:

1. **Block check and alert counting.** The broker with 50 blocks in force (on other repositories,
   so every exchange is checked against them and granted) and every alert detector on, against
   the same broker with the block check, the detectors, or both switched off. Interleaved rounds,
   paired round by round. Two figures per variant: CPU of the request's own thread (what an
   exchange waits for) and CPU of the whole process, which includes the detectors' background
   thread counting each exchange in redis (what the worker's core pays; the round's queue is
   drained inside the measurement).
2. **A webhook that is down or slow.** Every grant raises an alert (a role whose `hours` never
   match) with the webhook absent (connection refused), hanging (accepts, never answers; 5 s
   timeout), or not configured: wall-clock latency per exchange, and what the queue dropped.

    python bench/incident.py            # 20 rounds of 200 exchanges per variant (a few minutes)
    python bench/incident.py --quick    # proves the script works (CI); its figures mean nothing
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from unittest import mock

import yaml

from bench.harness import ROOT

BLOCKS = 50


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="2 rounds of 20 exchanges")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 20)")
    parser.add_argument("--exchanges", type=int, help="exchanges per variant per round (default 200)")
    args = parser.parse_args(argv)
    rounds = args.rounds or (2 if args.quick else 20)
    per_round = args.exchanges or (20 if args.quick else 200)
    with tempfile.TemporaryDirectory(prefix="ci-broker-incident-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        env = stack.enter_context(Environment(work))
        print(block_check_alone(env))
        print(alert_steps_alone(env))
        print()
        print(cost_of_checks(env, rounds, per_round))
        print()
        print(webhook_latency(env, rounds, per_round))
    return 0


class Environment:
    """A redis-server, the instant STS, a CI issuer and tokens, and a config to vary."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.stack = ExitStack()

    def __enter__(self) -> Environment:
        import subprocess

        from bench.harness import write_config
        from broker.keys import generate_private_key, private_key_pem
        from broker.sandbox.issuer import LocalIssuer
        from broker.sandbox.stack import free_port
        from tests.redis_support import RedisServer

        self.redis = RedisServer(self.work).start()
        self.stack.callback(self.redis.stop)
        port = free_port()
        sts = subprocess.Popen(
            [sys.executable, "-m", "bench.apps", "sts", "--bind", f"127.0.0.1:{port}", "--threads", "4"],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        self.stack.callback(lambda: (sts.terminate(), sts.wait(30)))
        from bench.harness import wait_http

        wait_http(f"http://127.0.0.1:{port}", sts, 60)
        self.issuer = LocalIssuer().start()
        self.stack.callback(self.issuer.stop)
        key = self.work / "signing.pem"
        key.write_bytes(private_key_pem(generate_private_key("ES256")))
        key.chmod(0o600)
        self.audience = "http://127.0.0.1:8080"
        path = write_config(
            self.work / "base.yaml", self.audience, self.issuer.url, f"http://127.0.0.1:{port}", key
        )
        self.base = yaml.safe_load(path.read_text())
        self.audit_out = (self.work / "audit.log").open("a", encoding="utf-8")
        self.stack.callback(self.audit_out.close)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stack.close()

    def app(self, name: str, change: Callable[[dict[str, Any]], None]) -> Any:
        """A broker app built as `serve` builds it, from the base config with `change` applied."""
        from bench.factories import broker_app
        from broker.logs import configure_audit

        config = json.loads(json.dumps(self.base))
        change(config)
        path = self.work / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        app = broker_app(str(path), 300.0)
        self.stack.callback(app.extensions["broker"].close)
        # Audit events as `serve` writes them by default, but to a file rather than this output.
        configure_audit(stream=self.audit_out)
        return app

    def tokens(self, count: int) -> Iterator[str]:
        from bench.harness import mint_tokens

        path = mint_tokens(self.issuer, self.audience, count, self.work / "tokens.txt")
        return iter(path.read_text().split())


def exchange(app: Any, token: str) -> str:
    from bench.harness import wsgi_environ as environ

    statuses: list[str] = []
    result = app(environ(token, b'{"role": "bench-deploy"}'), lambda status, *a: statuses.append(status))
    b"".join(result)
    getattr(result, "close", lambda: None)()
    return statuses[0]


def exchange_all(app: Any, tokens: list[str]) -> None:
    for token in tokens:
        status = exchange(app, token)
        if not status.startswith("200"):
            raise RuntimeError(f"exchange refused: {status}")


# -- 1. the block check and the alert counters ----------------------------------------------------


def alert_steps_alone(env: Environment) -> str:
    """The detectors' two halves in tight loops: `observe` on the request thread, and the counting
    of granted exchanges in redis that the background thread does, by batch size."""
    from broker.alertconfig import AlertSettings
    from broker.alerts import Alerts, Observation
    from broker.audit import AuditEvent
    from broker.config import build_config
    from broker.windows import RedisWindows

    config = build_config(json.loads(json.dumps(env.base)), base_dir=env.work)

    def granted(n: int) -> AuditEvent:
        event = AuditEvent("exchange", f"req-{n}", f"203.0.113.{n % 200}")
        event.provider, event.issuer, event.subject = "github", env.issuer.url, "repo:octo-org/octo-repo"
        event.claims = {"repository_id": str(n % 50)}
        event.role, event.cloud, event.outcome = "bench-deploy", "aws", "granted"
        return event

    alerts = Alerts(config, AlertSettings(), RedisWindows(env.redis.url))  # every detector, defaults
    events = [granted(n) for n in range(5000)]
    start = time.thread_time()
    for event in events:
        alerts.observe(event)  # queued for the counting thread, which this loop does not wait for
    observe = (time.thread_time() - start) / len(events)
    assert alerts.queue.flush(120)
    lines = [f"   alert detectors on the request thread (observe): {observe * 1e9:.0f} ns per exchange"]
    for size in (1, 10, 100):
        batches = [
            [Observation(granted(n), time.time()) for n in range(i, i + size)] for i in range(0, 2000, size)
        ]
        start = time.thread_time()
        for batch in batches:
            alerts._count(batch)
        took = (time.thread_time() - start) / 2000
        lines.append(
            f"   counting in redis, off the request path, batches of {size:>3}: {took * 1e6:.0f} us CPU per exchange"
        )
    alerts.close()
    return "\n".join(lines)


def block_check_alone(env: Environment) -> str:
    """`refuse_if_blocked` in a tight loop for an identity that is not blocked, by blocks in force."""
    from broker.blocks import BlockList, new_block
    from broker.blockstore import SqliteBlockStore
    from broker.config import build_config
    from broker.sandbox.issuer import github_claims

    config = build_config(json.loads(json.dumps(env.base)), base_dir=env.work)
    provider, claims = config.providers["github"], github_claims()
    lines = ["0. The block check alone, in a tight loop (an identity that is not blocked):"]
    for count in (0, 50, 1000):
        store = SqliteBlockStore(str(env.work / f"blocks-{count}.db"))
        for i in range(count):
            claim = "repository_id" if i % 2 else "actor"  # two claim names in use
            block = new_block(config, provider="github", claims=[f"{claim}=x{i}"], role=None,
                              reason="bench", duration=None)  # fmt: skip
            store.add(block.id, block.record(), [])
        blocks = BlockList(config, store)
        blocks.poll()
        calls = 20000
        start = time.perf_counter()
        for _ in range(calls):
            blocks.refuse_if_blocked(provider, claims, "bench-deploy")
        took = (time.perf_counter() - start) / calls
        blocks.close()
        lines.append(f"   {count:>5} blocks: {took * 1e9:>6.0f} ns per check")
    return "\n".join(lines)


def cost_of_checks(env: Environment, rounds: int, per_round: int) -> str:
    from broker.alerts import Alerts
    from broker.blocks import BlockList, new_block
    from broker.blockstore import RedisBlockStore
    from broker.config import load_config

    def on_redis(config: dict[str, Any]) -> None:
        config["server"]["replay_store"] = env.redis.url  # alerts: every detector on, the defaults

    app = env.app("redis", on_redis)
    config = load_config(env.work / "redis.yaml")
    store = RedisBlockStore(env.redis.url)
    for i in range(BLOCKS):
        block = new_block(config, provider="github", claims=[f"repository_id={1000 + i}"], role=None,
                          reason="bench", duration=None)  # fmt: skip
        store.add(block.id, block.record(), [])
    store.close()
    broker = app.extensions["broker"]
    broker.blocks.poll()

    variants: dict[str, list[Any]] = {
        "broker": [],
        "block check off": [mock.patch.object(BlockList, "refuse_if_blocked", lambda *a: None)],
        "alert detectors off": [mock.patch.object(Alerts, "observe", lambda *a: None)],
        "both off": [
            mock.patch.object(BlockList, "refuse_if_blocked", lambda *a: None),
            mock.patch.object(Alerts, "observe", lambda *a: None),
        ],
    }
    tokens = env.tokens(len(variants) * (rounds * per_round + 20))
    thread_cpu: dict[str, list[float]] = {name: [] for name in variants}
    process_cpu: dict[str, list[float]] = {name: [] for name in variants}
    for round_ in range(-1, rounds):  # round -1 warms up and is not counted
        for name, patches in variants.items():
            batch = [next(tokens) for _ in range(per_round if round_ >= 0 else 20)]
            with ExitStack() as patched:
                for patch in patches:
                    patched.enter_context(patch)
                start_thread, start_process = time.thread_time(), time.process_time()
                exchange_all(app, batch)
                spent_thread = time.thread_time() - start_thread
                assert broker.alerts.queue.flush(60)  # this round's counting, inside the measurement
                spent_process = time.process_time() - start_process
            if round_ >= 0:
                thread_cpu[name].append(spent_thread / len(batch) * 1e6)
                process_cpu[name].append(spent_process / len(batch) * 1e6)
    blocks_cost = paired(thread_cpu["block check off"], thread_cpu["broker"])
    lines = [
        f"1. Block check ({BLOCKS} blocks in force) and alert detectors (all on), broker on redis:",
        f"   {rounds} interleaved rounds of {per_round} exchanges per variant, CPU us per exchange",
        "",
        f"   {'variant':<22}{'thread':>9}{'vs broker':>11}{'+-':>6}{'process':>10}{'vs broker':>11}{'+-':>6}",
    ]
    for name in variants:
        t_mean, t_err = paired(thread_cpu[name], thread_cpu["broker"])
        p_mean, p_err = paired(process_cpu[name], process_cpu["broker"])
        lines.append(
            f"   {name:<22}{statistics.median(thread_cpu[name]):>9.0f}{t_mean:>+11.1f}{t_err:>6.1f}"
            f"{statistics.median(process_cpu[name]):>10.0f}{p_mean:>+11.1f}{p_err:>6.1f}"
        )
    lines += [
        "",
        "   thread: the request's own thread (what an exchange waits for); process: the whole worker,",
        "   including the detectors' background thread counting each exchange in redis.",
        "   vs broker: mean paired difference (+- standard error); a step switched off shows what it",
        "   costs as a negative difference.",
        f"   the block check costs the request thread {-blocks_cost[0]:.1f} +- {blocks_cost[1]:.1f} us per exchange",
    ]
    return "\n".join(lines)


def paired(values: list[float], reference: list[float]) -> tuple[float, float]:
    differences = [v - r for v, r in zip(values, reference, strict=True)]
    spread = statistics.stdev(differences) / math.sqrt(len(differences)) if len(differences) > 1 else 0.0
    return statistics.mean(differences), spread


# -- 2. a webhook that is down or slow ------------------------------------------------------------


class HangingServer:
    """Accepts connections and never answers: the worst webhook there is, short of a black hole."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1024)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        try:
            while True:
                self.held.append(self.sock.accept()[0])
        except OSError:
            return

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


def webhook_latency(env: Environment, rounds: int, per_round: int) -> str:
    from prometheus_client import REGISTRY

    from broker.sandbox.stack import free_port

    hanging = HangingServer()
    env.stack.callback(hanging.close)

    def alerting(webhook: str | None) -> Callable[[dict[str, Any]], None]:
        def change(config: dict[str, Any]) -> None:
            alerts: dict[str, Any] = {"denied_burst": "off", "bulk": "off", "new_source": "off"}
            if webhook:
                alerts["webhook"] = {"url": webhook, "timeout": 5}
            config["server"]["alerts"] = alerts
            for role in config["roles"].values():
                role["hours"] = "Mon 00:00-00:01 Pacific/Kiritimati"  # a minute a week: off hours

        return change

    apps = {
        "no webhook": env.app("no-webhook", alerting(None)),
        "webhook absent": env.app("absent", alerting(f"http://127.0.0.1:{free_port()}/hook")),
        "webhook hanging": env.app("hanging", alerting(f"http://127.0.0.1:{hanging.port}/hook")),
    }
    tokens = env.tokens(len(apps) * (rounds * per_round + 20))
    latency: dict[str, list[float]] = {name: [] for name in apps}
    for round_ in range(-1, rounds):
        for name, app in apps.items():
            for _ in range(per_round if round_ >= 0 else 20):
                token = next(tokens)
                start = time.perf_counter()
                status = exchange(app, token)
                took = time.perf_counter() - start
                if not status.startswith("200"):
                    raise RuntimeError(f"{name}: exchange refused: {status}")
                if round_ >= 0:
                    latency[name].append(took * 1e6)

    def dropped(reason: str) -> int:
        return int(REGISTRY.get_sample_value("ci_broker_background_dropped_total",
                                             {"queue": "webhook", "reason": reason}) or 0)  # fmt: skip

    lines = [
        "2. Every grant raises an alert (off hours); exchange wall-clock latency in us,",
        f"   {rounds * per_round} exchanges per variant, interleaved",
        "",
        f"   {'variant':<18}{'p50':>8}{'p90':>8}{'p99':>8}{'max':>9}",
    ]
    for name, values in latency.items():
        q = statistics.quantiles(values, n=100, method="inclusive")
        lines.append(f"   {name:<18}{q[49]:>8.0f}{q[89]:>8.0f}{q[98]:>8.0f}{max(values):>9.0f}")
    sent = REGISTRY.get_sample_value("ci_broker_alert_webhook_deliveries_total", {"result": "error"}) or 0
    lines += [
        "",
        f"   webhook POST attempts that failed: {int(sent)}; alerts dropped because the queue was full:"
        f" {dropped('queue_full')} (queue of 1000 per worker, all variants together)",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
