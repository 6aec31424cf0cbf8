"""`python -m bench.config_scale --quick`: the config-size benchmark runs end to end.

It asserts that every size was measured (check, the load split, `serve` readiness), never how
fast: timings on a shared CI machine say nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_the_quick_config_scale_run_measures_every_size(tmp_path):
    figures = tmp_path / "figures.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench.config_scale", "--quick", "--json", str(figures)],
        capture_output=True,
        text=True,
        timeout=280,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = json.loads(figures.read_text())["rows"]
    assert [row["roles"] for row in rows] == [50, 200]
    for row in rows:
        for name in (
            "file_mb",
            "check_seconds",
            "check_cpu_seconds",
            "check_rss_mb",
            "load_cpu_seconds",
            "build_cpu_seconds",
            "serve_ready_seconds",
            "serve_cpu_seconds",
            "serve_master_rss_mb",
            "serve_worker_rss_mb",
        ):
            assert row[name] > 0, (name, row)
    # A bigger config is a bigger file; the table prints a line per size.
    assert rows[1]["file_mb"] > rows[0]["file_mb"]
    lines = result.stdout.splitlines()
    assert any(line.split()[:1] == ["50"] for line in lines) and any(
        line.split()[:1] == ["200"] for line in lines
    )
