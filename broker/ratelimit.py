"""Rate limits on exchanges and refreshes (`server.rate_limits`): per client address, per CI
identity and per broker session.

Two limits, counted at two points of the request (a refresh counts against both, its identity
being the one its session recorded, and against a third, per session, at the same point):

- per client address, before anything is parsed or verified, so a flood of garbage costs one
  counter increment per request and never reaches the JWKS fetch or the signature check;
- per identity (provider + repository or project id, the schema's neutral `repository_id`), once
  the token's signature and claims have verified and before its single use is recorded: forged
  tokens cannot spend a victim's budget, and a job refused with 429 may retry the same token after
  `Retry-After`.

Counts live on the replay store's redis when there is one (so every replica shares them), and in
process memory otherwise: with several workers on memory, each worker counts for itself.

On redis, an exchange's identity limit and its token's single use are one script, one round trip
(`admit_and_spend`); the per-client limit stays a round trip of its own, before any parsing.

Rate limiting is an availability control, not a security one: if its redis fails, requests go on
uncounted (the replay store, which fails closed, still refuses them with 503).
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from limits import RateLimitItem, parse
from limits.errors import StorageError
from limits.storage import MemoryStorage, RedisStorage, Storage
from limits.strategies import SlidingWindowCounterRateLimiter

from broker import metrics
from broker.config import Config, ProviderConfig, RateLimits
from broker.errors import RateLimited, Unavailable
from broker.replay import (
    LimitReached,
    RedisReplayStore,
    ReplayStore,
    WindowHit,
    describe_store,
    is_redis_url,
    redis_options,
)

log = logging.getLogger("broker.ratelimit")

NAMESPACE = "ci-broker"
# Short: a limiter that cannot reach redis should cost a request little before it gives up.
REDIS_TIMEOUT = 0.5


@dataclass(frozen=True)
class _Limit:
    scope: str  # "client" | "identity" | "session"
    item: RateLimitItem
    text: str


class RateLimiter:
    def __init__(self, limits: RateLimits | None, redis_url: str | None = None) -> None:
        self.enabled = limits is not None
        self.where = describe_store(redis_url) if redis_url else "memory"
        self._redis_url = redis_url
        self._client: _Limit | None = None
        self._identity: _Limit | None = None
        self._session: _Limit | None = None
        if limits is None:
            return
        if limits.per_client:
            self._client = _Limit("client", parse(limits.per_client), limits.per_client)
        if limits.per_identity:
            self._identity = _Limit("identity", parse(limits.per_identity), limits.per_identity)
        if limits.per_session:
            self._session = _Limit("session", parse(limits.per_session), limits.per_session)
        storage: Storage
        # limits' MemoryStorage restarts its expiry timer without a lock: two of a worker's threads
        # counting at once can start the same timer twice (RuntimeError, a 500). Its counts take
        # microseconds, so they are taken one at a time; redis needs no such lock.
        self._serial: contextlib.AbstractContextManager[Any]
        if redis_url:
            storage = RedisStorage(redis_url, wrap_exceptions=True, **redis_options(redis_url, REDIS_TIMEOUT))
            self._key_prefix = storage.key_prefix
            self._serial = contextlib.nullcontext()
        else:
            storage = MemoryStorage()
            self._serial = threading.Lock()
        self._strategy = SlidingWindowCounterRateLimiter(storage)

    @classmethod
    def for_config(cls, config: Config) -> RateLimiter:
        store = config.server.replay_store
        redis_url = store if is_redis_url(store) else None
        return cls(config.server.rate_limits, redis_url)

    def check_client(self, address: str | None) -> None:
        """Count one request from `address`; raises RateLimited over the per-client limit."""
        if self._client is not None:
            self._hit(self._client, address or "unknown")

    def admit(self, provider: ProviderConfig, claims: Mapping[str, Any]) -> None:
        """Count one verified token against its identity; raises RateLimited over the limit.

        Shaped as the verifier's `admit` hook: called after verification, before single use.
        """
        if self._identity is not None:
            self._hit(self._identity, provider.identity(claims))

    def admit_and_spend(
        self,
        provider: ProviderConfig,
        claims: Mapping[str, Any],
        replay: ReplayStore,
        key: str,
        expires_at: float,
    ) -> bool:
        """`admit`, then `replay.first_use(key, expires_at)`, whose answer it returns.

        When the counts live in the replay store's own redis, both go in one script (one round
        trip): the same limit and the same record, in the same order. Any failure of that script
        is the replay store's, so it refuses with 503 like the record alone would.
        """
        limit = self._identity
        if limit is None or not isinstance(replay, RedisReplayStore) or replay.url != self._redis_url:
            self.admit(provider, claims)
            return replay.first_use(key, expires_at)
        identity = provider.identity(claims)
        try:
            return replay.first_use(key, expires_at, self._window_hit(limit, identity))
        except LimitReached:
            self._refuse(limit, identity)

    def _window_hit(self, limit: _Limit, key: str) -> WindowHit:
        # limits' RedisStorage layout ({prefix}:{{key}} and its /-1), which a test pins against
        # limits' own reading of the same counts.
        current = f"{self._key_prefix}:{{{limit.item.key_for(NAMESPACE, limit.scope, key)}}}"
        return WindowHit(f"{current}/-1", current, limit.item.amount, limit.item.get_expiry())

    def admit_session(self, session_id: str) -> None:
        """Count one refresh of a broker session; raises RateLimited over the per-session limit."""
        if self._session is not None:
            self._hit(self._session, session_id)

    def _hit(self, limit: _Limit, key: str) -> None:
        try:
            with self._serial:
                hit = self._strategy.hit(limit.item, NAMESPACE, limit.scope, key)
            if hit:
                return
        except (StorageError, OSError) as exc:
            cause = getattr(exc, "storage_error", exc)
            if not _is_outage(cause):
                # Anything but an outage (scripts forbidden by an ACL, out of memory, ...) would
                # switch rate limiting off for good while exchanges still succeed: refuse instead.
                raise Unavailable(
                    "the rate limiter is unavailable",
                    reason=f"rate limit storage {self.where}: {type(cause).__name__}",
                ) from None
            # An outage of the shared redis also stops the replay store, which refuses with 503;
            # counting nothing here costs no grant.
            log.warning(
                "rate limit storage %s unreachable (%s); request not counted",
                self.where,
                type(cause).__name__,
            )
            return
        self._refuse(limit, key)

    def _refuse(self, limit: _Limit, key: str) -> NoReturn:
        metrics.rate_limited(f"per_{limit.scope}")
        try:
            with self._serial:
                reset_at, _ = self._strategy.get_window_stats(limit.item, NAMESPACE, limit.scope, key)
            retry_after = max(1, math.ceil(reset_at - time.time()))
        except (StorageError, OSError):
            retry_after = limit.item.get_expiry()  # over the limit all the same; wait a window
        raise RateLimited(
            "too many requests; retry later",
            retry_after=retry_after,
            reason=f"per-{limit.scope} limit {limit.text} reached for {key[:200]!r}",
        )


def _is_outage(cause: BaseException) -> bool:
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    return isinstance(cause, (OSError, RedisConnectionError, RedisTimeoutError))
