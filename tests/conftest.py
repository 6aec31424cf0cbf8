"""Shared fixtures: the local sandbox (CI issuers, STS), the broker app, and captured audit/logs."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.sandbox.stack import Sandbox

# -- test tiers ------------------------------------------------------------------------------------
# `make test` runs everything; `make check` (the edit-test loop) runs `-m "not slow"`. A test is
# slow when it drives a real runner or server process. It gets `slow` plus a marker naming what it
# drives, from the fixture it uses or the file it lives in, so a new test that uses one of these
# fixtures (or is added to one of these files) is placed without a decorator. A test that starts
# one inline takes the marker by hand (`@pytest.mark.gunicorn`), which implies `slow` too; so does
# `@pytest.mark.slow` alone. The markers are registered in pyproject.toml.
ROOT = Path(__file__).resolve().parent.parent
SLOW_FIXTURES = {
    # `ci-broker serve` (gunicorn) subprocesses
    "served": "gunicorn",
    "served_broker": "gunicorn",
    "replicas": "gunicorn",
    "two_workers": "gunicorn",
    "terraform": "terraform",
}
SLOW_FILES = {
    "tests/test_serve.py": "gunicorn",
    "tests/fuzz/test_http_fuzz.py": "gunicorn",
    "tests/integrations/test_github_action.py": "act",
    "tests/integrations/test_gitlab_template.py": "gitlab_ci_local",
}
# Whole directories whose tests drive processes that take seconds each: the pipeline clients (the
# POSIX client under several shells and awks, the Action's node code) and the benchmarks' smoke runs
# (wrk against gunicorn), and fault injection that waits out real timeouts (stalled JWKS servers,
# slow clients, throttling clouds). Pure parsing tests there are cheap and go along.
SLOW_DIRS = {
    "tests/integrations": "client",
    "tests/bench": "bench",
    "tests/resilience": "faults",
}
# Markers that make a test slow when set by hand or by its own file (test_tf_checkov.py: checkov);
# by hand: `process` (starts Python processes of its own) and `waits` (a real clock, a second or more).
SLOW_MARKERS = {
    *("gunicorn", "act", "gitlab_ci_local", "terraform", "bench", "checkov", "client", "faults"),
    *("process", "waits"),
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        drives = {SLOW_FIXTURES[name] for name in getattr(item, "fixturenames", ()) if name in SLOW_FIXTURES}
        if item.path.is_relative_to(ROOT):
            where = item.path.relative_to(ROOT)
            if in_file := SLOW_FILES.get(where.as_posix()):
                drives.add(in_file)
            if in_dir := SLOW_DIRS.get(where.parent.as_posix()):
                drives.add(in_dir)
        for name in sorted(drives):
            item.add_marker(name)
        if SLOW_MARKERS.intersection(m.name for m in item.iter_markers()):
            item.add_marker("slow")


# -- tests skipped for a missing tool --------------------------------------------------------------
# The helpers that look for a tool skip with a reason naming it and how to install it ("... is not
# installed ...", importorskip's "could not import ..."). Those skips are counted in a summary at
# the end of every run, and CI_BROKER_REQUIRE_ALL_TOOLS=1 (set by .ci/run) turns each into a
# failure: a run that silently tested less than it says is not a pass.
MISSING_TOOL = re.compile(r"\bis not installed\b|\bis missing\b|\bcould not import\b|\bpip install\b")
REQUIRE_ALL_TOOLS = os.environ.get("CI_BROKER_REQUIRE_ALL_TOOLS") == "1"
_MISSING: list[tuple[str, str]] = []  # (test id, reason), gathered where the reports arrive


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return reason.removeprefix("Skipped: ")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[Any]:
    report: pytest.TestReport = yield
    if report.skipped and MISSING_TOOL.search(reason := _skip_reason(report)):
        # user_properties travel with the report (also from pytest-xdist's workers).
        report.user_properties.append(("missing_tool", reason))
        if REQUIRE_ALL_TOOLS:
            report.outcome = "failed"
            report.longrepr = f"{reason}\n(CI_BROKER_REQUIRE_ALL_TOOLS=1: a missing tool fails the run)"
    return report


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _MISSING.extend((report.nodeid, value) for key, value in report.user_properties if key == "missing_tool")


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if not _MISSING:
        return
    by_reason: dict[str, int] = {}
    for _, reason in _MISSING:
        by_reason[reason] = by_reason.get(reason, 0) + 1
    terminalreporter.section("tests that need a missing tool", sep="=", red=True, bold=True)
    for reason, count in sorted(by_reason.items()):
        terminalreporter.line(f"{count:5d}  {reason}", red=True)
    terminalreporter.line(
        f"{len(_MISSING)} tests did not run because a tool is missing: see the README, "
        "'What make test needs', or run tests/integrations/install-tools.sh",
        red=True,
        bold=True,
    )


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """Issuers and STS, started once per test session; each test builds its own broker app."""
    with Sandbox(tmp_path_factory.mktemp("sandbox")) as box:
        yield box


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, bool, str]:
    """One run of the default `ci-broker demo` (its Demo, whether every expectation held, its
    output), read by the tests that each check a part of it."""
    from tests.helpers import run_demo_in_process

    return run_demo_in_process(tmp_path_factory.mktemp("demo"))


@pytest.fixture
def broker(sandbox: Sandbox) -> Iterator[Any]:
    """A broker with the sandbox's demo policy, served at sandbox.broker_url."""
    sandbox.settle()  # nothing an earlier test stalled is still to be recorded
    app = sandbox.serve_in_process()
    yield app
    app.extensions["broker"].close()


@pytest.fixture
def serve_config(sandbox: Sandbox) -> Iterator[Any]:
    """Serve a broker built from a custom config dict: `serve_config(cfg)`."""
    sandbox.settle()  # nothing an earlier test stalled is still to be recorded
    apps: list[Any] = []

    def serve(config: dict[str, Any], **kwargs: Any) -> Any:
        app = sandbox.serve_in_process(config, **kwargs)
        apps.append(app)
        return app

    yield serve
    for app in apps:
        app.extensions["broker"].close()


class AuditCapture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.events: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.events.append(json.loads(record.getMessage()))


@pytest.fixture
def audit_events() -> Iterator[list[dict[str, Any]]]:
    logger = logging.getLogger("broker.audit")
    handler = AuditCapture()
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    yield handler.events
    logger.removeHandler(handler)
    logger.setLevel(old_level)


@pytest.fixture
def all_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    return caplog


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    from broker.keys import write_private_key

    path = tmp_path / "signing.pem"
    write_private_key(path, "ES256")
    return path
