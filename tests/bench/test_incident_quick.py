"""python -m bench.incident --quick: the incident-response benchmark runs end to end and prints every row.

Like the benchmark's other smoke tests, it asserts that the figures are there, never their values.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.redis_support import require_redis_server

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_the_quick_incident_benchmark_runs_and_prints_every_row():
    require_redis_server()
    result = subprocess.run(
        [sys.executable, "-m", "bench.incident", "--quick"],
        capture_output=True,
        text=True,
        timeout=290,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = {line[:25].strip() for line in result.stdout.splitlines()}
    for variant in ("broker", "block check off", "alert detectors off", "both off"):
        assert variant in rows, result.stdout
    for variant in ("no webhook", "webhook absent", "webhook hanging"):
        assert any(line.strip().startswith(variant) for line in result.stdout.splitlines()), result.stdout
    assert "the block check costs the request thread" in result.stdout
    for count in (0, 50, 1000):
        assert f"{count:>5} blocks:" in result.stdout
    assert "alerts dropped because the queue was full" in result.stdout
    assert '"type":"exchange"' not in result.stdout, "audit events go to the script's own file"
