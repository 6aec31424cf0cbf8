"""`python -m bench.roundtrips --quick`: the store-cost breakdown runs against a real redis-server.

Like the other benchmark smoke tests, it asserts that every row is printed, never its figures.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(120)
def test_the_quick_round_trip_breakdown_prints_every_row():
    if not shutil.which("redis-server"):
        if os.environ.get("CI"):
            pytest.fail("redis-server is missing: .ci/run must install it")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    result = subprocess.run(
        [sys.executable, "-m", "bench.roundtrips", "--quick"],
        capture_output=True,
        text=True,
        timeout=110,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = {line[:48].strip(): line[48:].split() for line in result.stdout.splitlines()}
    for row, trips in (
        ("replay record, redis (SET NX EX)", "1"),
        ("rate-limit hit, redis (EVALSHA)", "1"),
        ("the exchange before: SET + 2 EVALSHA in sequence", "3"),
        ("the same 3 commands pipelined", "1"),
        ("identity limit + record, one script", "1"),
        ("the exchange now: client EVALSHA + that script", "2"),
        ("replay record, sqlite", "0"),
        ("rate-limit hit, memory", "0"),
    ):
        assert row in rows and rows[row][0] == trips, result.stdout
        assert all(float(figure) > 0 for figure in rows[row][1:]), result.stdout
