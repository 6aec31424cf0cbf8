"""python -m bench.refresh --quick: refresh against exchange runs end to end and prints a row per store.

Like the benchmark's other smoke tests, it asserts that the figures are there, never their values.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(180)
def test_the_quick_refresh_benchmark_runs_and_prints_every_store():
    result = subprocess.run(
        [sys.executable, "-m", "bench.refresh", "--quick"],
        capture_output=True,
        text=True,
        timeout=170,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    stores = ["memory", "sqlite"] + (["redis"] if shutil.which("redis-server") else [])
    for store in stores:
        assert re.search(
            rf"^{store} +\d+ +\d+ +\d+\.\d\d +\d+\.\d\d +\d+\.\d\d +\d+\.\d\d$", result.stdout, re.M
        ), result.stdout
