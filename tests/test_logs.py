"""Logs: JSON lines with the request id on every line; audit events routed on their own."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest
import requests
import yaml

from broker import logs
from broker.sandbox.stack import Sandbox


def test_an_operational_line_inside_a_request_carries_that_requests_id(sandbox, broker):
    stream = io.StringIO()
    logs.configure(stream=stream)
    try:

        @broker.get("/_test_log")
        def _log_something() -> str:  # a view that logs, like any broker code path
            logging.getLogger("broker.test").warning("something happened")
            return "ok"

        response = requests.get(
            f"{sandbox.broker_url}/_test_log", headers={"X-Request-Id": "req-0123456789"}, timeout=10
        )
        logging.getLogger("broker.test").warning("outside any request")
    finally:
        root = logging.getLogger()
        for handler in [h for h in root.handlers if getattr(h, "_ci_broker", False)]:
            root.removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    inside = next(line for line in lines if line["message"] == "something happened")
    outside = next(line for line in lines if line["message"] == "outside any request")
    assert inside["request_id"] == response.headers["X-Request-Id"] != "req-0123456789"
    assert inside["level"] == "WARNING" and inside["logger"] == "broker.test" and inside["time"]
    assert outside["request_id"] is None


def test_audit_events_go_to_the_file_named_and_not_to_stdout(tmp_path, sandbox, broker, capsys):
    path = tmp_path / "audit.log"
    handler = logs.configure_audit(str(path))
    try:
        response = sandbox.exchange(None)
    finally:
        logging.getLogger("broker.audit").removeHandler(handler)
        handler.close()
    events = [json.loads(line) for line in path.read_text().splitlines()]
    assert events[-1]["request_id"] == response.headers["X-Request-Id"]
    assert events[-1]["outcome"] == "refused"
    assert "exchange" not in capsys.readouterr().out


def test_reconfiguring_the_audit_log_replaces_our_handler_and_keeps_others(tmp_path):
    logger = logging.getLogger("broker.audit")
    theirs = logging.NullHandler()
    logger.addHandler(theirs)
    try:
        first = logs.configure_audit(str(tmp_path / "a.log"))
        second = logs.configure_audit(str(tmp_path / "b.log"))
        assert first not in logger.handlers and second in logger.handlers and theirs in logger.handlers
    finally:
        for handler in (theirs, second):
            logger.removeHandler(handler)
            handler.close()


@pytest.mark.gunicorn
def test_under_serve_every_line_is_json_and_no_secret_reaches_any_output(tmp_path):
    with Sandbox(tmp_path) as box:
        config = box.config_dict()
        path = tmp_path / "broker.yaml"
        path.write_text(yaml.safe_dump(config))
        audit = tmp_path / "audit.log"
        port = box.broker_port  # the sandbox's STS trusts the broker at this address
        out, err = (tmp_path / "out.log").open("wb"), (tmp_path / "err.log").open("wb")
        env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "broker",
                "serve",
                "--config",
                str(path),
                "--bind",
                f"127.0.0.1:{port}",
                "--audit-log",
                str(audit),
            ],
            stdout=out,
            stderr=err,
            env=env,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None, (tmp_path / "err.log").read_text()
                try:
                    if requests.get(f"{url}/readyz", timeout=2).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                assert time.monotonic() < deadline
                time.sleep(0.1)
            token = box.github_token()
            granted = requests.post(
                f"{url}/v1/exchange",
                json={"role": "deploy-prod"},
                timeout=30,
                headers={"Authorization": f"Bearer {token}"},
            )
            assert granted.status_code == 200, granted.text
            refused = requests.post(
                f"{url}/v1/exchange",
                json={"role": "deploy-prod"},
                timeout=30,
                headers={"Authorization": f"Bearer {token}"},
            )  # replayed
            assert refused.status_code == 401
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(40)
            out.close()
            err.close()
    stderr = (tmp_path / "err.log").read_text()
    stdout = (tmp_path / "out.log").read_text()
    records = [json.loads(line) for line in stderr.splitlines() if line.strip()]
    assert records and all({"time", "level", "logger", "message", "request_id"} <= set(r) for r in records)
    assert any(r["message"].startswith("Listening at") for r in records)
    events = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [e["request_id"] for e in events] == [
        granted.headers["X-Request-Id"],
        refused.headers["X-Request-Id"],
    ]
    assert "exchange" not in stdout
    creds = granted.json()["credentials"]
    for secret in (token, token.split(".")[2], creds["secret_access_key"], creds["session_token"]):
        for text in (stderr, stdout, audit.read_text()):
            assert secret not in text
