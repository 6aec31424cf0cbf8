"""The adversarial suite's one assertion: refused with the right status and code, no cloud call,
and nothing secret (the token or its signature) in any log, audit event or response."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import pytest

from tests.helpers import assert_refused, last_refusal

Attack = Callable[..., dict[str, Any]]


@pytest.fixture
def attack(sandbox: Any, audit_events: list[dict[str, Any]], caplog: pytest.LogCaptureFixture) -> Attack:
    caplog.set_level(logging.DEBUG)

    def send(
        token: str,
        status: int = 401,
        code: str = "invalid_token",
        *,
        role: str = "deploy-prod",
        reason: str | None = None,
    ) -> dict[str, Any]:
        calls = len(sandbox.sts.calls)
        response = sandbox.exchange(token, role=role)
        assert_refused(response, status, code)
        assert len(sandbox.sts.calls) == calls, "the cloud was called for a refused token"
        event = last_refusal(audit_events)
        assert event["error"] == code
        if reason is not None:
            assert reason in event["reason"], event["reason"]
        seen = caplog.text + json.dumps(audit_events) + response.text
        secrets = [token] + [part for part in token.split(".")[2:] if len(part) >= 16]
        for secret in secrets:
            assert secret not in seen, "a token or its signature reached a log or the response"
        return event

    return send


@pytest.fixture
def second_issuer(sandbox: Any, serve_config: Any) -> Any:
    """A broker that also trusts a private issuer `extra` (GitHub claim schema), for cases that
    need an issuer with other keys or algorithms without disturbing the shared sandbox."""
    from broker.sandbox.issuer import LocalIssuer

    issuers: list[LocalIssuer] = []

    def serve(alg: str = "RS256", algorithms: list[str] | None = None) -> LocalIssuer:
        issuer = LocalIssuer(alg).start()
        issuers.append(issuer)
        config = sandbox.config_dict()
        config["providers"]["extra"] = {
            "issuer": issuer.url,
            "type": "github",
            "algorithms": algorithms or [alg],
        }
        config["roles"]["deploy-prod"]["allow"].append(
            {
                "provider": "extra",
                "claims": {"repository_id": "892734123", "ref": "refs/heads/main", "event_name": "push"},
            }
        )
        serve_config(config)
        return issuer

    yield serve
    for issuer in issuers:
        issuer.stop()
