"""`python -m bench.run --quick`: proves each part of the benchmark runs end to end and prints every figure.

They assert that the figures are there and that no request failed, never how fast anything was:
timings on a shared CI machine say nothing. They need wrk (and the deployed part redis-server);
.ci/run installs both, so a CI run without them fails instead of quietly skipping.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def require(*tools: str) -> None:
    for tool in tools:
        if not shutil.which(tool):
            if os.environ.get("CI"):
                pytest.fail(f"{tool} is missing: .ci/run must install it (apt-get install {tool})")
            pytest.skip(f"{tool} is not installed (apt-get install {tool})")


def run_part(part: str, tmp_path: Path) -> tuple[str, dict]:
    figures = tmp_path / "figures.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--part", part, "--json", str(figures)],
        capture_output=True,
        text=True,
        timeout=400,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "some requests failed" not in result.stdout, result.stdout
    return result.stdout, json.loads(figures.read_text())


@pytest.mark.timeout(420)
def test_the_one_worker_part_runs_and_prints_every_figure(tmp_path):
    require("wrk")
    out, data = run_part("one-worker", tmp_path)
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
    assert {load["name"] for load in data["loads"]} == set(apps)
    assert all(load["requests"] > 0 and load["failures"] == 0 for load in data["loads"])
    assert data["worker_peak_rss_mb"] and data["ready_seconds"]
    assert not data["deployed"]


@pytest.mark.timeout(420)
def test_the_deployed_part_runs_both_stores_and_counts_redis_round_trips(tmp_path):
    require("wrk", "redis-server")
    out, data = run_part("deployed", tmp_path)
    names = {load["name"] for load in data["deployed"]}
    for store in ("sqlite", "redis"):
        assert f"broker, 2 workers, {store}" in names
        assert f"broker, 2 workers, {store}, STS 50 ms" in names
    assert {"floor, 2 sync workers", "floor, 2 gthread workers, STS 50 ms"} <= names
    assert all(load["requests"] > 0 and load["failures"] == 0 for load in data["deployed"])
    assert all(load["workers"] == 2 and load["connections"] == 16 for load in data["deployed"])
    assert {load["sts_delay_ms"] for load in data["deployed"]} == {0.0, 50.0}
    # The redis broker's slices read redis's own counters; the sqlite ones have none.
    for load in data["deployed"]:
        assert (load["store_usec"] > 0) == ("redis" in load["name"]), load
    # The broker's commands per exchange, as MONITOR saw them: at least the replay record.
    sent = data["redis_commands"]["sent"]
    assert sum(sent.values()) >= 1, sent
    assert "broker, 2 workers, redis / floor, 2 sync workers: throughput" in out
    assert "redis per exchange:" in out and "round trips" in out
    assert "serve --workers 2 to first 200 on /readyz:" in out
    assert not data["loads"]
