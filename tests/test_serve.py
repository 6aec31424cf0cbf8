"""`ci-broker serve` for real: gunicorn, a subprocess, and an exchange against the local STS."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from broker.sandbox.stack import Sandbox, free_port
from tests.helpers import assert_refused
from tests.serving import ServedBroker
from tests.test_metrics import sample

SERVE = [sys.executable, "-m", "broker", "serve"]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited early with {proc.returncode}")
        try:
            if requests.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        except requests.RequestException:  # not listening yet, or slow to start under load
            pass
        time.sleep(0.1)
    raise AssertionError("broker never became ready")


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[tuple[Sandbox, subprocess.Popen, Path]]:
    workdir = tmp_path_factory.mktemp("served")
    with Sandbox(workdir) as box:
        config = box.write_config()
        out = (workdir / "stdout.log").open("w")
        err = (workdir / "stderr.log").open("w")
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "broker",
                "serve",
                "--config",
                str(config),
                "--bind",
                f"127.0.0.1:{box.broker_port}",
            ],
            stdout=out,
            stderr=err,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            wait_ready(box.broker_url, proc)
            yield box, proc, workdir
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
            out.close()
            err.close()


def test_a_real_exchange_through_gunicorn(served):
    box, _, workdir = served
    token = box.github_token()
    response = box.exchange(token)
    assert response.status_code == 200, response.text
    creds = response.json()["credentials"]
    assert box.sts.accepted[-1]["sub"] == "role:deploy-prod"
    time.sleep(0.3)
    stdout = (workdir / "stdout.log").read_text()
    events = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    assert any(
        e.get("outcome") == "granted" and e.get("request_id") == response.headers["X-Request-Id"]
        for e in events
    )
    logs = stdout + (workdir / "stderr.log").read_text()
    for secret in (token, creds["secret_access_key"], creds["session_token"]):
        assert secret not in logs


def test_a_long_bearer_token_gets_our_json_413_not_gunicorns_431(served):
    box, _, _ = served

    def send(length: int) -> requests.Response:
        return requests.post(
            f"{box.broker_url}/v1/exchange",
            json={"role": "deploy-prod"},
            headers={"Authorization": "Bearer " + "a" * length},
            timeout=10,
        )

    # Past gunicorn's default 8190-byte header limit, the broker itself still answers.
    assert_refused(send(9000), 401, "invalid_token")
    for length in (17000, 60000):
        assert_refused(send(length), 413, "payload_too_large")


def test_a_replay_through_gunicorn_is_refused(served):
    box, _, _ = served
    token = box.github_token()
    assert box.exchange(token).status_code == 200
    assert_refused(box.exchange(token), 401, "invalid_token")


def test_sigterm_shuts_down_gracefully(tmp_path):
    with Sandbox(tmp_path) as box:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "broker",
                "serve",
                "--config",
                str(box.write_config()),
                "--bind",
                f"127.0.0.1:{box.broker_port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            wait_ready(box.broker_url, proc)
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0


# -- /metrics on a listener of its own (--metrics-bind) ---------------------------------------------

# Spellings of /metrics that Flask routes to /metrics, so an ingress rule on the exact path misses
# them: a doubled slash, a percent-encoded letter, and an absolute-form request line.
METRICS_SPELLINGS = ["/metrics", "//metrics", "/%6detrics", "http://broker.example.com/metrics"]


def raw_get(url: str, target: str) -> tuple[int, bytes]:
    """GET with the request target sent exactly as given (requests would normalise it)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: broker\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while data := sock.recv(65536):
            answer += data
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def test_without_metrics_bind_every_spelling_of_metrics_reaches_the_metrics(served):
    box, _, _ = served
    for target in METRICS_SPELLINGS:
        status, body = raw_get(box.broker_url, target)
        assert status == 200 and b"ci_broker_exchanges_total" in body, target


@pytest.fixture(scope="module")
def metrics_bound(tmp_path_factory) -> Iterator[tuple[Sandbox, subprocess.Popen, str]]:
    """`serve --workers 2 --metrics-bind` (sqlite replay store)."""
    workdir = tmp_path_factory.mktemp("metrics-bound")
    with Sandbox(workdir) as box:
        config = box.config_dict()
        config["server"]["replay_store"] = f"sqlite:///{workdir / 'replay.db'}"
        metrics_bind = f"127.0.0.1:{free_port()}"
        served = ServedBroker(
            box.write_config(config),
            f"127.0.0.1:{box.broker_port}",
            workdir / "serve.log",
            workers=2,
            extra_args=("--metrics-bind", metrics_bind),
        )
        try:
            yield box, served.wait_ready().proc, f"http://{metrics_bind}"
        finally:
            assert served.stop() == 0


