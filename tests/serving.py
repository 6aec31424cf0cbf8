"""`ci-broker serve` as a subprocess for the tests that need the real server (gunicorn)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests


class ServedBroker:
    def __init__(
        self,
        config: Path,
        bind: str,
        log: Path,
        *,
        workers: int = 1,
        extra_env: dict[str, str] | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.url = f"http://{bind}"
        self.log = log
        self._log_file = log.open("wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "broker",
                "serve",
                "--config",
                str(config),
                "--bind",
                bind,
                "--workers",
                str(workers),
                *extra_args,
            ],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(extra_env or {})},
        )

    def wait_ready(self, timeout: float = 60) -> ServedBroker:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"ci-broker serve exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if requests.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise AssertionError(f"ci-broker serve at {self.url} never became ready")

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log_file.close()
        return self.proc.returncode

    def output(self) -> str:
        self._log_file.flush()
        return self.log.read_text(errors="replace")
