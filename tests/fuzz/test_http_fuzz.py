"""The bounded HTTP fuzz run (scripts/fuzz_http.py) in its short mode: a few thousand random and
mutated requests against `ci-broker serve`, and not one 5xx, dropped connection or leaked secret.
FUZZ_HTTP_REQUESTS sets the count (CI: the default 3000; a full run: 20000)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "fuzz_http.py"


def test_a_short_http_fuzz_run_has_no_server_errors() -> None:
    requests = os.environ.get("FUZZ_HTTP_REQUESTS", "3000")
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--requests", requests, "--json"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.stdout, result.stderr[-3000:]
    report = json.loads(result.stdout)
    print(
        f"\nhttp fuzz, seed {report['seed']}: {report['requests']} requests in {report['elapsed_s']}s: "
        f"{report['by_status']}"
    )
    assert report["server_errors"] == 0, report["problems"]
    assert report["connection_errors"] == 0, report["problems"]
    assert report["leaks"] == 0, report["problems"]
    assert report["bad_error_shapes"] == 0, report["problems"]
    assert not report["problems"], report["problems"]
    assert result.returncode == 0
    statuses = set(report["by_status"])
    assert {"200", "401", "403", "400"} <= statuses, "the run should reach grants and every kind of refusal"


def test_a_raised_message_quoting_a_token_is_withheld_from_the_report() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("fuzz_http", SCRIPT)
    assert spec is not None and spec.loader is not None
    fuzz_http = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fuzz_http)
    token = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlLWJ5dGVz"
    assert fuzz_http.reported(f"ValueError: bad token {token}", [token]) == (
        "ValueError: (message withheld: it quotes a token or credential)"
    )
    assert fuzz_http.reported("RuntimeError: threads can only be started once", [token]) == (
        "RuntimeError: threads can only be started once"
    )
