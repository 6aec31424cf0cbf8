"""`ci-broker serve` for real: gunicorn, a subprocess, and an exchange against the local STS."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from broker.sandbox.stack import Sandbox
from tests.helpers import assert_refused


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
