"""Fixtures for the pipeline integrations: a real `ci-broker serve` in a subprocess, in front of
the sandbox's issuers and STS. Paths and helpers live in support.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
import requests

from broker.sandbox.stack import Sandbox, free_port
from support import VENV_BIN

@dataclass
class ServedBroker:
    """`ci-broker serve` (gunicorn, as in production) in front of the sandbox's issuers and STS."""

    box: Sandbox
    process: subprocess.Popen
    log: Path

    @property
    def url(self) -> str:
        return self.box.broker_url

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture(scope="module")
def served_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedBroker]:
    # A sandbox of its own: the session sandbox's port may already hold an in-process broker.
    workdir = tmp_path_factory.mktemp("served-broker")
    with Sandbox(workdir, broker_port=free_port()) as box:
        config = box.write_config()
        log = workdir / "serve.log"
        # gunicorn keeps a control socket under $HOME; a private HOME keeps runs apart.
        env = {**os.environ, "HOME": str(workdir)}
        with log.open("wb") as sink:
            process = subprocess.Popen(
                [str(VENV_BIN / "ci-broker"), "serve", "--config", str(config),
                 "--bind", f"127.0.0.1:{box.broker_port}", "--workers", "1"],
                stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=workdir)
        try:
            _wait_ready(box.broker_url, process, log)
            yield ServedBroker(box, process, log)
        finally:
            process.send_signal(signal.SIGINT)  # gunicorn's quick shutdown; SIGTERM waits for workers
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_ready(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"ci-broker serve exited:\n{log.read_text(errors='replace')}")
        try:
            if requests.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"ci-broker serve never became ready:\n{log.read_text(errors='replace')}")
