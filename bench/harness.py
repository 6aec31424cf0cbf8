"""What the benchmark scripts share: the processes they start, their inputs, what they read back.

- `Procs` starts every server of a run (pinned to its share of the cores) and stops them all;
  `wait_http` waits for one to answer, `start_redis` brings up a redis-server on loopback;
- `/proc` readings: a gunicorn master's workers, CPU seconds, peak RSS;
- `mint_tokens` pre-mints GitHub-shaped CI tokens, each with its own jti;
- `write_config` writes the broker's config for the bench role (one AWS role, four conditions);
- `machine` and `load_average` describe where the figures were taken.

A library for the scripts beside it (`python -m bench.run`, `bench.steps`, `bench.config_scale`,
`bench.roundtrips`); it imports none of them.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests
import yaml

from broker.keys import generate_private_key, private_key_pem

if TYPE_CHECKING:
    from broker.sandbox.issuer import LocalIssuer

ROOT = Path(__file__).resolve().parent.parent
ROLE = "bench-deploy"
ROLE_ARN = "arn:aws:iam::123456789012:role/bench-deploy"
REGION = "eu-west-1"
# Counted on every exchange like the defaults (600/minute per identity, 6000/minute per client),
# but high enough that one load generator with one identity is never refused.
COUNTED_RATE_LIMITS = {"per_identity": "999999999/minute", "per_client": "999999999/minute"}
TOKEN_MAX_AGE = 900  # the bench brokers' token_max_age, and the bench tokens' lifetime


# -- processes ------------------------------------------------------------------------------------


def core_split(enabled: bool = True) -> dict[str, str]:
    """The servers under test on the last core, everything else (load, STS, stores) on the others.

    Empty (no pinning) with fewer than two cores, without taskset, or when not `enabled`.
    """
    cores = os.cpu_count() or 1
    if not enabled or cores < 2 or not shutil.which("taskset"):
        return {}
    return {"server": str(cores - 1), "load": ",".join(str(c) for c in range(cores - 1))}


class Procs:
    """Every process a run starts, stopped (SIGTERM, then SIGKILL) when the run ends.

    Each runs from the repository root unless told otherwise (so `python -m bench.apps` finds the
    package), with its output in `workdir`, pinned to the cores of its role in `pin` ("server" or
    "load").
    """

    def __init__(self, workdir: Path, pin: dict[str, str]) -> None:
        self.workdir = workdir
        self.pin = pin
        self.running: list[subprocess.Popen[bytes]] = []
        self.ports: set[int] = set()

    def port(self) -> int:
        """A free loopback port, never one this run handed out before (a server given a port may
        not have bound it yet, and the kernel would offer it again)."""
        from broker.sandbox.stack import free_port

        while (port := free_port()) in self.ports:
            pass
        self.ports.add(port)
        return port

    def start(
        self,
        name: str,
        argv: Sequence[str],
        role: str,
        env: dict[str, str] | None = None,
        cwd: Path = ROOT,
    ) -> subprocess.Popen[bytes]:
        prefix = ["taskset", "-c", self.pin[role]] if self.pin else []
        with (
            (self.workdir / f"{name}.out").open("ab") as out,
            (self.workdir / f"{name}.err").open("ab") as err,
        ):
            proc = subprocess.Popen(
                [*prefix, *argv],
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env={**os.environ, **(env or {})},
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


def start_redis(procs: Procs, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A redis-server on a free loopback port with the load's cores, no persistence; and its URL."""
    binary = shutil.which("redis-server")
    if not binary:
        raise RuntimeError("redis-server is not installed (Debian: apt-get install redis-server)")
    port = procs.port()
    # The same options as the tests' redis: nothing written to disk, loopback only.
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir), "--save", ""]
    argv += ["--appendonly", "no", "--protected-mode", "yes", "--loglevel", "warning"]
    proc = procs.start(f"redis-{port}", argv, "load")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


