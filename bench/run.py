"""Benchmark: the broker against a hello-world app and the floor of its irreducible work.

One run, one machine, the same gunicorn settings (`broker.server.gunicorn_options`) and the same
load generator (wrk, with `bench/exchange.lua` sending a fresh pre-minted CI token per request)
for all three apps:

1. hello: a Flask POST endpoint that does nothing;
2. floor: one RS256 verify, one ES256 sign, one boto3 AssumeRoleWithWebIdentity to an instant STS;
3. broker: `ci-broker serve` exchanging real tokens from the local issuer (a fresh jti each) for
   an AWS web_identity role against the same instant STS.

The floor and the broker are measured in alternating slices (four in a full run), so drift in the
machine's load falls on both alike; so are the floor built with the broker's own STS client and
the broker app with policy, replay, audit, logging and metrics switched off, whose CPU time
against the broker's is what those steps cost (the issue caps it at 10% of the floor). It prints
throughput, p50 and p99 for each, the ratios broker/floor and broker/hello, the CPU time per
exchange, the peak RSS of each broker worker, the time from `ci-broker serve` to the first 200
on /readyz, and the broker's steady p50 while its issuer's JWKS endpoint takes 2 s to answer,
against the same broker app whose issuer answers at once (both refresh their keys every second,
so a slow fetch is in flight most of the time; their runs alternate).

On a machine with two or more cores the server is pinned to one core and everything else (wrk,
the STS, the issuer, this script) to another, so the load generator never steals the server's
CPU. Every server listens on 127.0.0.1 only; every load run is bounded in time.

    python bench/run.py            # full run (a few minutes), figures in bench/RESULTS.md
    python bench/run.py --quick    # a short smoke run that proves the script works (CI)
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import requests
import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.apps import REGION, ROLE_ARN  # noqa: E402
from broker.keys import generate_private_key, private_key_pem  # noqa: E402
from broker.sandbox.issuer import LocalIssuer, b64url, github_claims  # noqa: E402
from broker.sandbox.stack import free_port  # noqa: E402
from broker.server import DEFAULT_THREADS  # noqa: E402

LUA = Path(__file__).resolve().parent / "exchange.lua"
ROLE = "bench-deploy"
SLOW_JWKS_SECONDS = 2.0
FLOOR_BROKER_SDK = "floor, broker's STS client"
BROKER_WITHOUT_LISTED = "broker, listed steps off"
TARGETS = {
    "throughput_vs_floor": 0.9,
    "p99_vs_floor": 1.5,
    "slow_jwks_p50_change": 0.05,
    "ready_seconds": 1.5,
    "rss_mb": 100.0,
    "listed_share": 0.10,
}


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
    sts_delay_ms: float = 0.0
    cpu_ms: float = 0.0  # server worker CPU time (user + system) per request


@dataclass
class Report:
    machine: dict[str, Any]
    settings: dict[str, Any]
    loads: list[Load] = field(default_factory=list)
    ready_seconds: list[float] = field(default_factory=list)
    worker_peak_rss_mb: list[float] = field(default_factory=list)
    sweep: list[Load] = field(default_factory=list)


# -- processes ------------------------------------------------------------------------------------


class Procs:
    """Every process this run starts, stopped (SIGTERM, then SIGKILL) when the run ends."""

    def __init__(self, workdir: Path, pin: dict[str, str]) -> None:
        self.workdir = workdir
        self.pin = pin
        self.running: list[subprocess.Popen[bytes]] = []

    def start(
        self, name: str, argv: Sequence[str], role: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        prefix = ["taskset", "-c", self.pin[role]] if self.pin else []
        with (
            (self.workdir / f"{name}.out").open("ab") as out,
            (self.workdir / f"{name}.err").open("ab") as err,
        ):
            proc = subprocess.Popen(
                [*prefix, *argv],
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
            )
        self.running.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(35)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if proc in self.running:
            self.running.remove(proc)

    def stop_all(self) -> None:
        for proc in list(self.running):
            self.stop(proc)


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float, want: int | None = None) -> float:
    """Seconds until `url` answers (with `want`, that status); raises if the process dies first."""
    start = time.monotonic()
    session = requests.Session()
    while time.monotonic() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            response = session.get(url, timeout=0.5)
            if want is None or response.status_code == want:
                return time.monotonic() - start
        except requests.RequestException:
            pass
        time.sleep(0.01)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def gunicorn_workers(master: subprocess.Popen[bytes]) -> list[int]:
    # With taskset in front, the Popen is taskset's exec'd image: same pid, so children work.
    return children(master.pid)


# -- tokens -----------------------------------------------------------------------------------------


def _mint(job: tuple[bytes, str, str, str, int]) -> list[str]:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding

    pem, kid, issuer, audience, count = job
    key = serialization.load_pem_private_key(pem, password=None)
    header = b64url(json.dumps({"alg": "RS256", "kid": kid, "typ": "JWT"}).encode())
    tokens = []
    for _ in range(count):
        claims = github_claims(aud=audience, iss=issuer, jti=str(uuid.uuid4()))
        signing_input = f"{header}.{b64url(json.dumps(claims).encode())}"
        signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())  # type: ignore[union-attr]
        tokens.append(f"{signing_input}.{b64url(signature)}")
    return tokens


def mint_tokens(issuer: LocalIssuer, audience: str, count: int, path: Path) -> Path:
    """`count` GitHub-shaped tokens, each with its own jti, minted on every core (RSA signing is slow)."""
    pem = private_key_pem(issuer.key.private_key)
    procs = max(1, os.cpu_count() or 1)
    share = -(-count // procs)
    with multiprocessing.get_context("fork").Pool(procs) as pool:
        batches = pool.map(_mint, [(pem, issuer.key.kid, issuer.url, audience, share)] * procs)
    path.write_text("\n".join(t for batch in batches for t in batch) + "\n")
    path.chmod(0o600)
    return path


# -- load -----------------------------------------------------------------------------------------


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


# -- the run --------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("\n")[0]
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "wrk": wrk_version.strip(),
    }


def write_config(path: Path, broker_url: str, issuer_url: str, sts_url: str, key: Path) -> Path:
    config = {
        "server": {
            "issuer": broker_url,
            "signing_keys": [key.name],
            "replay_store": "memory",
            "token_max_age": 900,
            "leeway": 60,
            "rate_limits": "off",
        },
        "providers": {"github": {"issuer": issuer_url, "type": "github"}},
        "roles": {
            ROLE: {
                "cloud": "aws",
                "aws": {"role_arn": ROLE_ARN, "region": REGION, "duration": 3600, "sts_endpoint": sts_url},
                "allow": [
                    {
                        "provider": "github",
                        "claims": {
                            "repository_id": "892734123",
                            "ref": "refs/heads/main",
                            "environment": ["production", "prod"],
                            "job_workflow_ref": {
                                "glob": "octo-org/octo-repo/.github/workflows/*.yml@refs/heads/main"
                            },
                        },
                    }
                ],
            }
        },
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        cores = os.cpu_count() or 1
        self.pin = (
            {}
            if args.no_pin or cores < 2 or not shutil.which("taskset")
            else {"server": str(cores - 1), "load": ",".join(str(c) for c in range(cores - 1))}
        )
        self.procs = Procs(workdir, self.pin)
        self.python = sys.executable
        self.ci_broker = [self.python, "-m", "broker"]

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
    ) -> Load:
        """One wrk run, with the server workers' CPU time per request."""
        workers = gunicorn_workers(server)
        before = sum(cpu_seconds(pid) for pid in workers)
        load = wrk(name, url, tokens, seconds, connections, self.pin)
        load.cpu_ms = 1000 * (sum(cpu_seconds(pid) for pid in workers) - before) / max(1, load.requests)
        return load

    def serve_app(self, kind: str, port: int, threads: int, *extra: str) -> subprocess.Popen[bytes]:
        return self.procs.start(
            f"{kind}-{port}",
            [
                self.python,
                "-m",
                "bench.apps",
                kind,
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                "1",
                "--threads",
                str(threads),
                *extra,
            ],
            "server",
        )

    def serve_broker(self, config: Path, port: int, threads: int) -> tuple[subprocess.Popen[bytes], float]:
        """`ci-broker serve`, and the seconds from launching it to its first 200 on /readyz."""
        start = time.monotonic()
        proc = self.procs.start(
            f"broker-{port}",
            [
                *self.ci_broker,
                "serve",
                "--config",
                str(config),
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                "1",
                "--threads",
                str(threads),
            ],
            "server",
        )
        wait_http(f"http://127.0.0.1:{port}/readyz", proc, 60, want=200)
        return proc, time.monotonic() - start

    def tokens(self, issuer: LocalIssuer, audience: str, rps_hint: float, seconds: float, tag: str) -> Path:
        """Enough fresh tokens for `seconds` of load at up to 1.5 x `rps_hint` requests per second."""
        count = int(max(rps_hint, 50) * 1.5 * max(1, round(seconds))) + 100
        return mint_tokens(issuer, audience, count, self.workdir / f"tokens-{tag.replace(' ', '_')}.txt")

    def broker_tokens(
        self, issuer: LocalIssuer, audience: str, rps_hint: float, tag: str
    ) -> tuple[Path, Path]:
        return (
            self.tokens(issuer, audience, rps_hint, self.args.warmup, f"{tag}-warm"),
            self.tokens(issuer, audience, rps_hint, self.args.duration, tag),
        )

    def run(self) -> Report:
        a = self.args
        report = Report(
            machine=machine(),
            settings={
                "quick": a.quick,
                "duration_s": a.duration,
                "warmup_s": a.warmup,
                "connections": a.connections,
                "threads": a.threads,
                "workers": 1,
                "pinning": self.pin or "none",
                "gunicorn": "broker.server.gunicorn_options (gthread)",
            },
        )
        if self.pin:
            os.sched_setaffinity(0, {int(c) for c in self.pin["load"].split(",")})
        issuer = LocalIssuer().start()
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
            sts_port = free_port()
            sts = self.procs.start(
                "sts",
                [
                    self.python,
                    "-m",
                    "bench.apps",
                    "sts",
                    "--bind",
                    f"127.0.0.1:{sts_port}",
                    "--threads",
                    "16",
                ],
                "load",
            )
            sts_url = f"http://127.0.0.1:{sts_port}"
            wait_http(sts_url, sts, 30)

            key = self.workdir / "broker-signing.pem"
            key.write_bytes(private_key_pem(generate_private_key("ES256")))
            key.chmod(0o600)
            issuer_pub = self.workdir / "issuer-public.pem"
            from cryptography.hazmat.primitives import serialization

            issuer_pub.write_bytes(
                issuer.key.private_key.public_key().public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            )

            # hello and floor reuse one token set: neither checks jti.
            threads, conns = a.threads, a.connections
            shared_tokens = mint_tokens(issuer, "http://127.0.0.1", 2000, self.workdir / "tokens-shared.txt")
            port = free_port()
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
            floor_port = free_port()
            floor_url = f"http://127.0.0.1:{floor_port}"
            floor = self.serve_app(
                "floor",
                floor_port,
                threads,
                "--issuer-public-key",
                str(issuer_pub),
                "--signing-key",
                str(key),
                "--sts-url",
                sts_url,
            )
            floor_sdk_port = free_port()
            floor_sdk_url = f"http://127.0.0.1:{floor_sdk_port}"
            floor_sdk = self.serve_app(
                "floor",
                floor_sdk_port,
                threads,
                "--issuer-public-key",
                str(issuer_pub),
                "--signing-key",
                str(key),
                "--sts-url",
                sts_url,
                "--brokers-sts-client",
            )
            wait_http(floor_url, floor, 60)
            wait_http(floor_sdk_url, floor_sdk, 60)
            floor_rps = wrk("floor warm-up", floor_url, shared_tokens, a.warmup, conns, self.pin).rps
            wrk("floor warm-up", floor_sdk_url, shared_tokens, a.warmup, conns, self.pin)
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            config = write_config(self.workdir / "broker.yaml", url, issuer.url, sts_url, key)
            proc, ready = self.serve_broker(config, port, threads)
            report.ready_seconds.append(ready)
            # The same broker app with policy, replay, audit, logging and metrics switched off:
            # the broker's CPU over it is what those steps cost, the share the issue caps at 10%.
            bare_port = free_port()
            bare_url = f"http://127.0.0.1:{bare_port}"
            bare = self.serve_app("broker", bare_port, threads, "--config", str(config), "--without-listed")
            wait_http(f"{bare_url}/readyz", bare, 60, want=200)
            wrk(
                "broker warm-up",
                url,
                self.tokens(issuer, url, floor_rps, a.warmup, "broker-warm"),
                a.warmup,
                conns,
                self.pin,
            )
            wrk(
                "broker warm-up",
                bare_url,
                self.tokens(issuer, url, floor_rps, a.warmup, "bare-warm"),
                a.warmup,
                conns,
                self.pin,
            )
            rounds = 2 if a.quick else 4
            piece = a.duration / rounds
            broker_tokens = [self.tokens(issuer, url, floor_rps, piece, f"broker-{i}") for i in range(rounds)]
            bare_tokens = [self.tokens(issuer, url, floor_rps, piece, f"bare-{i}") for i in range(rounds)]
            slices: dict[str, list[Load]] = {
                "floor": [],
                FLOOR_BROKER_SDK: [],
                "broker": [],
                BROKER_WITHOUT_LISTED: [],
            }
            for i in range(rounds):
                runs = [
                    ("floor", floor_url, shared_tokens, floor),
                    (FLOOR_BROKER_SDK, floor_sdk_url, shared_tokens, floor_sdk),
                    ("broker", url, broker_tokens[i], proc),
                    (BROKER_WITHOUT_LISTED, bare_url, bare_tokens[i], bare),
                ]
                for name, target, tokens, server in runs if i % 2 == 0 else reversed(runs):
                    slices[name].append(self.measure(name, target, tokens, piece, conns, server))
            report.loads += [merge(name, loads, threads) for name, loads in slices.items()]
            report.worker_peak_rss_mb = [peak_rss_mb(pid) for pid in gunicorn_workers(proc)]
            if a.profile:
                self.profile(floor, lambda: (shared_tokens, shared_tokens), floor_url, conns, "-floor")
                self.profile(proc, lambda: self.broker_tokens(issuer, url, floor_rps, "profile"), url, conns)
            self.procs.stop(floor)
            self.procs.stop(floor_sdk)
            self.procs.stop(bare)
            self.procs.stop(proc)
            for _ in range(a.ready_samples - 1):
                proc, ready = self.serve_broker(config, port, threads)
                report.ready_seconds.append(ready)
                self.procs.stop(proc)

            # JWKS: the same broker app twice, both refreshing their issuer's keys every second;
            # one issuer answers at once, the other takes 2 s, so a slow fetch is in flight for
            # most of the measurement. Their runs alternate, so drift in the machine's load falls
            # on both alike.
            pair = {}
            for label, source in (("broker, JWKS refresh 1 s", issuer), ("broker, JWKS takes 2 s", slow)):
                port = free_port()
                url = f"http://127.0.0.1:{port}"
                config = write_config(self.workdir / f"broker-{port}.yaml", url, source.url, sts_url, key)
                proc = self.serve_app("broker", port, threads, "--config", str(config), "--jwks-refresh", "1")
                pair[label] = (source, url, proc)
            for label, (source, url, proc) in pair.items():
                wait_http(f"{url}/readyz", proc, 60, want=200)
                warm = self.tokens(source, url, floor_rps, a.warmup, f"{label}-warm")
                wrk(f"{label} warm-up", url, warm, a.warmup, conns, self.pin)
            rounds = 2
            parts: dict[str, list[Load]] = {label: [] for label in pair}
            for i in range(rounds):
                for label, (source, url, proc) in pair.items():
                    tokens = self.tokens(source, url, floor_rps, a.duration / rounds, f"{label}-{i}")
                    parts[label].append(self.measure(label, url, tokens, a.duration / rounds, conns, proc))
            for label, loads in parts.items():
                report.loads.append(merge(label, loads, threads))
                self.procs.stop(pair[label][2])

            if a.sweep:
                self.thread_sweep(report, issuer, key, sts_url, floor_rps)
        finally:
            self.procs.stop_all()
            issuer.stop()
            slow.stop()
        return report

    def thread_sweep(
        self, report: Report, issuer: LocalIssuer, key: Path, sts_url: str, floor_rps: float
    ) -> None:
        """Threads per worker against an instant STS and one that takes 50 ms (a real round trip)."""
        for delay, thread_counts in ((0.0, (1, 2, 4, 16)), (0.05, (4, 8, 16, 32))):
            sts_port = free_port()
            sts = self.procs.start(
                f"sts-{sts_port}",
                [
                    self.python,
                    "-m",
                    "bench.apps",
                    "sts",
                    "--bind",
                    f"127.0.0.1:{sts_port}",
                    "--threads",
                    "64",
                    "--delay",
                    str(delay),
                ],
                "load",
            )
            url_sts = f"http://127.0.0.1:{sts_port}"
            wait_http(url_sts, sts, 30)
            for threads in thread_counts:
                port = free_port()
                url = f"http://127.0.0.1:{port}"
                config = write_config(self.workdir / f"broker-{port}.yaml", url, issuer.url, url_sts, key)
                hint = floor_rps if delay == 0 else min(floor_rps, threads / delay)
                warm, tokens = self.broker_tokens(issuer, url, hint, f"sweep-{port}")
                proc, _ = self.serve_broker(config, port, threads)
                load = self.warm_and_load("broker", url, warm, tokens, threads, 2 * threads, proc)
                load.sts_delay_ms = delay * 1000
                report.sweep.append(load)
                self.procs.stop(proc)
            self.procs.stop(sts)

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
        spy = subprocess.Popen(
            [
                py_spy,
                "record",
                "--pid",
                str(workers[0]),
                "--rate",
                "1000",
                "--duration",
                str(round(self.args.duration)),
                "--format",
                fmt,
                "--output",
                str(out),
                "--gil",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wrk("profiled", url, tokens, self.args.duration, conns, self.pin)
        spy.wait(60)
        print(f"profile written to {out}")


def merge(name: str, loads: list[Load], threads: int) -> Load:
    """Alternating runs of one app as one: summed requests, mean p50, worst p99."""
    requests_ = sum(load.requests for load in loads)
    seconds = sum(load.requests / load.rps for load in loads if load.rps)
    return Load(
        name=name,
        rps=requests_ / seconds if seconds else 0.0,
        p50_ms=sum(load.p50_ms for load in loads) / len(loads),
        p99_ms=max(load.p99_ms for load in loads),
        requests=requests_,
        failures=sum(load.failures for load in loads),
        threads=threads,
        connections=loads[0].connections,
        cpu_ms=sum(load.cpu_ms * load.requests for load in loads) / max(1, requests_),
    )


# -- output ---------------------------------------------------------------------------------------


def summarize(report: Report) -> tuple[list[str], dict[str, Any]]:
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
        f"machine: {report.machine['cpu']}, {report.machine['cores']} cores, Python "
        f"{report.machine['python']}, {report.machine['wrk']}",
        f"settings: 1 worker x {report.settings['threads']} threads (gthread), "
        f"{report.settings['connections']} connections, {report.settings['duration_s']} s per run, "
        f"pinning {report.settings['pinning']}",
        "",
        f"{'app':<26}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'CPU ms/req':>12}{'requests':>10}{'failed':>8}",
    ]
    for load in report.loads:
        lines.append(
            f"{load.name:<26}{load.rps:>10.1f}{load.p50_ms:>10.2f}{load.p99_ms:>10.2f}"
            f"{load.cpu_ms:>12.3f}{load.requests:>10}{load.failures:>8}"
        )
    ok = lambda passed: "ok" if passed else "MISSED"  # noqa: E731
    lines += [
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
    if any(load.failures for load in report.loads):
        lines.append("WARNING: some requests failed; the figures of those runs are not comparable")
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short runs, one readiness sample, no sweep")
    parser.add_argument("--duration", type=float, help="seconds per measured run (default 15; quick 2)")
    parser.add_argument(
        "--warmup", type=float, help="seconds of warm-up before each run (default 3; quick 1)"
    )
    parser.add_argument("--connections", type=int, default=8, help="wrk connections (default 8)")
    parser.add_argument(
        "--threads",
        type=int,
        default=DEFAULT_THREADS,
        help=f"gunicorn threads per worker (default {DEFAULT_THREADS}, as ci-broker serve)",
    )
    parser.add_argument("--ready-samples", type=int, help="serve-to-ready measurements (default 3; quick 1)")
    parser.add_argument(
        "--sweep",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also sweep threads per worker (default: on unless --quick)",
    )
    parser.add_argument("--profile", help="also record a py-spy profile of the broker worker to this file")
    parser.add_argument("--no-pin", action="store_true", help="do not pin the server and the load to cores")
    parser.add_argument("--json", help="write the raw figures here")
    args = parser.parse_args(argv)
    args.duration = args.duration or (2.0 if args.quick else 15.0)
    args.warmup = args.warmup or (1.0 if args.quick else 3.0)
    args.ready_samples = args.ready_samples or (1 if args.quick else 3)
    args.sweep = (not args.quick) if args.sweep is None else args.sweep
    if not shutil.which("wrk"):
        print("error: wrk is not installed (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="ci-broker-bench-") as tmp:
        report = Bench(args, Path(tmp)).run()
    lines, figures = summarize(report)
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps({**asdict(report), "figures": figures}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
