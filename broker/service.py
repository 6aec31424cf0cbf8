"""Everything the request path needs, built once from a loaded config at start-up.

Key parsing, JWKS caches, SDK clients, the stores and policy compilation all happen here (or in
the config loader), never per request. `broker.exchange.Broker` is what this builds.
"""

from __future__ import annotations

import logging
from typing import Any

from broker import clouds, metrics
from broker.alerts import Alerts
from broker.assertion import AssertionSigner
from broker.blocks import BlockList
from broker.blockstore import open_block_store
from broker.config import Config
from broker.exchange import Broker
from broker.jwks import KeyCache, KeyCacheSettings, KeyRefresher
from broker.ratelimit import RateLimiter
from broker.replay import ReplayStore, open_store
from broker.sessions import Sessions, open_session_store
from broker.verify import TokenVerifier
from broker.webhook import WebhookSender
from broker.windows import open_window_store

# Cloud SDKs log request and response bodies at DEBUG, and those bodies hold the credentials
# (and the broker's assertion). However the operator sets the root level, these stay quieter.
SDK_LOGGERS = (
    "botocore",
    "boto3",
    "s3transfer",
    "urllib3",
    "google",
    "google_auth_httplib2",
    "azure",
    "msal",
)


def quiet_sdk_loggers() -> None:
    for name in SDK_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def build_broker(
    config: Config,
    *,
    replay: ReplayStore | None = None,
    sessions: Sessions | None = None,
    key_settings: KeyCacheSettings | None = None,
    start_refresher: bool = True,
) -> Broker:
    quiet_sdk_loggers()
    # The store first: a store that cannot be opened must fail before any thread is started.
    store = replay if replay is not None else open_store(config.server.replay_store)
    sessions = sessions or Sessions(open_session_store(config.server.replay_store))
    key_settings = key_settings or KeyCacheSettings()
    caches = {
        p.name: KeyCache(p.issuer, jwks_uri=p.jwks_uri, ca_bundle=p.ca_bundle, settings=key_settings)
        for p in config.providers.values()
    }
    shared: dict[Any, Any] = {}
    backends = {
        role.name: clouds.kind(role.cloud).build_backend(role.name, role.settings, shared)
        for role in config.roles.values()
    }
    refresher = KeyRefresher(list(caches.values()), key_settings.refresh_interval)
    if start_refresher:
        refresher.start()
    metrics.signing_keys(config.server.signing_keys)
    blocks, alerts = build_incident_response(config)
    return Broker(
        config=config,
        verifier=TokenVerifier(config, caches),
        signer=AssertionSigner(config.server.issuer, config.server.signing_keys[0]),
        backends=backends,
        limiter=RateLimiter.for_config(config),
        replay=store,
        sessions=sessions,
        caches=caches,
        refresher=refresher,
        blocks=blocks,
        alerts=alerts,
    )


def build_incident_response(config: Config) -> tuple[BlockList, Alerts]:
    """The runtime blocks and the alert detectors, with their background threads started (this
    runs in each worker after the fork, so the threads are the worker's own)."""
    url = config.server.replay_store
    blocks = BlockList(config, open_block_store(url))
    webhook = config.server.alerts.webhook
    alerts = Alerts(
        config,
        config.server.alerts,
        open_window_store(url),
        WebhookSender(webhook.url, webhook.timeout) if webhook is not None else None,
    )
    blocks.start()
    alerts.start()
    return blocks, alerts
