"""Benchmark: the broker against a hello-world app and the floor of its irreducible work.

Every app runs under the gunicorn settings `ci-broker serve` uses (`broker.server.gunicorn_options`)
and gets the same load generator: wrk, with `bench/exchange.lua` sending a fresh pre-minted CI
token per request. Two parts:

**One worker** (`--part one-worker`), the shape the request path was tuned in:

1. hello: a Flask POST endpoint that does nothing;
2. floor: one RS256 verify, one ES256 sign, one boto3 AssumeRoleWithWebIdentity to an instant STS;
3. broker: `ci-broker serve --workers 1` with the memory replay store, exchanging real tokens from
   the local issuer for an AWS web_identity role against the same instant STS.

The floor and the broker are measured in alternating slices (four in a full run), so drift in the
machine's load falls on both alike; so are the floor built with the broker's own STS client and
the broker app with policy, replay, audit, logging and metrics switched off, whose CPU time
against the broker's is what those steps cost (the issue caps it at 10% of the floor). Also: CPU
per exchange, peak RSS per worker, `serve` to the first 200 on /readyz, the broker's steady p50
while its issuer's JWKS endpoint takes 2 s to answer, and (full runs) a sweep of threads per worker.

**Deployed shape** (`--part deployed`), as users run it: `ci-broker serve --workers 2` (the
memory store is refused with two workers) with a sqlite replay store and with a redis one (a real
redis-server this script starts on loopback), rate limits counted on every exchange, against a
floor of two sync gunicorn workers and no store; 16 connections, alternating slices. Then the same
with an STS that answers after 50 ms, against the sync floor and a floor with `serve`'s workers and
threads. For the redis store it also counts the commands each exchange sends (MONITOR over a few
sequential exchanges: round trips, and what the scripts run inside redis) and reads redis's own
time and CPU per exchange.

On a machine with two or more cores the servers are pinned to one core and everything else (wrk,
the STS, redis, the issuer, this script) to the others, so the load generator never steals the
servers' CPU. Every server listens on 127.0.0.1 only; every load run is bounded in time. The
one-minute load average is recorded with every slice: the machine may be shared.

    python -m bench.run                    # full run (several minutes), figures in bench/RESULTS.md
    python -m bench.run --part deployed    # the deployed shape only
    python -m bench.run --quick            # a short smoke run that proves the script works (CI)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.harness import (
    COUNTED_RATE_LIMITS,
    ROLE,
    Procs,
    core_split,
    cpu_seconds,
    gunicorn_workers,
    load_average,
    machine,
    mint_tokens,
    peak_rss_mb,
    signing_key,
    start_redis,
    wait_http,
    write_config,
)
from broker.sandbox.issuer import LocalIssuer
from broker.server import DEFAULT_THREADS

LUA = Path(__file__).resolve().parent / "exchange.lua"
SLOW_JWKS_SECONDS = 2.0
DEPLOYED_WORKERS = 2
DEPLOYED_CONNECTIONS = 16
SLOW_STS_SECONDS = 0.05
MIN_TOKEN_RATE = 1000  # requests per second every run has fresh tokens for, at least
WARM_UP_RATE = 1500  # and a deployed broker's warm-up
FLOOR_BROKER_SDK = "floor, broker's STS client"
BROKER_WITHOUT_LISTED = "broker, listed steps off"
SYNC_FLOOR = "floor, 2 sync workers"
GTHREAD_FLOOR = "floor, 2 gthread workers"
SQLITE_BROKER = "broker, 2 workers, sqlite"
REDIS_BROKER = "broker, 2 workers, redis"
# With --compare-path: the same redis broker from another tree (the code before a change), in the
# same alternating slices, so a before/after pair sees the same machine.
REDIS_BEFORE = "broker, 2 workers, redis, compared tree"
TARGETS = {
    "throughput_vs_floor": 0.9,
    "p99_vs_floor": 1.5,
    "slow_jwks_p50_change": 0.05,
    "ready_seconds": 1.5,
    "rss_mb": 100.0,
    "listed_share": 0.10,
}
PARTS = ("one-worker", "deployed")


@dataclass
class Load:
    name: str
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    failures: int  # non-2xx responses plus socket errors and timeouts
    threads: int = 0
    connections: int = 0
    workers: int = 1
    sts_delay_ms: float = 0.0
    cpu_ms: float = 0.0  # server worker CPU time (user + system) per request
    load_average: float = 0.0  # the machine's, at the start of the run
    store_cpu_ms: float = 0.0  # redis-server's CPU time per request
    store_usec: float = 0.0  # redis's own time running the commands, per request


@dataclass
class Report:
    machine: dict[str, Any]
    settings: dict[str, Any]
    loads: list[Load] = field(default_factory=list)
    ready_seconds: list[float] = field(default_factory=list)
    worker_peak_rss_mb: list[float] = field(default_factory=list)
    sweep: list[Load] = field(default_factory=list)
    deployed: list[Load] = field(default_factory=list)
    deployed_ready_seconds: dict[str, float] = field(default_factory=dict)
    # Per exchange, by command: sent by the broker (each one round trip) and run by scripts.
    redis_commands: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class Target:
    """One app in a set of alternating slices: its server, URL and a token file per slice."""

    name: str
    url: str
    server: subprocess.Popen[bytes]
    tokens: Callable[[int], Path]
    workers: int = 1
    threads: int = 0
    connections: int = 0  # 0: --connections
    redis_url: str | None = None  # read redis's counters around each slice


def wrk(name: str, url: str, tokens: Path, seconds: float, connections: int, pin: dict[str, str]) -> Load:
    argv = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA),
        url,
    ]
    if pin:
        argv = ["taskset", "-c", pin["load"], *argv]
    out = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        env={**os.environ, "BENCH_TOKENS": str(tokens), "BENCH_WRK_THREADS": "1", "BENCH_ROLE": ROLE},
    )
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr.strip()[:500]}")
    data = json.loads(line[len("BENCH_JSON ") :])
    failures = data["status"] + data["connect"] + data["read"] + data["write"] + data["timeout"]
    return Load(
        name=name,
        rps=data["requests"] / (data["duration_us"] / 1e6),
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        requests=data["requests"],
        failures=failures,
        connections=connections,
    )


def redis_counters(url: str) -> tuple[float, int]:
    """Microseconds redis has spent running commands, and the commands it has run, so far."""
    import redis

    stats = redis.Redis.from_url(url).info("commandstats")
    return (
        sum(float(s["usec"]) for s in stats.values()),
        sum(int(s["calls"]) for s in stats.values()),
    )


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.pin = core_split(not args.no_pin)
        self.procs = Procs(workdir, self.pin)
        self.python = sys.executable

    # -- servers ----------------------------------------------------------------------------------

    def serve_app(
        self, kind: str, port: int, threads: int, *extra: str, workers: int = 1
    ) -> subprocess.Popen[bytes]:
        argv = [self.python, "-m", "bench.apps", kind, "--bind", f"127.0.0.1:{port}"]
        argv += ["--workers", str(workers), "--threads", str(threads), *extra]
        return self.procs.start(f"{kind}-{port}", argv, "server")

    def serve_floor(
        self,
        port: int,
        threads: int,
        issuer_pub: Path,
        key: Path,
        sts_url: str,
        *extra: str,
        workers: int = 1,
    ) -> subprocess.Popen[bytes]:
        keys = ["--issuer-public-key", str(issuer_pub), "--signing-key", str(key)]
        return self.serve_app("floor", port, threads, *keys, "--sts-url", sts_url, *extra, workers=workers)

    def serve_broker(
        self, config: Path, port: int, threads: int | None = None, workers: int = 1, tree: str | None = None
    ) -> tuple[subprocess.Popen[bytes], float]:
        """`ci-broker serve`, and the seconds from launching it to its first 200 on /readyz; with
        `tree`, the `broker` package found there (run from the workdir, so this tree is not first)."""
        start = time.monotonic()
        argv = [self.python, "-m", "broker", "serve", "--config", str(config)]
        argv += ["--bind", f"127.0.0.1:{port}", "--workers", str(workers)]
        if threads is not None:
            argv += ["--threads", str(threads)]
        if tree is None:
            proc = self.procs.start(f"broker-{port}", argv, "server")
        else:
            env = {"PYTHONPATH": str(Path(tree).resolve())}
            proc = self.procs.start(f"broker-{port}", argv, "server", env=env, cwd=self.workdir)
        wait_http(f"http://127.0.0.1:{port}/readyz", proc, 60, want=200)
        return proc, time.monotonic() - start

    def start_sts(self, delay: float, threads: int) -> str:
        port = self.procs.port()
        argv = [self.python, "-m", "bench.apps", "sts", "--bind", f"127.0.0.1:{port}"]
        argv += ["--threads", str(threads), "--delay", str(delay)]
        sts = self.procs.start(f"sts-{port}", argv, "load")
        url = f"http://127.0.0.1:{port}"
        wait_http(url, sts, 30)
        return url

    # -- tokens -----------------------------------------------------------------------------------

    def tokens(
        self,
        issuer: LocalIssuer,
        audience: str,
        rps_hint: float,
        seconds: float,
        tag: str,
        minimum: float = MIN_TOKEN_RATE,
    ) -> Path:
        """Enough fresh tokens for `seconds` of load at up to 1.5 x `rps_hint` requests per second.

        At least `minimum`: on a busy machine a hint taken from one app's warm-up can be far below
        what the next app runs at, and a token sent twice is refused as a replay.
        """
        count = int(max(rps_hint, minimum) * 1.5 * max(1, round(seconds))) + 100
        return mint_tokens(issuer, audience, count, self.workdir / f"tokens-{tag.replace(' ', '_')}.txt")

    def broker_tokens(
        self, issuer: LocalIssuer, audience: str, rps_hint: float, tag: str, minimum: float = MIN_TOKEN_RATE
    ) -> tuple[Path, Path]:
        return (
            self.tokens(issuer, audience, rps_hint, self.args.warmup, f"{tag}-warm", minimum),
            self.tokens(issuer, audience, rps_hint, self.args.duration, tag, minimum),
        )

    # -- measuring --------------------------------------------------------------------------------

    def warm_and_load(
        self,
        name: str,
        url: str,
        tokens_warm: Path,
        tokens: Path,
        threads: int,
        connections: int,
        server: subprocess.Popen[bytes],
    ) -> Load:
        wrk(f"{name} warm-up", url, tokens_warm, self.args.warmup, connections, self.pin)
        load = self.measure(name, url, tokens, self.args.duration, connections, server)
        load.threads = threads
        return load

    def measure(
        self,
        name: str,
        url: str,
        tokens: Path,
        seconds: float,
        connections: int,
        server: subprocess.Popen[bytes],
        redis_url: str | None = None,
        redis_pid: int | None = None,
    ) -> Load:
        """One wrk run, with the server workers' CPU time per request (and redis's, if given)."""
        workers = gunicorn_workers(server)
        before = sum(cpu_seconds(pid) for pid in workers)
        store_before = (
            (redis_counters(redis_url), cpu_seconds(redis_pid)) if redis_url and redis_pid else None
        )
        started_at_load = load_average()
        load = wrk(name, url, tokens, seconds, connections, self.pin)
        served = max(1, load.requests)
        spent = sum(cpu_seconds(pid) for pid in workers) - before
        if server.poll() is not None or (load.requests > 100 and spent == 0):
            # Another process on this machine may have taken the port between our pick and the
            # server's bind: the load went there, and these figures are not the app's.
            raise RuntimeError(f"{name}: its server is not the one that answered on {url}")
        load.cpu_ms = 1000 * spent / served
        load.load_average = started_at_load
        if store_before and redis_url and redis_pid:
            (usec, _), cpu = store_before
            load.store_usec = (redis_counters(redis_url)[0] - usec) / served
            load.store_cpu_ms = 1000 * (cpu_seconds(redis_pid) - cpu) / served
        return load

    def alternate(
        self, targets: list[Target], rounds: int, seconds: float, redis_pid: int | None = None
    ) -> list[Load]:
        """`rounds` slices of each target, in alternating order, merged into one Load each."""
        slices: dict[str, list[Load]] = {t.name: [] for t in targets}
        for i in range(rounds):
            for t in targets if i % 2 == 0 else reversed(targets):
                load = self.measure(
                    t.name,
                    t.url,
                    t.tokens(i),
                    seconds / rounds,
                    t.connections or self.args.connections,
                    t.server,
                    t.redis_url,
                    redis_pid,
                )
                slices[t.name].append(load)
        merged = []
        for t in targets:
            load = merge(t.name, slices[t.name], t.threads)
            load.workers = t.workers
            merged.append(load)
        return merged

    # -- the run ----------------------------------------------------------------------------------

    def run(self) -> Report:
        a = self.args
        report = Report(
            machine=machine(),
            settings={
                "quick": a.quick,
                "parts": a.part,
                "duration_s": a.duration,
                "warmup_s": a.warmup,
                "connections": a.connections,
                "threads": a.threads,
                "deployed_workers": DEPLOYED_WORKERS,
                "deployed_connections": DEPLOYED_CONNECTIONS,
                "pinning": self.pin or "none",
                "gunicorn": "broker.server.gunicorn_options",
            },
        )
        if self.pin:
            os.sched_setaffinity(0, {int(c) for c in self.pin["load"].split(",")})
        issuer = LocalIssuer().start()
        try:
            key = signing_key(self.workdir)
            issuer_pub = self.workdir / "issuer-public.pem"
            from cryptography.hazmat.primitives import serialization

            issuer_pub.write_bytes(
                issuer.key.private_key.public_key().public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            )
            # hello and the floors reuse one token set: none of them checks jti.
            shared = mint_tokens(issuer, "http://127.0.0.1", 2000, self.workdir / "tokens-shared.txt")
            if "one-worker" in a.part:
                self.one_worker(report, issuer, key, issuer_pub, shared)
            if "deployed" in a.part:
                self.deployed(report, issuer, key, issuer_pub, shared)
        finally:
            self.procs.stop_all()
            issuer.stop()
        return report

    def one_worker(
        self, report: Report, issuer: LocalIssuer, key: Path, issuer_pub: Path, shared_tokens: Path
    ) -> None:
        a = self.args
        sts_url = self.start_sts(0.0, 16)
        threads, conns = a.threads, a.connections
        port = self.procs.port()
        proc = self.serve_app("hello", port, threads)
        url = f"http://127.0.0.1:{port}"
        wait_http(url, proc, 60)
        report.loads.append(
            self.warm_and_load("hello", url, shared_tokens, shared_tokens, threads, conns, proc)
        )
        self.procs.stop(proc)

        # The floor and the broker (`ci-broker serve`, as operators run it) are up together and
        # measured in alternating slices (floor first, then broker first, ...), so drift in the
        # machine's load falls on both alike; the idle one costs nothing meanwhile.
        floor_port, floor_sdk_port = self.procs.port(), self.procs.port()
        floor_url, floor_sdk_url = f"http://127.0.0.1:{floor_port}", f"http://127.0.0.1:{floor_sdk_port}"
        floor = self.serve_floor(floor_port, threads, issuer_pub, key, sts_url)
        floor_sdk = self.serve_floor(
            floor_sdk_port, threads, issuer_pub, key, sts_url, "--brokers-sts-client"
        )
        wait_http(floor_url, floor, 60)
        wait_http(floor_sdk_url, floor_sdk, 60)
        floor_rps = wrk("floor warm-up", floor_url, shared_tokens, a.warmup, conns, self.pin).rps
        wrk("floor warm-up", floor_sdk_url, shared_tokens, a.warmup, conns, self.pin)
        port = self.procs.port()
        url = f"http://127.0.0.1:{port}"
        config = write_config(self.workdir / "broker.yaml", url, issuer.url, sts_url, key)
        proc, ready = self.serve_broker(config, port, threads)
        report.ready_seconds.append(ready)
        # The same broker app with policy, replay, audit, logging and metrics switched off:
        # the broker's CPU over it is what those steps cost, the share the issue caps at 10%.
        bare_port = self.procs.port()
        bare_url = f"http://127.0.0.1:{bare_port}"
        bare = self.serve_app("broker", bare_port, threads, "--config", str(config), "--without-listed")
        wait_http(f"{bare_url}/readyz", bare, 60, want=200)
        for target, tag in ((url, "broker-warm"), (bare_url, "bare-warm")):
            warm = self.tokens(issuer, url, floor_rps, a.warmup, tag)
            wrk("broker warm-up", target, warm, a.warmup, conns, self.pin)
        rounds = 2 if a.quick else 4
        piece = a.duration / rounds
        broker_tokens = [self.tokens(issuer, url, floor_rps, piece, f"broker-{i}") for i in range(rounds)]
        bare_tokens = [self.tokens(issuer, url, floor_rps, piece, f"bare-{i}") for i in range(rounds)]
        targets = [
            Target("floor", floor_url, floor, lambda i: shared_tokens, threads=threads),
            Target(FLOOR_BROKER_SDK, floor_sdk_url, floor_sdk, lambda i: shared_tokens, threads=threads),
            Target("broker", url, proc, lambda i: broker_tokens[i], threads=threads),
            Target(BROKER_WITHOUT_LISTED, bare_url, bare, lambda i: bare_tokens[i], threads=threads),
        ]
        report.loads += self.alternate(targets, rounds, a.duration)
        report.worker_peak_rss_mb = [peak_rss_mb(pid) for pid in gunicorn_workers(proc)]
        if a.profile:
            self.profile(floor, lambda: (shared_tokens, shared_tokens), floor_url, conns, "-floor")
            self.profile(proc, lambda: self.broker_tokens(issuer, url, floor_rps, "profile"), url, conns)
        for server in (floor, floor_sdk, bare, proc):
            self.procs.stop(server)
        for _ in range(a.ready_samples - 1):
            proc, ready = self.serve_broker(config, port, threads)
            report.ready_seconds.append(ready)
            self.procs.stop(proc)
        self.jwks_pair(report, issuer, key, sts_url, floor_rps)
        if a.sweep:
            self.thread_sweep(report, issuer, key, floor_rps)

    def jwks_pair(
        self, report: Report, issuer: LocalIssuer, key: Path, sts_url: str, floor_rps: float
    ) -> None:
        """The same broker app twice, both refreshing their issuer's keys every second; one issuer
        answers at once, the other takes 2 s, so a slow fetch is in flight for most of the
        measurement. Their runs alternate, so drift in the machine's load falls on both alike."""
        a = self.args
        slow = LocalIssuer().start()
        slow.keys = issuer.keys  # same key, so the same tokens shape; only the endpoint is slow

        def slow_jwks(request: Any) -> Any:
            from werkzeug.wrappers import Response

            time.sleep(SLOW_JWKS_SECONDS)
            return Response(
                json.dumps({"keys": [k.public_jwk for k in slow.keys]}), mimetype="application/json"
            )

        slow.jwks_hook = slow_jwks
        try:
            targets = []
            for label, source in (("broker, JWKS refresh 1 s", issuer), ("broker, JWKS takes 2 s", slow)):
                port = self.procs.port()
                url = f"http://127.0.0.1:{port}"
                config = write_config(self.workdir / f"broker-{port}.yaml", url, source.url, sts_url, key)
                proc = self.serve_app(
                    "broker", port, a.threads, "--config", str(config), "--jwks-refresh", "1"
                )
                wait_http(f"{url}/readyz", proc, 60, want=200)
                warm = self.tokens(source, url, floor_rps, a.warmup, f"{label}-warm")
                wrk(f"{label} warm-up", url, warm, a.warmup, a.connections, self.pin)
                batches = [
                    self.tokens(source, url, floor_rps, a.duration / 2, f"{label}-{i}") for i in range(2)
                ]
                targets.append(Target(label, url, proc, batches.__getitem__, threads=a.threads))
            report.loads += self.alternate(targets, 2, a.duration)
            for target in targets:
                self.procs.stop(target.server)
        finally:
            slow.stop()

    def deployed(
        self, report: Report, issuer: LocalIssuer, key: Path, issuer_pub: Path, shared_tokens: Path
    ) -> None:
        """`serve --workers 2` with sqlite and with redis against two sync floor workers."""
        a = self.args
        redis_proc, redis_url = start_redis(self.procs, self.workdir)
        rounds = 2 if a.quick else 4
        for delay in (0.0, SLOW_STS_SECONDS):
            sts_url = self.start_sts(delay, 64)
            suffix = f", STS {delay * 1000:.0f} ms" if delay else ""
            floor_port = self.procs.port()
            floor_url = f"http://127.0.0.1:{floor_port}"
            floor = self.serve_floor(
                floor_port, 1, issuer_pub, key, sts_url, "--worker-class", "sync", workers=DEPLOYED_WORKERS
            )
            wait_http(floor_url, floor, 60)
            shape = {"workers": DEPLOYED_WORKERS, "connections": DEPLOYED_CONNECTIONS}
            targets = [
                Target(SYNC_FLOOR + suffix, floor_url, floor, lambda i: shared_tokens, threads=1, **shape)
            ]
            # The floor is the sync one. Sync workers serve one connection at a time and
            # close it after each response, so that floor also measures how fast the load generator
            # reconnects and, against a slow cloud, its own lack of threads; the floor with
            # `serve`'s workers and threads is the reference with neither.
            port = self.procs.port()
            url = f"http://127.0.0.1:{port}"
            proc = self.serve_floor(port, DEFAULT_THREADS, issuer_pub, key, sts_url, workers=DEPLOYED_WORKERS)
            wait_http(url, proc, 60)
            gthread = Target(
                GTHREAD_FLOOR + suffix, url, proc, lambda i: shared_tokens, threads=DEFAULT_THREADS, **shape
            )
            targets.append(gthread)
            floor_rps = wrk(
                "floor warm-up", floor_url, shared_tokens, a.warmup, DEPLOYED_CONNECTIONS, self.pin
            ).rps
            for target in targets[1:]:
                wrk("floor warm-up", target.url, shared_tokens, a.warmup, DEPLOYED_CONNECTIONS, self.pin)
            # Tokens for the brokers: at least what `serve`'s threads could take from a slow STS.
            hint = max(floor_rps, DEPLOYED_CONNECTIONS / delay if delay else 0)
            brokers = [(SQLITE_BROKER, "sqlite", None), (REDIS_BROKER, "redis", None)]
            if a.compare_path:
                brokers.append((REDIS_BEFORE, "redis", a.compare_path))
            for name, store, tree in brokers:
                port = self.procs.port()
                url = f"http://127.0.0.1:{port}"
                replay = redis_url if store == "redis" else f"sqlite:///{self.workdir / f'replay-{port}.db'}"
                config = write_config(
                    self.workdir / f"broker-{port}.yaml",
                    url,
                    issuer.url,
                    sts_url,
                    key,
                    replay_store=replay,
                    rate_limits=COUNTED_RATE_LIMITS,
                )
                proc, ready = self.serve_broker(config, port, workers=DEPLOYED_WORKERS, tree=tree)
                report.deployed_ready_seconds[name + suffix] = ready
                # The broker may outrun the sync floor: its warm-up (with tokens to spare) says by
                # how much, and its slices get tokens for that rate.
                warm = self.tokens(issuer, url, max(hint, WARM_UP_RATE), a.warmup, f"{name}{suffix}-warm")
                rate = wrk(f"{name} warm-up", url, warm, a.warmup, DEPLOYED_CONNECTIONS, self.pin).rps
                batches = [
                    self.tokens(issuer, url, max(hint, rate), a.duration / rounds, f"{name}{suffix}-{i}")
                    for i in range(rounds)
                ]
                target = Target(
                    name + suffix,
                    url,
                    proc,
                    batches.__getitem__,
                    threads=DEFAULT_THREADS,
                    redis_url=redis_url if store == "redis" else None,
                    **shape,
                )
                targets.append(target)
                if name == REDIS_BROKER and not delay:
                    report.redis_commands = self.count_redis_commands(redis_url, target, issuer)
            loads = self.alternate(targets, rounds, a.duration, redis_pid=redis_proc.pid)
            for load in loads:
                load.sts_delay_ms = delay * 1000
            report.deployed += loads
            for target in targets:
                self.procs.stop(target.server)

    def count_redis_commands(
        self, redis_url: str, target: Target, issuer: LocalIssuer
    ) -> dict[str, dict[str, float]]:
        """What one exchange asks of redis, from MONITOR over a few sequential exchanges.

        "sent" are the broker's own commands, one round trip each; "in scripts" are what the Lua
        scripts it calls run inside redis (no round trip of their own).
        """
        import redis
        import requests

        exchanges = 20
        tokens = (
            mint_tokens(issuer, target.url, exchanges, self.workdir / "tokens-monitor.txt")
            .read_text()
            .split()
        )
        counts: dict[str, Counter[str]] = {"sent": Counter(), "in scripts": Counter()}
        sentinel = "ci-broker-bench-monitor-done"
        client = redis.Redis.from_url(redis_url)
        signal = redis.Redis.from_url(redis_url)
        signal.ping()  # connected (and its handshake done) before MONITOR starts
        with client.monitor() as monitor:
            listening = threading.Event()

            def listen() -> None:
                listening.set()
                for entry in monitor.listen():
                    command = entry["command"].split(" ", 1)[0].upper()
                    if sentinel in entry["command"]:
                        return
                    counts["in scripts" if entry["client_type"] == "lua" else "sent"][command] += 1

            listener = threading.Thread(target=listen, daemon=True)
            listener.start()
            listening.wait(5)
            time.sleep(0.2)  # MONITOR is on before the first exchange
            session = requests.Session()
            for token in tokens[:exchanges]:
                response = session.post(
                    f"{target.url}/v1/exchange",
                    json={"role": ROLE},
                    headers={"Authorization": f"Bearer {token}"},
                    timeout=10,
                )
                if response.status_code != 200:
                    raise RuntimeError(
                        f"exchange refused while counting redis commands: {response.status_code}"
                    )
            signal.echo(sentinel)
            listener.join(10)
        return {kind: {c: n / exchanges for c, n in sorted(found.items())} for kind, found in counts.items()}

    def thread_sweep(self, report: Report, issuer: LocalIssuer, key: Path, floor_rps: float) -> None:
        """Threads per worker against an instant STS and one that takes 50 ms (a real round trip)."""
        for delay, thread_counts in ((0.0, (1, 2, 4, 16)), (SLOW_STS_SECONDS, (4, 8, 16, 32))):
            url_sts = self.start_sts(delay, 64)
            for threads in thread_counts:
                port = self.procs.port()
                url = f"http://127.0.0.1:{port}"
                config = write_config(self.workdir / f"broker-{port}.yaml", url, issuer.url, url_sts, key)
                # With a slow STS, threads / delay bounds the rate.
                hint, minimum = (floor_rps, MIN_TOKEN_RATE) if delay == 0 else (threads / delay, 0)
                warm, tokens = self.broker_tokens(issuer, url, hint, f"sweep-{port}", minimum)
                proc, _ = self.serve_broker(config, port, threads)
                load = self.warm_and_load("broker", url, warm, tokens, threads, 2 * threads, proc)
                load.sts_delay_ms = delay * 1000
                report.sweep.append(load)
                self.procs.stop(proc)

    def profile(
        self, proc: subprocess.Popen[bytes], make_tokens: Any, url: str, conns: int, suffix: str = ""
    ) -> None:
        """py-spy on the worker under load; only samples holding the GIL, so it shows CPU."""
        workers = gunicorn_workers(proc)
        _, tokens = make_tokens()
        out = Path(self.args.profile).resolve()
        out = out.with_name(out.stem + suffix + out.suffix)
        fmt = {".json": "speedscope", ".txt": "raw"}.get(out.suffix, "flamegraph")
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        argv = [py_spy, "record", "--pid", str(workers[0]), "--rate", "1000"]
        argv += ["--duration", str(round(self.args.duration)), "--format", fmt, "--output", str(out), "--gil"]
        spy = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wrk("profiled", url, tokens, self.args.duration, conns, self.pin)
        spy.wait(60)
        print(f"profile written to {out}")


