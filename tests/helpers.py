"""Assertions shared by the test modules."""

from __future__ import annotations

from typing import Any

import requests


def assert_refused(response: requests.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code, body
    assert set(body) == {"error", "message", "request_id"}
    assert body["request_id"] == response.headers["X-Request-Id"]
    return body


def last_refusal(events: list[dict[str, Any]]) -> dict[str, Any]:
    assert events, "no audit event was written"
    event = events[-1]
    assert event["outcome"] == "refused", event
    return event
