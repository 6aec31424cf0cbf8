"""Alerts (contract section 9): detectors that watch each finished exchange or refresh.

`Alerts.observe(event)` is called once per exchange (and refresh), with its finished audit event.
On the request path it only does what needs no store: a refusal by a block raises
`blocked_identity`, a grant outside the role's `hours` raises `off_hours`. Everything counted in the
shared store (`denied_burst`, `bulk`, `new_source`) is handed to a background thread of the worker
(`broker.background`) as the event itself, so no exchange waits on a store round trip for
alerting; the thread counts each event in one pipelined round trip (`broker.windows`), and a
second only when a threshold is crossed. `refresh_reuse` is raised by the sessions code through
`Alerts.refresh_reuse`.

What each counted detector means exactly:

- `denied_burst`: an identity (provider + repository/project id, once its token verified) or a
  client address refused at least `count` times within the last `window` seconds. Refusals that
  count are the caller's: 400, 401, 403, 413, 415. 429s are the rate limiter already doing its
  job, and 5xx are the broker's or the cloud's failures.
- `bulk`: an identity granted at least `count` credentials, or credentials for at least `roles`
  distinct roles, within the last `window` seconds.
- `new_source`: an identity granted credentials from a client network (the /24 of an IPv4
  address, the /56 of an IPv6 one) it has not been granted from in the last `days` days. The first
  network an identity is ever seen from is learned without an alert: a new deployment would
  otherwise alert once for every repository.

A threshold alert fires when the count reaches the threshold, then stays quiet for that key for
one `window` (one alert per burst, not one per request of it).

Every alert is an audit event (`"type": "alert"`), an increment of `ci_broker_alerts_total{alert}`,
and, with `server.alerts.webhook`, a POST (`broker.webhook`). Alerts carry identity fields, never a
token or a credential.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from broker import audit, metrics
from broker.alertconfig import AlertSettings
from broker.background import BackgroundQueue
from broker.windows import Count, Op, Remember, WindowStore, WindowStoreError

if TYPE_CHECKING:
    from broker.audit import AuditEvent
    from broker.config import Config
    from broker.hours import Hours
    from broker.webhook import WebhookSender

log = logging.getLogger("broker.alerts")

SEVERITY = {
    "blocked_identity": "high",
    "refresh_reuse": "critical",
    "denied_burst": "medium",
    "bulk": "medium",
    "new_source": "low",
    "off_hours": "low",
}
KINDS = tuple(SEVERITY)
# The refusals `denied_burst` counts: what a caller's own requests earn (see the module docstring).
CALLER_REFUSALS = frozenset(
    {"invalid_request", "invalid_token", "access_denied", "payload_too_large", "unsupported_media_type"}
)
COUNTING_CAPACITY = 10000
# Events are counted in batches: up to 100 per round trip, gathered for up to 50 ms, so a busy
# worker pays one store round trip per batch rather than per exchange.
COUNTING_BATCH = 100
COUNTING_LINGER = 0.05
IPV4_PREFIX = 24
IPV6_PREFIX = 56


@dataclass(frozen=True)
class Observation:
    event: AuditEvent
    at: float  # wall-clock time of the event


class Alerts:
    def __init__(
        self,
        config: Config,
        settings: AlertSettings,
        windows: WindowStore,
        webhook: WebhookSender | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.settings = settings
        self.windows = windows
        self.webhook = webhook
        self._clock = clock
        self._hours: dict[str, Hours] = {
            name: role.hours for name, role in config.roles.items() if role.hours is not None
        }
        self._counting = bool(settings.denied_burst or settings.bulk or settings.new_source_days)
        self.queue: BackgroundQueue[Observation] = BackgroundQueue(
            "alert_counting",
            self._count,
            capacity=COUNTING_CAPACITY,
            batch=COUNTING_BATCH,
            linger=COUNTING_LINGER,
        )

    def start(self) -> None:
        """Start this worker's background threads (after the fork) and zero every kind's counter."""
        metrics.alert_kinds(KINDS)
        if self._counting:
            self.queue.start()
        if self.webhook is not None:
            self.webhook.start()

    def close(self) -> None:
        self.queue.close()
        if self.webhook is not None:
            self.webhook.close()
        self.windows.close()

    # -- on the request path ----------------------------------------------------------------------

    def observe(self, event: AuditEvent) -> None:
        """Called once per finished exchange or refresh with its audit event; never raises."""
        try:
            now = self._clock()
            if event.block_id is not None:
                self.raise_alert(
                    "blocked_identity",
                    event,
                    f"{self._identity(event)} asked for role {event.role} while blocked ({event.block_id})",
                    {"block_id": event.block_id},
                )
            if event.outcome == "granted" and event.role in self._hours:
                self._check_hours(event, self._hours[event.role], now)
            if self._worth_counting(event):
                self.queue.offer(Observation(event, now))
        except Exception:  # alerting must never fail an exchange
            log.exception("alert detection failed")

    def refresh_reuse(self, event: AuditEvent, session_id: str) -> None:
        """For the sessions code: a spent refresh token was presented again (contract section 8).
        `event` is the refresh's audit event; never raises."""
        try:
            self.raise_alert(
                "refresh_reuse",
                event,
                f"a spent refresh token of session {session_id} was presented again; the session is ended",
                {"session_id": session_id},
            )
        except Exception:
            log.exception("alert detection failed")

    def _worth_counting(self, event: AuditEvent) -> bool:
        s = self.settings
        if event.outcome == "granted":
            return event.verified and bool(s.bulk or s.new_source_days)
        return event.error in CALLER_REFUSALS and s.denied_burst is not None

    def _check_hours(self, event: AuditEvent, hours: Hours, now: float) -> None:
        when = datetime.fromtimestamp(now, UTC)
        if hours.contains(when):
            return
        local = hours.local_time(when)
        self.raise_alert(
            "off_hours",
            event,
            f"{self._identity(event)} was granted role {event.role} at {local}, outside {hours.describe()}",
            {"local_time": local, "hours": hours.describe()},
        )

    # -- raising ----------------------------------------------------------------------------------

    def raise_alert(self, kind: str, event: AuditEvent, summary: str, details: dict[str, Any]) -> None:
        """Write the alert's audit event, count it, and queue the webhook."""
        alert = {
            "type": "alert",
            "alert": kind,
            "severity": SEVERITY[kind],
            "request_id": event.request_id,
            "client": event.client,
            "provider": event.provider,
            "issuer": event.issuer,
            "subject": event.subject,
            "identity": self._identity(event),
            "role": event.role if event.verified else None,
            "cloud": event.cloud,
            "claims": event.claims,
            "summary": summary,
            "details": details,
        }
        audit.emit(alert)
        metrics.alert_raised(kind)
        if self.webhook is not None:
            self.webhook.send({"time": audit.rfc3339(datetime.now(UTC)), **alert})

    def _identity(self, event: AuditEvent) -> str | None:
        return event.identity

    # -- in the background thread -----------------------------------------------------------------

    def _count(self, batch: list[Observation]) -> None:
        """Count a batch of events in the store (one round trip; a second only for thresholds
        crossed) and raise the alerts, in the events' order."""
        plans = [self._plan(observation) for observation in batch]
        ops = [op for plan in plans for op in plan.ops]
        if not ops:
            return
        try:
            answers = iter(self.windows.run(ops))
            crossed: list[tuple[_Plan, _Threshold, int]] = []
            for plan in plans:
                plan.answers = [next(answers) for _ in plan.ops]
                crossed += [(plan, t, n) for t, n in plan.crossed()]
            # One alert per key and window: the first replica (or event) to set the key's mark raises it.
            marks = [Remember(t.key + ":fired", t.window, plan.at, refresh=False) for plan, t, _ in crossed]
            first = iter(self.windows.run(marks) if marks else [])
        except WindowStoreError as exc:
            log.warning("alert counting skipped %d event(s): %s", len(batch), exc)
            for _ in batch:
                self.queue.dropped("failed")
            return
        fired = {(id(plan), t.key) for (plan, t, _), ok in zip(crossed, first, strict=True) if ok}
        for plan in plans:
            for threshold, n in plan.crossed():
                if (id(plan), threshold.key) in fired:
                    self.raise_alert(threshold.kind, plan.event, threshold.summary(n), threshold.details(n))
            if plan.new_network():
                days = self.settings.new_source_days
                self.raise_alert(
                    "new_source",
                    plan.event,
                    f"{plan.identity} was granted credentials from {plan.network}, "
                    f"not seen from there in the last {days} days",
                    {"network": plan.network, "days": days},
                )

    def _plan(self, observation: Observation) -> _Plan:
        """The store operations one event needs, and how to read their answers."""
        event, at = observation.event, observation.at
        s = self.settings
        plan = _Plan(
            event, at, self._identity(event) if event.verified else None, client_network(event.client)
        )
        member = event.request_id or repr(at)
        if event.outcome == "refused" and s.denied_burst is not None:
            limit, window = s.denied_burst.count, s.denied_burst.window
            for scope, subject in (("identity", plan.identity), ("client", event.client)):
                if subject is not None:
                    plan.count(_Threshold("denied_burst", scope, subject, limit, window, "refusals"), member)
        if event.outcome == "granted" and plan.identity is not None:
            if s.bulk is not None:
                bulk = s.bulk
                plan.count(
                    _Threshold("bulk", "identity", plan.identity, bulk.count, bulk.window, "credentials"),
                    member,
                )
                roles = _Threshold(
                    "bulk", "identity", plan.identity, bulk.roles, bulk.window, "distinct roles"
                )
                plan.count(roles, event.role or "")
            if s.new_source_days is not None and plan.network is not None:
                plan.remember_source(s.new_source_days * 86400)
        return plan


