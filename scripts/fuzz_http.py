#!/usr/bin/env python3
"""Fire random and mutated requests at a running broker and count the answers by status.

With no --url it builds everything on loopback: the sandbox's CI issuers and STS, and
`ci-broker serve` (gunicorn, two workers, a sqlite replay store). Requests mix genuine exchanges,
mutated tokens (bit flips, spliced segments), tokens re-signed by the real issuer with mutated
claims or headers, malformed bodies, headers, methods and paths, and raw malformed HTTP.

It fails (exit 1) on any 5xx, any dropped connection on a well-formed request, a traceback or
internal error in the server's output, or a token, signature or credential in the server's output.

    python scripts/fuzz_http.py --requests 20000            # the full run
    python scripts/fuzz_http.py --requests 3000 --seed 1    # CI's short run
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import signal
import socket
import string
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

B64 = string.ascii_letters + string.digits + "-_"
ROLES = ["deploy-prod", "gitlab-deploy", "nope", "", "deploy-prod ", "DEPLOY-PROD", "../deploy-prod"]


class Fuzzer:
    def __init__(self, box: Any, url: str, rng: random.Random) -> None:
        self.box = box
        self.host, port = url.removeprefix("http://").split(":")
        self.port = int(port)
        self.rng = rng
        self.lock = threading.Lock()
        self.secrets: list[str] = []  # every token and credential that must never reach a log
        self.by_kind: dict[str, Counter[str]] = defaultdict(Counter)
        self.failures: list[str] = []
        self.local = threading.local()

    # -- ingredients ------------------------------------------------------------------------------
    def valid_token(self, rng: random.Random) -> tuple[str, str]:
        if rng.random() < 0.7:
            return self.box.github_token(), "deploy-prod"
        return self.box.gitlab_token(), "gitlab-deploy"

    def remember(self, token: str) -> None:
        with self.lock:
            self.secrets.append(token)

    def json_value(self, rng: random.Random, depth: int = 0) -> Any:
        choice = rng.random()
        if depth > 3 or choice < 0.5:
            return rng.choice(
                [
                    None,
                    True,
                    False,
                    0,
                    -1,
                    2**63,
                    10**30,
                    1.5,
                    float(rng.randint(0, 9)),
                    "",
                    "x" * rng.randint(0, 300),
                    "\ud800",
                    "\u202e",
                    "é",
                    "\x00",
                    "892734123",
                    "refs/heads/main",
                    "push",
                    "production",
                    "20",
                    "true",
                    rng.randint(-(10**9), 10**9),
                    "".join(rng.choice(string.printable) for _ in range(rng.randint(0, 30))),
                ]
            )
        if choice < 0.75:
            return [self.json_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
        return {
            rng.choice(["a", "sub", "SUB", "", "é"]): self.json_value(rng, depth + 1)
            for _ in range(rng.randint(0, 4))
        }

    def mutate_text(self, rng: random.Random, text: str) -> str:
        for _ in range(rng.randint(1, 4)):
            if not text:
                text = rng.choice(B64)
            i = rng.randrange(len(text))
            op = rng.randrange(9)
            if op == 0:
                text = text[:i] + rng.choice(B64 + ".=+/ ") + text[i + 1 :]
            elif op == 1:
                text = text[:i] + text[i + 1 :]
            elif op == 2:
                text = text[:i] + rng.choice(B64 + ".") + text[i:]
            elif op == 3:
                text = text[:i]
            elif op == 4:
                parts = text.split(".")
                rng.shuffle(parts)
                text = ".".join(parts)
            elif op == 5:
                text = text + "." + text.split(".")[0]
            elif op == 6:
                text = text.swapcase()
            elif op == 7:
                text = text[:i] + "=" * rng.randint(1, 3) + text[i:]
            else:
                text = text.replace(".", rng.choice(["..", ". ", "", ".\n"]), 1)
        return text

    def resigned_token(self, rng: random.Random) -> tuple[str, str]:
        """Validly signed by the real issuer: everything the verifier sees past the signature."""
        from broker.sandbox.issuer import github_claims, gitlab_claims

        github = rng.random() < 0.7
        issuer = self.box.github if github else self.box.gitlab
        claims = (github_claims if github else gitlab_claims)(aud=self.box.broker_url, iss=issuer.url)
        for _ in range(rng.randint(1, 4)):
            op = rng.random()
            name = rng.choice(list(claims) + ["SUB", "x", ""])
            if op < 0.5:
                claims[name] = self.json_value(rng)
            elif op < 0.7:
                claims.pop(name, None)
            elif op < 0.8:
                claims["exp"] = int(time.time()) + rng.choice([-(10**6), -100, 0, 100, 10**6, 10**12])
            elif op < 0.9:
                claims["jti"] = rng.choice(["fixed-jti", "\ud800", "", str(uuid.uuid4())])
            else:
                claims[name] = "[" * rng.randint(1, 3000)
        header: dict[str, Any] = {"alg": issuer.key.alg, "kid": issuer.key.kid, "typ": "JWT"}
        if rng.random() < 0.25:
            header[rng.choice(["alg", "kid", "typ", "crit", "jku", "x5c", "cty", "b64", "zip", "x"])] = (
                self.json_value(rng)
            )
        payload = json.dumps(claims).encode("utf-8", "surrogatepass")
        if rng.random() < 0.05:
            payload = payload.replace(b"{", b"{" + b" " * rng.randint(1, 5000), 1)
        return issuer.sign_raw(header, payload), "deploy-prod" if github else "gitlab-deploy"

    # -- one request ------------------------------------------------------------------------------
    def build(self, rng: random.Random) -> tuple[str, str, str, dict[str, str], bytes | None]:
        """(kind, method, path, headers, body)"""
        kind = rng.choices(
            ["valid", "mutated_token", "resigned", "garbage_auth", "body", "path", "headers"],
            weights=[8, 25, 30, 10, 12, 8, 7],
        )[0]
        method, path = "POST", "/v1/exchange"
        headers = {"Content-Type": "application/json"}
        body: Any = {"role": "deploy-prod"}
        token: str | None = None
        if kind == "valid":
            token, body["role"] = self.valid_token(rng)
        elif kind == "mutated_token":
            original, body["role"] = self.valid_token(rng)
            token = self.mutate_text(rng, original)
            if token.strip() == original:
                kind = "valid"  # the mutations cancelled out
        elif kind == "resigned":
            token, body["role"] = self.resigned_token(rng)
        elif kind == "garbage_auth":
            headers["Authorization"] = rng.choice(
                [
                    "",
                    "Bearer",
                    "Bearer ",
                    "bearer  x",
                    "Basic dXNlcjpwYXNz",
                    "Bearer a b",
                    "Token x",
                    "Bearer "
                    + "".join(rng.choice(string.printable[:94]) for _ in range(rng.randint(0, 200))),
                    "Bearer " + "A" * rng.choice([16383, 16384, 16385, 20000, 40000]),
                    "Bearer \u00e9\u00e9.\u00e9.\u00e9",
                ]
            )
        elif kind == "body":
            token, role = self.valid_token(rng)
            op = rng.randrange(8)
            if op == 0:
                body = self.json_value(rng)
            elif op == 1:
                body = bytes(rng.randrange(256) for _ in range(rng.randint(0, 300)))
            elif op == 2:
                body = {
                    "role": role,
                    "duration": rng.choice(
                        [-1, 0, 1, 899, 900, 43200, 43201, 10**20, 1.5, "900", True, None, [], {}]
                    ),
                }
            elif op == 3:
                body = {"role": role, rng.choice(["extra", "", "ROLE", "Role"]): self.json_value(rng)}
            elif op == 4:
                body = ('{"role": ' + "[" * rng.randint(1, 2100)).encode()
            elif op == 5:
                body = json.dumps(
                    {"role": role, "pad": "x" * rng.choice([3000, 4096, 5000, 100000])}
                ).encode()
            elif op == 6:
                headers["Content-Type"] = rng.choice(
                    [
                        "text/plain",
                        "application/json; charset=latin-1",
                        "application/x-www-form-urlencoded",
                        "",
                        "application/jsonx",
                        "APPLICATION/JSON",
                        "application/json; charset=UTF-8",
                    ]
                )
                body = {"role": role}
            else:
                body = {"role": rng.choice(ROLES + ["x" * 300, "\ud800", self.json_value(rng)])}
        elif kind == "path":
            method = rng.choice(["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "POST", "TRACE"])
            path = rng.choice(
                [
                    "/",
                    "/v1/exchange",
                    "/v1/exchange/",
                    "//v1/exchange",
                    "/v1/exchange?role=x",
                    "/.well-known/jwks.json",
                    "/.well-known/openid-configuration",
                    "/healthz",
                    "/readyz",
                    "/metrics",
                    "/v1/%2e%2e/healthz",
                    "/v1/exchange%00",
                    "/" + "a" * 3000,
                    "/v1/" + "".join(rng.choice(string.printable[:62]) for _ in range(10)),
                ]
            )
            token = self.box.github_token() if rng.random() < 0.5 else None
        else:
            token, body["role"] = self.valid_token(rng)
            for _ in range(rng.randint(1, 60)):
                headers[f"X-{rng.randint(0, 10**6)}"] = "v" * rng.randint(0, 2000)
            headers["X-Request-Id"] = rng.choice(
                ["", "short", "a" * 64, "a" * 65, "../../etc", "ok-id-12345678", "\u00e9" * 10]
            )
            if rng.random() < 0.3:
                headers["Authorization"] = "Bearer " + (token or "")
                token = None
        if token is not None:
            self.remember(token)
            headers["Authorization"] = f"Bearer {token}"
        if isinstance(body, (dict, list, int, float, str, bool)) or body is None:
            data = json.dumps(body).encode("utf-8", "surrogatepass")
        else:
            data = body
        return kind, method, path, headers, data

    def conn(self) -> http.client.HTTPConnection:
        if getattr(self.local, "conn", None) is None:
            self.local.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        return self.local.conn

    def send(self, seed: int) -> None:
        rng = random.Random(seed)
        if rng.random() < 0.03:
            self.send_raw(rng)
            return
        kind, method, path, headers, data = self.build(rng)
        for attempt in (0, 1):
            conn = self.conn()
            try:
                conn.request(
                    method, path, body=data, headers={k: _header_value(v) for k, v in headers.items()}
                )
                response = conn.getresponse()
                payload = response.read()
                break
            except (http.client.HTTPException, OSError) as exc:
                conn.close()
                self.local.conn = None
                if attempt == 1:
                    self.record(kind, "conn_error", f"{kind} {method} {path}: {type(exc).__name__}")
                    return
        status = response.status
        if response.getheader("Connection", "").lower() == "close":
            conn.close()
            self.local.conn = None
        if status == 200 and kind == "mutated_token":
            self.record(
                kind, "200", f"a mutated token was granted: {headers.get('Authorization', '')[:40]!r}..."
            )
            return
        if status == 200 and path == "/v1/exchange" and method == "POST":
            try:
                creds = json.loads(payload).get("credentials", {})
            except ValueError:
                creds = {}
            with self.lock:
                self.secrets.extend(
                    v for k, v in creds.items() if k in ("secret_access_key", "session_token")
                )
        if status >= 500:
            self.record(kind, str(status), f"{kind} {method} {path} -> {status}: {payload[:200]!r}")
            return
        if (
            status >= 400
            and response.getheader("Content-Type", "").startswith("application/json")
            and method != "HEAD"
        ):
            try:
                shape = set(json.loads(payload))
            except ValueError:
                shape = set()
            if shape != {"error", "message", "request_id"}:
                self.record(kind, "bad_shape", f"{kind} {method} {path} -> {status}: {payload[:200]!r}")
                return
        self.record(kind, str(status))

    def send_raw(self, rng: random.Random) -> None:
        token = self.box.github_token()
        lines = rng.choice(
            [
                b"GARBAGE\r\n\r\n",
                b"POST /v1/exchange HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{}",
                b"POST /v1/exchange HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n{}",
                b"POST /v1/exchange HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
                b"POST /v1/exchange HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nfffffffff\r\n",
                b"POST /v1/exchange HTTP/1.1\r\nHost: x\r\nX\x00: y\r\n\r\n",
                b"POST /v1/exchange HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n",
                b"POST /v1/exchange HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                + token.encode()
                + b'\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"rol\r\n0\r\n\r\n',
                b"GET /" + b"a" * 10000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
                bytes(rng.randrange(256) for _ in range(rng.randint(1, 500))) + b"\r\n\r\n",
            ]
        )
        self.remember(token)
        try:
            with socket.create_connection((self.host, self.port), timeout=10) as s:
                s.sendall(lines)
                s.shutdown(socket.SHUT_WR)
                response = b""
                while chunk := s.recv(65536):
                    response += chunk
        except OSError:
            self.record("raw", "closed")
            return
        status = (
            response.split(b" ", 2)[1].decode(errors="replace") if response.startswith(b"HTTP/") else "closed"
        )
        if status.startswith("5"):
            self.record("raw", status, f"raw {lines[:60]!r} -> {response[:200]!r}")
        else:
            self.record("raw", status)

    def record(self, kind: str, outcome: str, failure: str | None = None) -> None:
        with self.lock:
            self.by_kind[kind][outcome] += 1
            if failure and len(self.failures) < 50:
                self.failures.append(failure)


def _raised(output: str) -> set[str]:
    """The last line of each traceback in the server's log (`Kind: message`), to say in CI what
    failed without the log itself: JSON log records carry theirs in `exc_info`."""
    raised: set[str] = set()
    in_traceback = False
    for line in output.splitlines():
        if line.startswith("{"):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("exc_info"), str):
                raised.add(record["exc_info"].rstrip().splitlines()[-1])
        elif line.startswith("Traceback"):
            in_traceback = True
        elif in_traceback and line and not line.startswith(" "):
            raised.add(line)
            in_traceback = False
    return raised


def reported(raised: str, secrets: list[str]) -> str:
    """A raised line as the report (CI output) may show it: one that quotes a token or credential
    keeps its exception kind only."""
    if any(len(secret) >= 20 and secret in raised for secret in set(secrets)):
        return raised.split(":", 1)[0] + ": (message withheld: it quotes a token or credential)"
    return raised[:200]


def _header_value(value: str) -> str:
    # http.client refuses CR, LF and NUL in values; the raw-socket requests cover those.
    return value.encode("latin-1", "replace").decode("latin-1").translate({10: 32, 13: 32, 0: 32})


def start_broker(workdir: Path, workers: int, threads: int) -> tuple[Any, subprocess.Popen[bytes], Path]:
    import requests

    from broker.sandbox.stack import Sandbox

    box = Sandbox(workdir).start()
    config = box.config_dict()
    config["server"]["replay_store"] = f"sqlite:///{workdir / 'replay.db'}"
    # High enough that limits are exercised (counted) but rarely trip: 429s would hide deeper paths.
    config["server"]["rate_limits"] = {"per_identity": "1000000/minute", "per_client": "1000000/minute"}
    path = box.write_config(config)
    log = workdir / "server.log"
    # The sandbox's STS fetches the broker's JWKS from the broker on every call (AWS caches it):
    # a granted request holds one server thread while STS needs another, so there must be more
    # server threads than client connections, or grants stall into 502s that AWS would not cause.
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "broker",
            "serve",
            "--config",
            str(path),
            "--bind",
            f"127.0.0.1:{box.broker_port}",
            "--workers",
            str(workers),
            "--threads",
            str(threads),
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"ci-broker serve exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if requests.get(f"{box.broker_url}/readyz", timeout=2).status_code == 200:
                return box, proc, log
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise SystemExit("ci-broker serve never became ready")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=None, help="default: random (printed, to replay a run)")
    parser.add_argument("--threads", type=int, default=8, help="concurrent client connections")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers of the broker under test")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--keep-log", type=Path, default=None, help="copy the server's log here, to read a failure"
    )
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(2**32)

    with tempfile.TemporaryDirectory(prefix="ci-broker-fuzz-") as tmp:
        box, proc, log = start_broker(Path(tmp), args.workers, 2 * args.threads)
        fuzzer = Fuzzer(box, box.broker_url, random.Random(seed))
        seeds = random.Random(seed)
        start = time.monotonic()
        try:
            with ThreadPoolExecutor(args.threads) as pool:
                list(pool.map(fuzzer.send, (seeds.randrange(2**63) for _ in range(args.requests))))
            elapsed = time.monotonic() - start
            alive = proc.poll() is None
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
            box.stop()
        output = log.read_text(errors="replace")
        if args.keep_log is not None:
            args.keep_log.write_text(output)

    by_status: Counter[str] = Counter()
    for counts in fuzzer.by_kind.values():
        by_status.update(counts)
    server_errors = sum(n for status, n in by_status.items() if status.startswith("5"))
    problems = list(fuzzer.failures)
    if not alive:
        problems.append("the server died during the run")
    for marker in ("Traceback", "internal_error", "WORKER TIMEOUT", "Worker exited"):
        if marker in output:
            problems.append(f"server output contains {marker!r}")
    for line in sorted(_raised(output)):
        # The report reaches CI output: a message that quotes a token or credential keeps its kind only.
        quoted = any(len(secret) >= 20 and secret in line for secret in set(fuzzer.secrets))
        problems.append(
            f"server raised {line.split(':', 1)[0] + ': (message withheld)' if quoted else line[:200]}"
        )
    leaks = sum(1 for s in set(fuzzer.secrets) if len(s) >= 20 and s in output)
    leaks += sum(
        1
        for s in set(fuzzer.secrets)
        if s.count(".") == 2 and len(s.split(".")[2]) >= 40 and s.split(".")[2] in output
    )
    if leaks:
        problems.append(f"{leaks} token(s), signature(s) or credential(s) in the server output")
    report = {
        "seed": seed,
        "requests": args.requests,
        "elapsed_s": round(elapsed, 1),
        "requests_per_s": round(args.requests / elapsed, 1),
        "by_status": dict(sorted(by_status.items())),
        "by_kind": {k: dict(sorted(v.items())) for k, v in sorted(fuzzer.by_kind.items())},
        "server_errors": server_errors,
        "connection_errors": by_status.get("conn_error", 0),
        "bad_error_shapes": by_status.get("bad_shape", 0),
        "leaks": leaks,
        "problems": problems[:20],
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(
            f"fuzz: {args.requests} requests in {report['elapsed_s']}s ({report['requests_per_s']}/s), seed {seed}"
        )
        print("  by status: " + ", ".join(f"{k}: {v}" for k, v in report["by_status"].items()))
        for kind, counts in report["by_kind"].items():
            print(f"  {kind:14} " + ", ".join(f"{k}: {v}" for k, v in counts.items()))
        for problem in problems[:20]:
            print(f"  PROBLEM: {problem}")
    ok = (
        not problems
        and server_errors == 0
        and not by_status.get("conn_error")
        and not by_status.get("bad_shape")
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
