"""Prometheus metrics: what operators watch, correct under several gunicorn workers.

Under `ci-broker serve` every worker writes its samples to files in `PROMETHEUS_MULTIPROC_DIR`
(prometheus_client's multiprocess mode, set up by `broker.server` before any metric exists)
and `/metrics` adds them up, so a scrape sees the whole server whichever worker answers it. Without
that variable (tests, in-process use) the samples live in this process's default registry.

Every label value is bounded by the configuration or by the code, never by what a caller sends:
a role a caller names but the config lacks is counted as `(unknown)`, so nobody can grow the
series count (and the scrape) by inventing role names.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Container, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from flask import Flask, Response

from broker.discovery import DISCOVERY_PATH, JWKS_PATH

if TYPE_CHECKING:
    from broker.audit import AuditEvent

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
UNKNOWN_ROLE = "(unknown)"  # cannot collide with a configured role: role names start with [A-Za-z0-9]
RATE_LIMIT_KINDS = ("per_identity", "per_client", "per_session")
_CODE = re.compile(r"[a-z][a-z_]{0,39}")
# Exchanges cost milliseconds plus the cloud's round trip; the top buckets catch retries and hangs.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
CACHE_AGE_NAME = "ci_broker_jwks_cache_age_seconds"


class Metrics:
    """The broker's metric objects. Built on first use, never at import.

    prometheus_client picks per-process or multiprocess storage when it is first imported, so
    nothing may import it before `serve` has set PROMETHEUS_MULTIPROC_DIR; building these lazily
    lets any module import this one (the gunicorn master does, through the key cache) safely.
    """

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.exchanges = Counter(
            "ci_broker_exchanges",
            "Exchanges by outcome (granted|refused), error code, provider, cloud and role.",
            ["outcome", "error", "provider", "cloud", "role"],
        )
        self.refreshes = Counter(
            "ci_broker_refreshes",
            "Session refreshes by outcome (granted|refused), error code, provider, cloud and role.",
            ["outcome", "error", "provider", "cloud", "role"],
        )
        self.sessions_ended = Counter(
            "ci_broker_sessions_ended",
            "Broker sessions ended before their expiry, by reason (revoked|refresh_reuse|operator).",
            ["reason"],
        )
        self.request_latency = Histogram(
            "ci_broker_request_duration_seconds",
            "Time from request start to response, by endpoint.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
        )
        self.upstream_latency = Histogram(
            "ci_broker_upstream_duration_seconds",
            "Time spent in the cloud back end per granted role (mostly the cloud's token endpoint).",
            ["cloud", "result"],
            buckets=LATENCY_BUCKETS,
        )
        self.jwks_fetches = Counter(
            "ci_broker_jwks_fetches",
            "Fetches of a CI issuer's keys, by issuer and result (ok|error).",
            ["issuer", "result"],
        )
        self.jwks_last_success = Gauge(
            "ci_broker_jwks_last_success_timestamp_seconds",
            "Unix time of the last successful key fetch; the stalest live worker's value.",
            ["issuer"],
            multiprocess_mode="livemin",
        )
        self.replay_refusals = Counter(
            "ci_broker_replay_refusals", "CI tokens refused because their jti was already used."
        )
        self.rate_limited = Counter(
            "ci_broker_rate_limited", "Requests refused by a rate limit, by kind.", ["kind"]
        )
        self.signing_key = Gauge(
            "ci_broker_signing_key_info",
            "Published signing keys (value 1); active=true marks the one that signs.",
            ["kid", "alg", "active"],
            multiprocess_mode="livemax",
        )
        # Incident response (contract section 9): alerts, runtime blocks, background queues.
        self.alerts = Counter("ci_broker_alerts", "Alerts raised, by kind.", ["alert"])
        self.blocks_active = Gauge(
            "ci_broker_blocks_active",
            "Runtime blocks in force, as the live worker that sees the most counts them.",
            multiprocess_mode="livemax",
        )
        self.blocks_synced = Gauge(
            "ci_broker_blocks_synced_timestamp_seconds",
            "Unix time of the last successful read of the block store; the stalest live worker's.",
            multiprocess_mode="livemin",
        )
        self.webhook_deliveries = Counter(
            "ci_broker_alert_webhook_deliveries",
            "Alert webhook POST attempts by result (ok|error).",
            ["result"],
        )
        self.background_dropped = Counter(
            "ci_broker_background_dropped",
            "Items a background sender dropped, by queue (webhook, alert_counting, audit_syslog) "
            "and reason (queue_full, gave_up, rejected).",
            ["queue", "reason"],
        )


_metrics: Metrics | None = None
_metrics_lock = threading.Lock()


def get() -> Metrics:
    global _metrics
    if _metrics is None:
        with _metrics_lock:
            if _metrics is None:
                _metrics = Metrics()
    return _metrics


ENDPOINT_PATHS = {
    "/v1/exchange": "exchange",
    "/v1/refresh": "refresh",
    "/v1/revoke": "revoke",
    f"/{DISCOVERY_PATH}": "discovery",
    f"/{JWKS_PATH}": "jwks",
    "/healthz": "healthz",
    "/readyz": "readyz",
    "/metrics": "metrics",
}


# -- hooks other modules call ---------------------------------------------------------------------


def jwks_fetch(issuer: str, ok: bool) -> None:
    """Called by the key cache after each fetch attempt (background or on a kid miss)."""
    m = get()
    m.jwks_fetches.labels(issuer, "ok" if ok else "error").inc()
    if ok:
        m.jwks_last_success.labels(issuer).set(time.time())


def rate_limited(kind: str) -> None:
    """Called by the rate limiter for each refusal; `kind` is per_identity or per_client."""
    get().rate_limited.labels(kind if kind in RATE_LIMIT_KINDS else "other").inc()


def replay_refused() -> None:
    get().replay_refusals.inc()


def upstream_finished(cloud: str, *, ok: bool, seconds: float) -> None:
    """Called by the exchange around each cloud back end's call."""
    _child("upstream_latency", cloud, "ok" if ok else "error").observe(seconds)