# -- /proc readings -------------------------------------------------------------------------------


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


def gunicorn_workers(master: subprocess.Popen[bytes]) -> list[int]:
    # With taskset in front, the Popen is taskset's exec'd image: same pid, so children work.
    return children(master.pid)


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- inputs ---------------------------------------------------------------------------------------


def _mint(job: tuple[bytes, str, str, str, int]) -> list[str]:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding

    from broker.sandbox.issuer import b64url, github_claims

    pem, kid, issuer, audience, count = job
    key = serialization.load_pem_private_key(pem, password=None)
    header = b64url(json.dumps({"alg": "RS256", "kid": kid, "typ": "JWT"}).encode())
    tokens = []
    for _ in range(count):
        # Valid for the broker's whole token_max_age (900 s in `broker_config`), not a real job's
        # 5 minutes: every app's tokens are minted before the alternating slices begin, which on
        # a busy machine end more than 5 minutes later (a whole app's slices were then refused).
        exp = int(time.time()) + TOKEN_MAX_AGE
        claims = github_claims(aud=audience, iss=issuer, jti=str(uuid.uuid4()), exp=exp)
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


def signing_key(workdir: Path) -> Path:
    """A fresh ES256 signing key for the broker, in `workdir`."""
    key = workdir / "broker-signing.pem"
    key.write_bytes(private_key_pem(generate_private_key("ES256")))
    key.chmod(0o600)
    return key


def bench_role(sts_url: str) -> dict[str, Any]:
    """The role every bench token is granted: AWS web_identity, four claim conditions (one a glob)."""
    return {
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


def broker_config(
    broker_url: str,
    issuer_url: str,
    key: Path,
    roles: dict[str, Any],
    *,
    replay_store: str = "memory",
    rate_limits: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A config document: one GitHub provider, the given roles; rate limits off unless given."""
    return {
        "server": {
            "issuer": broker_url,
            "signing_keys": [key.name],
            "replay_store": replay_store,
            "token_max_age": TOKEN_MAX_AGE,
            "leeway": 60,
            "rate_limits": rate_limits or "off",
        },
        "providers": {"github": {"issuer": issuer_url, "type": "github"}},
        "roles": roles,
    }


def write_config(
    path: Path,
    broker_url: str,
    issuer_url: str,
    sts_url: str,
    key: Path,
    *,
    replay_store: str = "memory",
    rate_limits: dict[str, str] | None = None,
) -> Path:
    """The bench role's config, next to `key` (signing keys are read relative to the config)."""
    roles = {ROLE: bench_role(sts_url)}
    document = broker_config(
        broker_url, issuer_url, key, roles, replay_store=replay_store, rate_limits=rate_limits
    )
    return write_yaml(path, document)


def write_yaml(path: Path, document: dict[str, Any]) -> Path:
    # libyaml's emitter where PyYAML has it: the pure one takes seconds for a 20,000-role config.
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    path.write_text(yaml.dump(document, Dumper=dumper, sort_keys=False))
    return path


# -- where the figures were taken -----------------------------------------------------------------


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
    wrk = shutil.which("wrk")
    wrk_version = subprocess.run([wrk, "-v"], capture_output=True, text=True).stdout if wrk else ""
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "wrk": wrk_version.split("\n")[0].strip() or "not installed",
        "pyyaml_libyaml": bool(getattr(yaml, "__with_libyaml__", False)),
    }


def load_average() -> float:
    """The machine's one-minute load average (other people's work included)."""
    return os.getloadavg()[0]


def wsgi_environ(token: str, body: bytes, path: str = "/v1/exchange") -> dict[str, Any]:
    """A POST as gunicorn hands it to the app, for the in-process measurements."""
    return {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": path,
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8080",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "40000",
        "HTTP_HOST": "127.0.0.1:8080",
        "HTTP_AUTHORIZATION": f"Bearer {token}",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "wsgi.version": (1, 0),
    }