def merge(name: str, loads: list[Load], threads: int) -> Load:
    """Alternating runs of one app as one: summed requests, mean p50, worst p99, weighted CPU."""
    requests_ = sum(load.requests for load in loads)
    seconds = sum(load.requests / load.rps for load in loads if load.rps)

    def weighted(value: Callable[[Load], float]) -> float:
        return sum(value(load) * load.requests for load in loads) / max(1, requests_)

    return Load(
        name=name,
        rps=requests_ / seconds if seconds else 0.0,
        p50_ms=sum(load.p50_ms for load in loads) / len(loads),
        p99_ms=max(load.p99_ms for load in loads),
        requests=requests_,
        failures=sum(load.failures for load in loads),
        threads=threads,
        connections=loads[0].connections,
        cpu_ms=weighted(lambda load: load.cpu_ms),
        load_average=sum(load.load_average for load in loads) / len(loads),
        store_cpu_ms=weighted(lambda load: load.store_cpu_ms),
        store_usec=weighted(lambda load: load.store_usec),
    )


# -- output ---------------------------------------------------------------------------------------


def ok(passed: bool) -> str:
    return "ok" if passed else "MISSED"


def load_table(loads: list[Load], extra: bool = False) -> list[str]:
    head = f"{'app':<42}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'CPU ms/req':>12}{'load':>6}{'requests':>10}{'failed':>8}"
    lines = [head + (f"{'redis CPU ms/req':>18}{'redis us/req':>14}" if extra else "")]
    for load in loads:
        line = (
            f"{load.name:<42}{load.rps:>9.1f}{load.p50_ms:>9.2f}{load.p99_ms:>9.2f}{load.cpu_ms:>12.3f}"
            f"{load.load_average:>6.1f}{load.requests:>10}{load.failures:>8}"
        )
        if extra and load.store_cpu_ms:
            line += f"{load.store_cpu_ms:>18.3f}{load.store_usec:>14.1f}"
        lines.append(line)
    return lines


