"""`python -m bench.diff_scale --quick`: the diff-size benchmark runs end to end.

It asserts that every size was measured and that each diff found exactly the change the script
made (two gained sets per ten roles, nothing lost), never how fast.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.bench
@pytest.mark.timeout(300)
def test_the_quick_diff_scale_run_measures_every_size(tmp_path):
    figures = tmp_path / "figures.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench.diff_scale", "--quick", "--json", str(figures)],
        capture_output=True,
        text=True,
        timeout=280,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    sizes = json.loads(figures.read_text())["sizes"]
    assert list(sizes) == ["10", "20"]
    for roles, row in sizes.items():
        assert row["gained_sets"] == 2 * int(roles) // 10
        for name in ("diff_cpu", "diff_wall", "diff_rss_mb", "load_cpu", "load_rss_mb"):
            assert row[name] > 0
