"""bench/run.py --quick: proves the benchmark script runs end to end and prints every figure.

It asserts that the figures are there and that no request failed, never how fast anything was:
timings on a shared CI machine say nothing. Needs wrk (Debian: apt-get install wrk); .ci/run
installs it, so a CI run without it fails instead of quietly skipping.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(180)
def test_the_quick_benchmark_runs_and_prints_every_figure(tmp_path):
    if not shutil.which("wrk"):
        if os.environ.get("CI"):
            pytest.fail("wrk is missing: .ci/run must install it (apt-get install wrk)")
        pytest.skip("wrk is not installed (apt-get install wrk)")
    figures = tmp_path / "figures.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--json", str(figures)],
        capture_output=True,
        text=True,
        timeout=170,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    apps = (
        "hello",
        "floor",
        "floor, broker's STS client",
        "broker",
        "broker, listed steps off",
        "broker, JWKS refresh 1 s",
        "broker, JWKS takes 2 s",
    )
    for app in apps:
        assert any(line.startswith(app + " ") for line in out.splitlines()), out
    for figure in (
        "broker/floor throughput:",
        "broker/hello throughput:",
        "CPU per exchange",
        "broker/floor with the broker's STS client:",
        "policy, replay, audit, logging and metrics:",
        "broker/floor p99:",
        "slow JWKS p50 change:",
        "serve to first 200 on /readyz:",
        "peak RSS per worker:",
    ):
        assert figure in out, out
    assert "some requests failed" not in out, out

    import json

    data = json.loads(figures.read_text())
    assert {load["name"] for load in data["loads"]} == set(apps)
    assert all(load["requests"] > 0 and load["failures"] == 0 for load in data["loads"])
    assert data["worker_peak_rss_mb"] and data["ready_seconds"]
