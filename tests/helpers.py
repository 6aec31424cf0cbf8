"""Assertions shared by the test modules, and `ci-broker` run in the test's own process."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import requests

from broker.cli import main


def assert_refused(response: requests.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code, body
    assert set(body) == {"error", "message", "request_id"}
    assert body["request_id"] == response.headers["X-Request-Id"]
    return body


def last_refusal(events: list[dict[str, Any]]) -> dict[str, Any]:
    assert events, "no audit event was written"
    event = events[-1]
    assert event["outcome"] == "refused", event
    return event


def ci_broker(
    *args: str, env: Mapping[str, str] | None = None, cwd: Path | str | None = None
) -> subprocess.CompletedProcess[str]:
    """`ci-broker ARGS` as a subprocess would report it (exit code, stdout, stderr), run in this
    process: the command's own code runs, without half a second of interpreter start and imports
    per call. `env` adds to the environment for the call. The console script as installed, and
    what only a process shows (exit on a signal, output buffering), keep tests of their own that
    start one."""
    out, err = io.StringIO(), io.StringIO()
    with _environment(env), contextlib.chdir(cwd or os.getcwd()):
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exc:  # argparse's usage errors and --help
                if isinstance(exc.code, str):
                    print(exc.code, file=err)
                code = 1 if isinstance(exc.code, str) else exc.code or 0
    return subprocess.CompletedProcess(["ci-broker", *args], code, out.getvalue(), err.getvalue())


@contextlib.contextmanager
def _environment(extra: Mapping[str, str] | None) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.update(extra or {})
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def run_demo_in_process(workdir: Path) -> tuple[Any, bool, str]:
    """`ci-broker demo` in this process: its Demo, whether every expectation held, its output."""
    from broker.demo import Demo

    out = io.StringIO()
    with Demo(workdir / "demo", out) as demo:
        ok = demo.run()
    return demo, ok, out.getvalue()