def summarize(report: Report) -> tuple[list[str], dict[str, Any]]:
    lines = [
        f"machine: {report.machine['cpu']}, {report.machine['cores']} cores, Python "
        f"{report.machine['python']}, {report.machine['wrk']}",
        f"pinning {report.settings['pinning']}; {report.settings['duration_s']} s per app and part; "
        "load = the machine's one-minute load average during the runs",
    ]
    figures: dict[str, Any] = {}
    if report.loads:
        part_lines, part_figures = summarize_one_worker(report)
        lines += ["", *part_lines]
        figures.update(part_figures)
    if report.deployed:
        part_lines, part_figures = summarize_deployed(report)
        lines += ["", *part_lines]
        figures["deployed"] = part_figures
    if any(load.failures for load in [*report.loads, *report.deployed, *report.sweep]):
        lines.append("WARNING: some requests failed; the figures of those runs are not comparable")
    return lines, figures


def summarize_one_worker(report: Report) -> tuple[list[str], dict[str, Any]]:
    by_name = {load.name: load for load in report.loads}
    hello, floor, broker = by_name["hello"], by_name["floor"], by_name["broker"]
    floor_sdk = by_name[FLOOR_BROKER_SDK]
    bare = by_name[BROKER_WITHOUT_LISTED]
    fast_jwks, slow = by_name["broker, JWKS refresh 1 s"], by_name["broker, JWKS takes 2 s"]
    figures = {
        "throughput_vs_floor": broker.rps / floor.rps,
        "throughput_vs_hello": broker.rps / hello.rps,
        "floor_vs_hello": floor.rps / hello.rps,
        "p99_vs_floor": broker.p99_ms / floor.p99_ms,
        "cpu_floor_vs_broker": floor.cpu_ms / broker.cpu_ms if broker.cpu_ms else 0.0,
        "own_cpu_ms": broker.cpu_ms - floor.cpu_ms,
        "throughput_vs_floor_broker_sdk": broker.rps / floor_sdk.rps,
        "own_steps_cpu_ms": broker.cpu_ms - floor_sdk.cpu_ms,
        "listed_cpu_ms": broker.cpu_ms - bare.cpu_ms,
        "listed_share": (broker.cpu_ms - bare.cpu_ms) / floor_sdk.cpu_ms if floor_sdk.cpu_ms else 0.0,
        "slow_jwks_p50_change": slow.p50_ms / fast_jwks.p50_ms - 1,
        "ready_seconds": max(report.ready_seconds),
        "rss_mb": max(report.worker_peak_rss_mb or [0.0]),
    }
    lines = [
        f"one worker x {report.settings['threads']} threads (gthread), memory replay store, rate limits "
        f"off, {report.settings['connections']} connections",
        *load_table(report.loads),
        "",
        f"broker/floor throughput: {figures['throughput_vs_floor']:.3f}  (target >= {TARGETS['throughput_vs_floor']}) "
        f"{ok(figures['throughput_vs_floor'] >= TARGETS['throughput_vs_floor'])}",
        f"broker/hello throughput: {figures['throughput_vs_hello']:.3f}  (floor/hello {figures['floor_vs_hello']:.3f})",
        f"CPU per exchange, floor/broker: {figures['cpu_floor_vs_broker']:.3f}  "
        f"(the broker's own work: {figures['own_cpu_ms']:+.3f} ms per exchange)",
        f"broker/floor with the broker's STS client: {figures['throughput_vs_floor_broker_sdk']:.3f}  "
        f"(the broker's own steps alone: {figures['own_steps_cpu_ms']:+.3f} ms per exchange; no target)",
        f"policy, replay, audit, logging and metrics: {figures['listed_cpu_ms']:+.3f} ms per exchange, "
        f"{figures['listed_share']:.1%} of the floor with the broker's STS client  "
        f"(target < {TARGETS['listed_share']:.0%}) {ok(figures['listed_share'] < TARGETS['listed_share'])}",
        f"broker/floor p99: {figures['p99_vs_floor']:.3f}  (target <= {TARGETS['p99_vs_floor']}) "
        f"{ok(figures['p99_vs_floor'] <= TARGETS['p99_vs_floor'])}",
        f"slow JWKS p50 change: {figures['slow_jwks_p50_change']:+.1%}  (target < {TARGETS['slow_jwks_p50_change']:.0%}) "
        f"{ok(figures['slow_jwks_p50_change'] < TARGETS['slow_jwks_p50_change'])}",
        "serve to first 200 on /readyz: "
        + ", ".join(f"{s:.2f}" for s in report.ready_seconds)
        + f" s  (target < {TARGETS['ready_seconds']}) {ok(figures['ready_seconds'] < TARGETS['ready_seconds'])}",
        "peak RSS per worker: "
        + ", ".join(f"{m:.1f}" for m in report.worker_peak_rss_mb)
        + f" MB  (target < {TARGETS['rss_mb']:.0f}) {ok(figures['rss_mb'] < TARGETS['rss_mb'])}",
    ]
    if report.sweep:
        lines += [
            "",
            "threads per worker (connections = 2 x threads):",
            f"{'STS delay':>10}{'threads':>9}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'CPU ms/req':>12}{'failed':>8}",
        ]
        for load in report.sweep:
            lines.append(
                f"{load.sts_delay_ms:>8.0f}ms{load.threads:>9}{load.rps:>10.1f}{load.p50_ms:>10.2f}"
                f"{load.p99_ms:>10.2f}{load.cpu_ms:>12.3f}{load.failures:>8}"
            )
    return lines, figures


