"""`server.alerts`: the alert detectors' thresholds and the webhook, read from the config.

Each counted detector is on by default with the thresholds below and may be switched off with
`off` (YAML reads a bare `off` as false; both spellings work), like `server.rate_limits`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from broker.schema import Section


@dataclass(frozen=True)
class Burst:
    """denied_burst: `count` refusals within `window` seconds, for one identity or one client."""

    count: int
    window: int


@dataclass(frozen=True)
class Bulk:
    """bulk: one identity granted `count` credentials, or `roles` distinct roles, within `window`."""

    count: int
    roles: int
    window: int


@dataclass(frozen=True)
class Webhook:
    url: str
    timeout: int


DEFAULT_BURST = Burst(count=10, window=60)
DEFAULT_BULK = Bulk(count=100, roles=10, window=3600)
DEFAULT_NEW_SOURCE_DAYS = 30


@dataclass(frozen=True)
class AlertSettings:
    webhook: Webhook | None = None
    denied_burst: Burst | None = DEFAULT_BURST
    bulk: Bulk | None = DEFAULT_BULK
    new_source_days: int | None = DEFAULT_NEW_SOURCE_DAYS  # None: the detector is off


def read_alert_settings(server: Section) -> AlertSettings:
    s = server.section("alerts")
    webhook = _webhook(s)
    burst: Burst | None = None
    b = _optional(s, "denied_burst")
    if b is not None:
        count = b.integer("count", DEFAULT_BURST.count, minimum=2, maximum=100000)
        window = b.integer("window", DEFAULT_BURST.window, minimum=1, maximum=86400)
        b.finish()
        burst = Burst(count, window) if count and window else None
    bulk: Bulk | None = None
    b = _optional(s, "bulk")
    if b is not None:
        count = b.integer("count", DEFAULT_BULK.count, minimum=2, maximum=1000000)
        roles = b.integer("roles", DEFAULT_BULK.roles, minimum=2, maximum=10000)
        window = b.integer("window", DEFAULT_BULK.window, minimum=1, maximum=86400)
        b.finish()
        bulk = Bulk(count, roles, window) if count and roles and window else None
    days: int | None = None
    b = _optional(s, "new_source")
    if b is not None:
        days = b.integer("days", DEFAULT_NEW_SOURCE_DAYS, minimum=1, maximum=365)
        b.finish()
    s.finish()
    return AlertSettings(webhook=webhook, denied_burst=burst, bulk=bulk, new_source_days=days)


def _optional(s: Section, key: str) -> Section | None:
    """The detector's section, or None when it is switched off."""
    raw: Any = s.raw(key, None)
    if raw is False or raw == "off":
        return None
    return Section(raw, s.at(key), s.findings)


def _webhook(s: Section) -> Webhook | None:
    present = "webhook" in s
    w = s.section("webhook")
    url = w.url("url", required=present)
    timeout = w.integer("timeout", 5, minimum=1, maximum=30)
    w.finish()
    return Webhook(url, timeout) if url and timeout else None