def signing_keys(keys: Sequence[Any]) -> None:
    """Called once at start-up: the published keys, the first marked as the one that signs."""
    for i, key in enumerate(keys):
        get().signing_key.labels(key.kid, key.alg, "true" if i == 0 else "false").set(1)


def alert_raised(kind: str) -> None:
    """Called for each alert; `kind` is one of `broker.alerts.KINDS`."""
    _child("alerts", kind).inc()


def alert_kinds(kinds: Iterable[str]) -> None:
    """Called once at start-up: every kind's counter exists at 0, so a rule sees its first rise."""
    for kind in kinds:
        _child("alerts", kind)


def blocks_synced(active: int) -> None:
    """Called by the block list after each successful poll of the block store."""
    m = get()
    m.blocks_active.set(active)
    m.blocks_synced.set(time.time())


def webhook_attempt(ok: bool) -> None:
    _child("webhook_deliveries", "ok" if ok else "error").inc()


def background_dropped(queue: str, reason: str) -> None:
    """Called by a background sender for each item it gives up on (bounded labels: see callers)."""
    _child("background_dropped", queue, reason).inc()


def exchange_finished(event: AuditEvent, roles: Container[str]) -> None:
    """Count one exchange by its audit event's outcome, error code, provider, cloud and role.

    The role is the caller's text until its token verifies: it is counted only then (and as
    `(unknown)` if the config lacks it), so a garbage token cannot probe which roles exist.
    """
    _count_request("exchanges", event, roles)


def refresh_finished(event: AuditEvent, roles: Container[str]) -> None:
    """Count one refresh like an exchange; its identity is the session's, once the token is known."""
    _count_request("refreshes", event, roles)


def session_ended(reason: str) -> None:
    """Called each time a live session is ended before its expiry."""
    from broker.sessions import END_REASONS

    _child("sessions_ended", reason if reason in END_REASONS else "other").inc()


def _count_request(metric: str, event: AuditEvent, roles: Container[str]) -> None:
    role = event.role
    if role is None or not event.verified:
        role_label = ""
    else:
        role_label = role if role in roles else UNKNOWN_ROLE
    _child(
        metric,
        event.outcome,
        _code(event.error),
        event.provider or "",  # a configured provider name, set only once verified
        event.cloud or "",
        role_label,
    ).inc()


# -- the Flask side -------------------------------------------------------------------------------


def instrument(app: Flask, *, route: bool = True) -> None:
    """Time every request by endpoint, and serve `/metrics` unless `route` is false."""
    if route:
        app.add_url_rule("/metrics", "metrics", metrics_view, methods=["GET"])
    app.wsgi_app = _TimedWSGI(app.wsgi_app)  # type: ignore[method-assign]


class _TimedWSGI:
    """Request latency by endpoint, measured around the whole Flask app.

    A WSGI wrapper rather than before/after-request hooks: it costs two clock reads per request,
    and the endpoint label comes from the path alone, so it stays bounded by `ENDPOINT_PATHS`.
    """

    def __init__(self, wsgi_app: Any) -> None:
        self.wsgi_app = wsgi_app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        start = time.perf_counter()
        try:
            return self.wsgi_app(environ, start_response)
        finally:
            endpoint = ENDPOINT_PATHS.get(environ.get("PATH_INFO", ""), "other")
            _child("request_latency", endpoint).observe(time.perf_counter() - start)


_children: dict[tuple[str, ...], Any] = {}


def _child(metric: str, *labels: str) -> Any:
    """The metric's child for these label values, looked up once per process.

    prometheus_client's `labels()` takes a lock and checks every value on each call; the request
    path calls this instead. The cache is as bounded as the label values (see the docstring).
    """
    key = (metric, *labels)
    child = _children.get(key)
    if child is None:
        child = _children[key] = getattr(get(), metric).labels(*labels)
    return child


def _code(error: Any) -> str:
    if not error:
        return ""
    return error if isinstance(error, str) and _CODE.fullmatch(error) else "other"


def metrics_view() -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST

    return Response(render(), content_type=CONTENT_TYPE_LATEST)


def render() -> bytes:
    """The Prometheus text exposition: all workers' samples, plus each issuer's key-cache age."""
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client.exposition import generate_latest

    get()  # so a scrape before the first request still lists every metric
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        families = list(registry.collect())
    else:
        families = list(REGISTRY.collect())
    families.append(_cache_age(families))
    return generate_latest(_Families(families))


def _cache_age(families: Iterable[Any]) -> Any:
    # An age must be computed at scrape time; storing it would freeze it at the last fetch.
    from prometheus_client.core import GaugeMetricFamily

    age = GaugeMetricFamily(
        CACHE_AGE_NAME,
        "Seconds since the stalest live worker last fetched the issuer's keys successfully.",
        labels=["issuer"],
    )
    now = time.time()
    for family in families:
        if family.name == "ci_broker_jwks_last_success_timestamp_seconds":
            for sample in family.samples:
                age.add_metric([sample.labels["issuer"]], max(0.0, now - sample.value))
    return age


class _Families:
    def __init__(self, families: list[Any]) -> None:
        self._families = families

    def collect(self) -> Iterator[Any]:
        return iter(self._families)
