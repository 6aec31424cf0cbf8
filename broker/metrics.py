"""Prometheus metrics: what operators watch, correct under several gunicorn workers.

Under `ci-broker serve` every worker writes its samples to files in `PROMETHEUS_MULTIPROC_DIR`
(prometheus_client's multiprocess mode, set up by `broker.server` before this module is imported)
and `/metrics` adds them up, so a scrape sees the whole server whichever worker answers it. Without
that variable (tests, in-process use) the samples live in this process's default registry.

Every label value is bounded by the configuration or by the code, never by what a caller sends:
a role a caller names but the config lacks is counted as `(unknown)`, so nobody can grow the
series count (and the scrape) by inventing role names.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any, Iterable, Iterator

from flask import Flask, Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
UNKNOWN_ROLE = "(unknown)"  # cannot collide with a configured role: role names start with [A-Za-z0-9]
RATE_LIMIT_KINDS = ("per_identity", "per_client")
_CODE = re.compile(r"[a-z][a-z_]{0,39}")
# Exchanges cost milliseconds plus the cloud's round trip; the top buckets catch retries and hangs.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

EXCHANGES = Counter(
    "ci_broker_exchanges", "Exchanges by outcome (granted|refused), error code, provider, cloud and role.",
    ["outcome", "error", "provider", "cloud", "role"])
REQUEST_LATENCY = Histogram(
    "ci_broker_request_duration_seconds", "Time from request start to response, by endpoint.",
    ["endpoint"], buckets=LATENCY_BUCKETS)
UPSTREAM_LATENCY = Histogram(
    "ci_broker_upstream_duration_seconds",
    "Time spent in the cloud back end per granted role (mostly the cloud's token endpoint).",
    ["cloud", "result"], buckets=LATENCY_BUCKETS)
JWKS_FETCHES = Counter(
    "ci_broker_jwks_fetches", "Fetches of a CI issuer's keys, by issuer and result (ok|error).",
    ["issuer", "result"])
JWKS_LAST_SUCCESS = Gauge(
    "ci_broker_jwks_last_success_timestamp_seconds",
    "Unix time of the last successful key fetch; the stalest live worker's value.",
    ["issuer"], multiprocess_mode="livemin")
REPLAY_REFUSALS = Counter("ci_broker_replay_refusals", "CI tokens refused because their jti was already used.")
RATE_LIMITED = Counter("ci_broker_rate_limited", "Requests refused by a rate limit, by kind.", ["kind"])
SIGNING_KEY = Gauge(
    "ci_broker_signing_key_info", "Published signing keys (value 1); active=true marks the one that signs.",
    ["kid", "alg", "active"], multiprocess_mode="livemax")
CACHE_AGE_NAME = "ci_broker_jwks_cache_age_seconds"

_ENDPOINTS = {"api.exchange": "exchange", "api.openid_configuration": "discovery",
              "api.jwks_document": "jwks", "api.healthz": "healthz", "api.readyz": "readyz",
              "metrics": "metrics"}


# -- hooks other modules call ---------------------------------------------------------------------

def jwks_fetch(issuer: str, ok: bool) -> None:
    """Called by the key cache after each fetch attempt (background or on a kid miss)."""
    JWKS_FETCHES.labels(issuer, "ok" if ok else "error").inc()
    if ok:
        JWKS_LAST_SUCCESS.labels(issuer).set(time.time())


def rate_limited(kind: str) -> None:
    """Called by the rate limiter for each refusal; `kind` is per_identity or per_client."""
    RATE_LIMITED.labels(kind if kind in RATE_LIMIT_KINDS else "other").inc()


def replay_refused() -> None:
    REPLAY_REFUSALS.inc()


# -- the Flask side -------------------------------------------------------------------------------

def instrument(app: Flask) -> None:
    """Time every request, count every exchange, time the cloud calls, serve `/metrics`.

    Wraps the broker's replay store and back ends (built once at start-up) rather than adding
    timing code to the request path; an app that shares a Broker with another is wrapped once.
    """
    broker = app.extensions["broker"]
    if not broker.extras.get("metrics_instrumented"):
        broker.extras["metrics_instrumented"] = True
        broker.verifier.replay = _CountingReplayStore(broker.verifier.replay)
        broker.backends = {name: _TimedBackend(backend, broker.config.roles[name].cloud)
                           for name, backend in broker.backends.items()}
        for i, key in enumerate(broker.config.server.signing_keys):
            SIGNING_KEY.labels(key.kid, key.alg, "true" if i == 0 else "false").set(1)
    roles = frozenset(broker.config.roles)
    app.before_request(_start_timer)
    app.after_request(lambda response: _observe(response, roles))
    app.add_url_rule("/metrics", "metrics", metrics_view, methods=["GET"])


def _start_timer() -> None:
    g.metrics_start = time.perf_counter()


def _observe(response: Response, roles: frozenset[str]) -> Response:
    start = g.get("metrics_start")
    if start is not None:
        rule = request.url_rule
        endpoint = _ENDPOINTS.get(rule.endpoint if rule is not None else "", "other")
        REQUEST_LATENCY.labels(endpoint).observe(time.perf_counter() - start)
    event = g.get("audit_event")
    if event is not None and "outcome" in event:
        role = event.get("role")
        EXCHANGES.labels(
            event["outcome"],
            _code(event.get("error")),
            event.get("provider") or "",  # a configured provider name, set only once verified
            event.get("cloud") or "",
            "" if role is None else (role if role in roles else UNKNOWN_ROLE),
        ).inc()
    return response


def _code(error: Any) -> str:
    if not error:
        return ""
    return error if isinstance(error, str) and _CODE.fullmatch(error) else "other"


def metrics_view() -> Response:
    return Response(render(), content_type=CONTENT_TYPE_LATEST)


def render() -> bytes:
    """The Prometheus text exposition: all workers' samples, plus each issuer's key-cache age."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        families = list(registry.collect())
    else:
        families = list(REGISTRY.collect())
    families.append(_cache_age(families))
    return generate_latest(_Families(families))  # type: ignore[arg-type]


def _cache_age(families: Iterable[Metric]) -> Metric:
    # An age must be computed at scrape time; storing it would freeze it at the last fetch.
    age = GaugeMetricFamily(CACHE_AGE_NAME, "Seconds since the stalest live worker last fetched "
                            "the issuer's keys successfully.", labels=["issuer"])
    now = time.time()
    for family in families:
        if family.name == JWKS_LAST_SUCCESS._name:
            for sample in family.samples:
                age.add_metric([sample.labels["issuer"]], max(0.0, now - sample.value))
    return age


class _Families:
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


class _CountingReplayStore:
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def first_use(self, key: str, expires_at: float) -> bool:
        first = self.inner.first_use(key, expires_at)
        if not first:
            replay_refused()
        return first

    def __getattr__(self, name: str) -> Any:  # the wrapped store's other methods stay reachable
        return getattr(self.inner, name)


class _TimedBackend:
    def __init__(self, inner: Any, cloud: str) -> None:
        self.inner = inner
        self.cloud = cloud

    def issue(self, grant: Any) -> Any:
        start = time.perf_counter()
        result = "error"
        try:
            issued = self.inner.issue(grant)
            result = "ok"
            return issued
        finally:
            UPSTREAM_LATENCY.labels(self.cloud, result).observe(time.perf_counter() - start)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