def summarize_deployed(report: Report) -> tuple[list[str], dict[str, Any]]:
    by_name = {load.name: load for load in report.deployed}
    floor = by_name[SYNC_FLOOR]
    lines = [
        f"deployed shape: {DEPLOYED_WORKERS} workers, {DEPLOYED_CONNECTIONS} connections; brokers are "
        f"`ci-broker serve --workers {DEPLOYED_WORKERS}` ({DEFAULT_THREADS} threads) with rate limits counted",
        *load_table(report.deployed, extra=True),
        "",
    ]
    figures: dict[str, Any] = {}
    for name in (SQLITE_BROKER, REDIS_BROKER):
        broker = by_name[name]
        throughput, p99 = broker.rps / floor.rps, broker.p99_ms / floor.p99_ms
        figures[name] = {"throughput_vs_floor": throughput, "p99_vs_floor": p99, "cpu_ms": broker.cpu_ms}
        lines.append(
            f"{name} / {SYNC_FLOOR}: throughput {throughput:.3f} (target >= {TARGETS['throughput_vs_floor']}) "
            f"{ok(throughput >= TARGETS['throughput_vs_floor'])}, p99 {p99:.3f} "
            f"(target <= {TARGETS['p99_vs_floor']}) {ok(p99 <= TARGETS['p99_vs_floor'])}, "
            f"CPU per exchange {broker.cpu_ms - floor.cpu_ms:+.3f} ms"
        )
    compared = (REDIS_BEFORE,) if REDIS_BEFORE in by_name else ()
    for suffix in ("", f", STS {SLOW_STS_SECONDS * 1000:.0f} ms"):
        for floor_name in (SYNC_FLOOR, GTHREAD_FLOOR) if suffix else (GTHREAD_FLOOR,):
            reference = by_name[floor_name + suffix]
            for name in (SQLITE_BROKER, REDIS_BROKER, *compared):
                broker = by_name[name + suffix]
                throughput, p99 = broker.rps / reference.rps, broker.p99_ms / reference.p99_ms
                figures[f"{name}{suffix} vs {floor_name}"] = {"throughput": throughput, "p99": p99}
                lines.append(
                    f"{name}{suffix} / {floor_name}: throughput {throughput:.3f}, p99 {p99:.3f}, "
                    f"CPU per exchange {broker.cpu_ms - reference.cpu_ms:+.3f} ms"
                )
    if report.redis_commands:
        sent = report.redis_commands.get("sent", {})
        inside = report.redis_commands.get("in scripts", {})
        lines += [
            "",
            f"redis per exchange: {sum(sent.values()):.2f} round trips ("
            + ", ".join(f"{c} {n:.2f}" for c, n in sent.items())
            + "); run inside scripts: "
            + (", ".join(f"{c} {n:.2f}" for c, n in inside.items()) or "none"),
        ]
        figures["redis_round_trips"] = sum(sent.values())
        figures["redis_commands"] = report.redis_commands
    lines.append(
        "serve --workers 2 to first 200 on /readyz: "
        + ", ".join(f"{name} {s:.2f} s" for name, s in report.deployed_ready_seconds.items())
    )
    return lines, figures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short runs, one readiness sample, no sweep")
    parser.add_argument(
        "--part", choices=PARTS, action="append", help="run only this part (repeatable; default: all)"
    )
    parser.add_argument("--duration", type=float, help="seconds per app and part (default 15; quick 2)")
    parser.add_argument(
        "--warmup", type=float, help="seconds of warm-up before each run (default 3; quick 1)"
    )
    parser.add_argument(
        "--connections", type=int, default=8, help="wrk connections, one-worker part (default 8)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=DEFAULT_THREADS,
        help=f"gunicorn threads per worker, one-worker part (default {DEFAULT_THREADS}, as ci-broker serve)",
    )
    parser.add_argument("--ready-samples", type=int, help="serve-to-ready measurements (default 3; quick 1)")
    parser.add_argument(
        "--sweep",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also sweep threads per worker (default: on unless --quick)",
    )
    parser.add_argument("--profile", help="also record a py-spy profile of the broker worker to this file")
    parser.add_argument("--no-pin", action="store_true", help="do not pin the servers and the load to cores")
    parser.add_argument(
        "--compare-path",
        help="deployed part: also run the redis broker from the broker package in this directory "
        "(another commit's tree) in the same slices",
    )
    parser.add_argument("--json", help="write the raw figures here")
    parser.add_argument("--workdir", help="keep configs, tokens and every server's output here")
    args = parser.parse_args(argv)
    args.part = args.part or list(PARTS)
    args.duration = args.duration or (2.0 if args.quick else 15.0)
    args.warmup = args.warmup or (1.0 if args.quick else 3.0)
    args.ready_samples = args.ready_samples or (1 if args.quick else 3)
    args.sweep = (not args.quick) if args.sweep is None else args.sweep
    for tool, package in (("wrk", "wrk"), ("redis-server", "redis-server")):
        if not shutil.which(tool) and (tool == "wrk" or "deployed" in args.part):
            print(f"error: {tool} is not installed (Debian: apt-get install {package})", file=sys.stderr)
            return 2
    if args.workdir:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
        report = Bench(args, Path(args.workdir).resolve()).run()
    else:
        with tempfile.TemporaryDirectory(prefix="ci-broker-bench-") as tmp:
            report = Bench(args, Path(tmp)).run()
    lines, figures = summarize(report)
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps({**asdict(report), "figures": figures}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
