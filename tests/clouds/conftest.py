"""Fixtures for the GCP and Azure back ends: quick HTTP policies, a guard against any call off
loopback, a capture of every log record at DEBUG, and helpers to mint assertions by hand."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterator
from datetime import UTC
from typing import Any

import jwt
import pytest

from broker.clouds import azure as azure_cloud
from broker.clouds import gcp as gcp_cloud
from broker.clouds._http import HttpPolicy
from broker.sandbox.stack import Sandbox

# Short enough for a quick suite, long enough that a loaded machine does not time out a healthy
# local call (each verifies the assertion against the broker's JWKS over loopback).
QUICK = HttpPolicy(
    connect_timeout=2.0, read_timeout=5.0, retries=2, backoff=0.01, max_backoff=0.05, max_retry_after=0.2
)


@pytest.fixture(autouse=True)
def quick_http(monkeypatch: pytest.MonkeyPatch) -> HttpPolicy:
    monkeypatch.setattr(gcp_cloud, "HTTP_POLICY", QUICK)
    monkeypatch.setattr(azure_cloud, "HTTP_POLICY", QUICK)
    return QUICK


@pytest.fixture
def short_timeouts(monkeypatch: pytest.MonkeyPatch) -> HttpPolicy:
    """A read timeout a stalled endpoint exceeds quickly (set before serving the broker)."""
    policy = HttpPolicy(
        connect_timeout=1.0, read_timeout=0.3, retries=2, backoff=0.01, max_backoff=0.05, max_retry_after=0.2
    )
    monkeypatch.setattr(gcp_cloud, "HTTP_POLICY", policy)
    monkeypatch.setattr(azure_cloud, "HTTP_POLICY", policy)
    return policy


@pytest.fixture(autouse=True)
def reset_endpoints(sandbox: Sandbox) -> Iterator[None]:
    yield
    sandbox.gcp.faults.clear()
    sandbox.azure.faults.clear()
    sandbox.gcp.fractional_expire_time = False
    sandbox.gcp.echo_subject_token = False
    sandbox.gcp.echo_bearer = False
    sandbox.azure.echo_assertion = False


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Refuse name resolution for anything but loopback, recording each host asked for: a call
    to a public Google or Microsoft endpoint shows up here instead of leaving the machine."""
    attempts: list[str] = []
    real = socket.getaddrinfo

    def guarded(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else str(host)
        if name not in ("127.0.0.1", "localhost", "::1"):
            attempts.append(name)
            raise socket.gaierror(socket.EAI_NONAME, f"offline test: {name} is not loopback")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", guarded)
    return attempts


class LogCapture(logging.Handler):
    """Every record, with every attribute (SDKs put request bodies in `extra` fields)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def text(self) -> str:
        out = []
        for record in self.records:
            try:
                message = record.getMessage()
            except Exception:  # a malformed record still has its attributes checked
                message = str(record.msg)
            out.append(message + " " + repr(record.__dict__))
        return "\n".join(out)


@pytest.fixture
def debug_logs() -> Iterator[Callable[[], LogCapture]]:
    """Call after the broker is built (it quiets SDK loggers): turns every logger the SDKs use up
    to DEBUG, as an operator chasing a problem would, and captures what they write."""
    capture = LogCapture()
    names = (
        "",
        "google",
        "google.auth",
        "google.auth.transport.requests",
        "urllib3",
        "azure",
        "azure.identity",
        "azure.core",
        "msal",
        "requests",
        "broker",
        "broker.audit",
    )
    saved: dict[str, tuple[int, bool]] = {}

    def enable() -> LogCapture:
        for name in names:
            logger = logging.getLogger(name)
            saved.setdefault(name, (logger.level, logger.propagate))
            logger.setLevel(logging.DEBUG)
            if name not in ("", "broker.audit"):
                logger.propagate = True
        logging.getLogger().addHandler(capture)
        logging.getLogger("broker.audit").addHandler(capture)
        return capture

    yield enable
    logging.getLogger().removeHandler(capture)
    logging.getLogger("broker.audit").removeHandler(capture)
    for name, (level, propagate) in saved.items():
        logging.getLogger(name).setLevel(level)
        logging.getLogger(name).propagate = propagate


@pytest.fixture
def mint(broker: Any, sandbox: Sandbox) -> Callable[..., str]:
    """Sign an assertion with the broker's own key, with any claims (for the stand-ins' tests)."""
    key = broker.extensions["broker"].signer.key

    def sign(sub: str, aud: str, *, lifetime: int = 300, key_override: Any = None, **claims: Any) -> str:
        now = int(time.time())
        payload = {
            "iss": sandbox.broker_url,
            "sub": sub,
            "aud": aud,
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
            "jti": f"test-{time.monotonic_ns()}",
            **claims,
        }
        return jwt.encode(
            payload,
            key_override or key.private_key,
            algorithm=key.alg,
            headers={"kid": key.kid, "typ": "JWT"},
        )

    return sign


def secrets_in(text: str, secrets: list[str]) -> list[str]:
    return [s[:12] + "..." for s in secrets if s and s in text]


def role_config(sandbox: Sandbox, role: str, cloud: str, **changes: Any) -> dict[str, Any]:
    """The demo config with one role's cloud settings changed (a value of None removes the key)."""
    config = sandbox.config_dict()
    settings = config["roles"][role][cloud]
    for key, value in changes.items():
        if value is None:
            settings.pop(key, None)
        else:
            settings[key] = value
    return config


def seconds_until(expires_at: str) -> float:
    from datetime import datetime

    expires = datetime.strptime(expires_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return (expires - datetime.now(UTC)).total_seconds()
