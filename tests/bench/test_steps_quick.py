"""python -m bench.steps --quick: the in-process breakdown runs end to end and prints every row.

Like the benchmark's own smoke test, it asserts that the figures are there, never their values.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(120)
def test_the_quick_breakdown_runs_and_prints_every_row():
    result = subprocess.run(
        [sys.executable, "-m", "bench.steps", "--quick"],
        capture_output=True,
        text=True,
        timeout=110,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = {line[:38].strip() for line in result.stdout.splitlines()}
    for app in (
        "floor",
        "floor, broker's STS client",
        "broker",
        "no policy/replay/audit/logs/metrics",
        "no audit event",
        "no body checks",
        "no claim checks",
        "no policy",
        "no replay record",
        "no exchange counter",
    ):
        assert app in rows, result.stdout
    assert "policy, replay, audit, logging and metrics together:" in result.stdout
    assert "all of the broker's own steps:" in result.stdout
    # The audit events went to the script's own file, not onto its output.
    assert '"event":"exchange"' not in result.stdout
