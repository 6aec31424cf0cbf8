"""`ci-broker demo`: the walk-through passes, fails when a step misbehaves, and never prints a secret."""

from __future__ import annotations

import io
import os
import queue
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from broker.demo import Demo, run_demo
from broker.sandbox import stack
from tests.helpers import run_demo_in_process

JWT = re.compile(r"eyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
AWS_SECRET_KEY = re.compile(r"[A-Za-z0-9/+=]{40}")
AWS_ACCESS_KEY_ID = re.compile(r"ASIA[A-Z0-9]{16}")


def test_demo_walkthrough_holds_every_expectation(demo_run: tuple[Demo, bool, str]) -> None:
    demo, ok, output = demo_run
    assert ok, output
    assert all(c.ok for c in demo.checks)
    steps = {c.step for c in demo.checks}
    assert {"1", "2", "3", "4", "5", "6", "7"} <= steps
    if hasattr(demo.sandbox, "gcp") and hasattr(demo.sandbox, "azure"):
        assert "8" in steps  # GCP and Azure, once the sandbox has their endpoints
    assert "9" in steps  # a session refreshed twice, a spent refresh token replayed, the session dead
    for text in (
        "ALLOW by rule 0",
        "[FAIL] repository_id:",
        "[FAIL] ref:",
        "already been used",
        "POST /v1/refresh #2: 200",
        "401 invalid_token: the refresh token was already used; the session has been ended",
        "audit: alert refresh_reuse, severity critical",
        "sub                          role:deploy-prod",
        "assumed-role/deploy-prod/",
    ):
        assert text in output


def test_demo_shows_a_buildkite_job_through_the_same_policy(demo_run: tuple[Demo, bool, str]) -> None:
    demo, ok, output = demo_run
    assert ok, output
    expectations = {c.expectation: c.ok for c in demo.checks}
    assert expectations["a Buildkite token gets AWS credentials through the same role and policy"]
    assert expectations["another Buildkite organization is refused (403)"]
    assert expectations["a rule that does not pin the organization's id is refused at load"]
    assert "step_key           null" in output
    assert demo.scrubbed == 0


def test_demo_prints_no_token_or_credential(demo_run: tuple[Demo, bool, str]) -> None:
    demo, ok, output = demo_run
    assert ok, output
    # Not a vacuous check: the list holds the CI tokens, the assertions and the AWS credentials.
    assert sum(bool(JWT.fullmatch(s)) for s in demo.secrets) >= 5
    assert any(AWS_SECRET_KEY.fullmatch(s) for s in demo.secrets)
    assert any(AWS_ACCESS_KEY_ID.fullmatch(s) for s in demo.secrets)
    assert sum(s.startswith("cibrt_") for s in demo.secrets) >= 3  # the session's refresh tokens
    for secret in demo.secrets:
        assert secret not in output
    # The printer's safety net must never have had to act: the demo itself prints no secret.
    assert demo.scrubbed == 0
    assert not JWT.search(output)
    assert not AWS_ACCESS_KEY_ID.search(output)


def test_demo_fails_when_the_policy_lets_a_feature_branch_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = stack.Sandbox.config_dict

    def weakened(self: stack.Sandbox) -> dict[str, Any]:
        config = original(self)
        del config["roles"]["deploy-prod"]["allow"][0]["claims"]["ref"]
        return config

    monkeypatch.setattr(stack.Sandbox, "config_dict", weakened)
    demo, ok, output = run_demo_in_process(tmp_path)
    assert not ok
    failed = [c for c in demo.checks if not c.ok]
    assert failed and all(c.step == "5" for c in failed)
    assert "FAILED" in output


def test_demo_reports_a_step_that_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: Demo, creds: dict[str, str]) -> dict[str, Any]:
        raise ConnectionError("sts unreachable")

    monkeypatch.setattr(Demo, "caller_identity", broken)
    demo, ok, output = run_demo_in_process(tmp_path)
    assert not ok
    assert any(c.step == "4" and "ConnectionError" in c.expectation for c in demo.checks if not c.ok)


def test_demo_without_the_demo_extra_says_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "moto", None)
    assert run_demo(out=io.StringIO()) == 2
    assert "pip install 'ci-broker[demo]'" in capsys.readouterr().err


@pytest.mark.process
def test_demo_command_exits_zero(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "broker", "demo"], capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "expectations held" in result.stdout
    assert not JWT.search(result.stdout + result.stderr)
    assert list(tmp_path.iterdir()) == []  # the ephemeral key and config are gone


# -- --serve --------------------------------------------------------------------------------------


class Lines:
    """A subprocess's stdout, read line by line in the background so the test can wait with a timeout."""

    def __init__(self, stream: Any) -> None:
        self.queue: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: Any) -> None:
        for line in stream:
            self.queue.put(line)

    def until(self, text: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.queue.get(timeout=0.2)
            except queue.Empty:
                continue
            self.seen.append(line)
            if text in line:
                return line
        raise AssertionError(f"{text!r} not printed; got:\n{''.join(self.seen)}")

    @property
    def text(self) -> str:
        return "".join(self.seen)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Lines]]:
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "broker", "demo", "--serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        yield proc, Lines(proc.stdout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def exchange(url: str, token_file: Path) -> requests.Response:
    return requests.post(
        f"{url}/v1/exchange",
        json={"role": "deploy-prod"},
        timeout=30,
        headers={"Authorization": f"Bearer {token_file.read_text()}"},
    )


def test_demo_serve_keeps_running_with_curl_commands_until_ctrl_c(
    served: tuple[subprocess.Popen[str], Lines], tmp_path: Path
) -> None:
    proc, lines = served
    lines.until("Ctrl-C stops everything")
    text = lines.text
    url = re.search(r"curl -s (http://127\.0\.0\.1:\d+)/\.well-known/jwks\.json", text).group(1)
    main = Path(re.search(r"\$\(cat (\S+token-main\.jwt)\)", text).group(1))
    feature = Path(re.search(r"\$\(cat (\S+token-feature\.jwt)\)", text).group(1))
    assert stat.S_IMODE(main.stat().st_mode) == 0o600
    assert stat.S_IMODE(main.parent.stat().st_mode) == 0o700
    tokens = {main.read_text(), feature.read_text()}

    granted = exchange(url, main)
    assert granted.status_code == 200
    assert exchange(url, main).status_code == 401  # replayed
    assert exchange(url, feature).status_code == 403
    lines.until("audit: refused deploy-prod to octo-org/octo-repo refs/heads/try-something")

    assert proc.stdin is not None
    proc.stdin.write("\n")
    proc.stdin.flush()
    lines.until("wrote fresh tokens")
    assert main.read_text() not in tokens
    tokens.add(main.read_text())
    assert exchange(url, main).status_code == 200

    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 0
    lines.until("stopped")
    assert not main.parent.exists()
    output = lines.text
    assert not JWT.search(output)
    for secret in (*tokens, *granted.json()["credentials"].values()):
        if secret != "eu-west-1":
            assert secret not in output
