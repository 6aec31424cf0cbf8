"""Everything the request path needs, built once from a loaded config at start-up.

Key parsing, JWKS caches, SDK clients and policy compilation all happen here, never per request.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from broker import clouds
from broker.assertion import AssertionSigner
from broker.config import Config
from broker.jwks import KeyCache, KeyCacheSettings, KeyRefresher
from broker.replay import ReplayStore, open_store
from broker.verify import TokenVerifier

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


@dataclass
class Broker:
    config: Config
    verifier: TokenVerifier
    signer: AssertionSigner
    backends: dict[str, clouds.Backend]
    caches: dict[str, KeyCache]
    refresher: KeyRefresher
    extras: dict[str, Any] = field(default_factory=dict)

    def ready(self) -> tuple[bool, dict[str, str]]:
        """Ready once every provider's keys have been fetched at least once."""
        states = {
            name: ("ok" if c.has_keys else f"no keys: {c.last_error or 'not fetched yet'}")
            for name, c in self.caches.items()
        }
        return all(c.has_keys for c in self.caches.values()), states

    def close(self) -> None:
        self.refresher.stop()


def build_broker(
    config: Config,
    *,
    replay: ReplayStore | None = None,
    key_settings: KeyCacheSettings | None = None,
    start_refresher: bool = True,
) -> Broker:
    quiet_sdk_loggers()
    key_settings = key_settings or KeyCacheSettings()
    caches = {
        p.name: KeyCache(p.issuer, jwks_uri=p.jwks_uri, ca_bundle=p.ca_bundle, settings=key_settings)
        for p in config.providers.values()
    }
    store = replay if replay is not None else open_store(config.server.replay_store)
    verifier = TokenVerifier(config, caches, store)
    signer = AssertionSigner(config.server.issuer, config.server.signing_keys[0])
    shared: dict[Any, Any] = {}
    backends = {
        role.name: clouds.kind(role.cloud).build_backend(role.name, role.settings, shared)
        for role in config.roles.values()
    }
    refresher = KeyRefresher(list(caches.values()), key_settings.refresh_interval)
    if start_refresher:
        refresher.start()
    return Broker(
        config=config, verifier=verifier, signer=signer, backends=backends, caches=caches, refresher=refresher
    )
