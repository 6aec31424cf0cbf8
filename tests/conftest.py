"""Shared fixtures: the local sandbox (CI issuers, STS), the broker app, and captured audit/logs."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.sandbox.stack import Sandbox


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """Issuers and STS, started once per test session; each test builds its own broker app."""
    with Sandbox(tmp_path_factory.mktemp("sandbox")) as box:
        yield box


@pytest.fixture
def broker(sandbox: Sandbox) -> Iterator[Any]:
    """A broker with the sandbox's demo policy, served at sandbox.broker_url."""
    app = sandbox.serve_in_process()
    yield app
    app.extensions["broker"].close()


@pytest.fixture
def serve_config(sandbox: Sandbox) -> Iterator[Any]:
    """Serve a broker built from a custom config dict: `serve_config(cfg)`."""
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