def test_metrics_bind_serves_metrics_there_and_no_spelling_of_it_on_the_main_port(metrics_bound):
    box, _, metrics_url = metrics_bound
    assert box.exchange(box.github_token()).status_code == 200
    response = requests.get(f"{metrics_url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    assert sample(response.text, "ci_broker_exchanges_total", outcome="granted") >= 1
    for target in METRICS_SPELLINGS:
        status, body = raw_get(box.broker_url, target)
        assert status == 404 and b"ci_broker" not in body, target
        assert json.loads(body)["error"] == "not_found"
    assert requests.get(f"{metrics_url}/healthz", timeout=10).status_code == 404


def test_the_metrics_listener_needs_no_worker(metrics_bound):
    # Served by the gunicorn master: with every worker frozen (as busy as workers can be), a
    # scrape still answers.
    box, proc, metrics_url = metrics_bound
    # A count a worker wrote, so the scrape has it whatever test ran before this one.
    assert box.exchange(box.github_token()).status_code == 200
    workers = worker_pids(proc.pid)
    assert len(workers) == 2
    for pid in workers:
        os.kill(pid, signal.SIGSTOP)
    try:
        response = requests.get(f"{metrics_url}/metrics", timeout=5)
    finally:
        for pid in workers:
            os.kill(pid, signal.SIGCONT)
    assert response.status_code == 200 and "ci_broker_exchanges_total" in response.text


def test_only_the_master_holds_the_metrics_socket(metrics_bound):
    _, proc, metrics_url = metrics_bound
    inode = listening_inode(int(metrics_url.rsplit(":", 1)[1]))
    holders = [pid for pid in [proc.pid, *worker_pids(proc.pid)] if inode in socket_inodes(pid)]
    assert holders == [proc.pid]


def listening_inode(port: int) -> str:
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(f":{port:04X}") and fields[3] == "0A":  # 0A: LISTEN
            return fields[9]
    raise AssertionError(f"nothing listens on port {port}")


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    return inodes


def worker_pids(master: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{master}/task/{master}/children").read_text().split()]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("9090", "expected HOST:PORT"),
        ("127.0.0.1:0", "expected HOST:PORT"),
        ("127.0.0.1:x", "expected HOST:PORT"),
    ],
)
def test_a_malformed_metrics_bind_is_refused_before_serving(tmp_path, value, message):
    result = run_serve(tmp_path, "--metrics-bind", value)
    assert result.returncode == 2 and message in result.stderr


def test_a_metrics_bind_on_a_port_in_use_or_the_main_port_is_refused(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_serve(tmp_path, "--metrics-bind", f"127.0.0.1:{port}")
    assert result.returncode == 2 and "cannot listen there" in result.stderr
    result = run_serve(tmp_path, "--bind", "127.0.0.1:18080", "--metrics-bind", "0.0.0.0:18080")
    assert result.returncode == 2 and "must differ from --bind" in result.stderr


def run_serve(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    with Sandbox(tmp_path) as box:
        return subprocess.run(
            [*SERVE, "--config", str(box.write_config()), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )


def test_the_metrics_listener_serves_a_bounded_number_of_clients_at_once():
    from broker.metricslistener import MAX_CLIENTS, MetricsListener

    listener = MetricsListener(f"127.0.0.1:{free_port()}")
    listener.start()
    url = "http://{}:{}".format(*listener.address)
    stalled = [socket.create_connection(listener.address, timeout=5) for _ in range(MAX_CLIENTS)]
    try:
        for sock in stalled:
            sock.sendall(b"G")  # and never the rest of the request
        time.sleep(0.2)
        with socket.create_connection(listener.address, timeout=5) as extra:
            assert extra.recv(1) == b""  # closed at once, without a thread
    finally:
        for sock in stalled:
            sock.close()
    time.sleep(0.2)
    assert requests.get(f"{url}/metrics", timeout=5).status_code == 200
    listener.server.shutdown()
    listener.server.server_close()


# -- start-up: what the master prepares before it forks -------------------------------------------

IMPORT_BEFORE_FORK = """
import gc, json, os, sys
from broker.config import load_config
from broker.server import import_before_fork, prepare_metrics_dir

prepare_metrics_dir()
config = load_config(sys.argv[1])
import_before_fork(config)
print(json.dumps({
    "modules": sorted(m for m in ("boto3", "flask", "google.auth", "azure.identity", "redis") if m in sys.modules),
    "frozen": gc.get_freeze_count(),
    "threads": __import__("threading").active_count(),
}))
"""


def test_the_master_imports_only_the_used_clouds_sdks_and_freezes_them_before_forking(sandbox, tmp_path):
    config = sandbox.config_dict()
    config["roles"] = {name: role for name, role in config["roles"].items() if role["cloud"] == "aws"}
    assert config["roles"]
    path = sandbox.write_config(config, name="aws-only.yaml")
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_BEFORE_FORK, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["modules"] == ["boto3", "flask"], "no SDK of a cloud no role uses, no redis for this store"
    assert seen["frozen"] > 0
    assert seen["threads"] == 1, "nothing that starts a thread runs before the fork"