@dataclass
class _Plan:
    event: AuditEvent
    at: float
    identity: str | None
    network: str | None
    ops: list[Op] = field(default_factory=list)
    thresholds: list[tuple[int, _Threshold]] = field(default_factory=list)  # (index in ops, threshold)
    source: int | None = None  # index in ops of the identity's mark; its network's comes next
    answers: list[Any] = field(default_factory=list)

    def count(self, threshold: _Threshold, member: str) -> None:
        self.thresholds.append((len(self.ops), threshold))
        self.ops.append(Count(threshold.key, member, threshold.window, self.at))

    def remember_source(self, ttl: int) -> None:
        assert self.identity is not None and self.network is not None
        self.source = len(self.ops)
        self.ops.append(Remember(_key("source", self.identity), ttl, self.at))
        self.ops.append(Remember(_key("source", self.identity, self.network), ttl, self.at))

    def crossed(self) -> list[tuple[_Threshold, int]]:
        return [(t, int(self.answers[i])) for i, t in self.thresholds if self.answers[i] >= t.limit]

    def new_network(self) -> bool:
        """A network new to an identity that is itself not new (its first network is learned)."""
        return (
            self.source is not None and bool(self.answers[self.source + 1]) and not self.answers[self.source]
        )


@dataclass(frozen=True)
class _Threshold:
    kind: str
    scope: str  # "identity" | "client"
    subject: str
    limit: int
    window: int
    what: str  # "refusals" | "credentials" | "distinct roles"

    @property
    def key(self) -> str:
        return _key(self.kind, self.what, self.scope, self.subject)

    def summary(self, n: int) -> str:
        return (
            f"{n} {self.what} within {self.window}s for {self.scope} {self.subject} (threshold {self.limit})"
        )

    def details(self, n: int) -> dict[str, Any]:
        return {
            "scope": self.scope,
            "count": n,
            "threshold": self.limit,
            "window": self.window,
            "of": self.what,
        }


@functools.lru_cache(maxsize=4096)  # CI runners come back from the same few addresses
def client_network(client: str | None) -> str | None:
    """The client's /24 (IPv4) or /56 (IPv6), or None for anything that is not an IP address."""
    if not client:
        return None
    try:
        address = ipaddress.ip_address(client)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    prefix = IPV4_PREFIX if address.version == 4 else IPV6_PREFIX
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


def _key(kind: str, *parts: str) -> str:
    # Hashed: keys stay short and free of separators whatever the identity or address holds.
    digest = hashlib.sha256("\x00".join(parts).encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"{kind}:{digest}"
