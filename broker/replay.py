"""Single use of CI tokens: each (issuer, jti) is accepted once until the token expires.

The store sits behind one method so the request path does not know which one it talks to. Which
store fits which deployment:

- `memory`: one process only. Each gunicorn worker would keep its own record, so `ci-broker serve`
  refuses it with more than one worker.
- `sqlite:///PATH`: every worker on one host shares a file; an atomic insert-if-absent decides.
  Not for several hosts, and not on a network filesystem (its locks are not reliable there).
- `redis://HOST:PORT/DB` (or `rediss://`): any number of processes on any number of hosts;
  `SET NX` with an expiry decides atomically.

A store that cannot answer raises `Unavailable`: the broker then refuses with 503, it never grants
on doubt. Nothing here logs or returns a store URL, which may carry a password.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import math
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar
from urllib.parse import urlsplit

from broker.errors import Unavailable

REDIS_PREFIX = "ci-broker:jti:"
# Operators who keep the password out of the config file put it here instead.
REDIS_PASSWORD_ENV = "CI_BROKER_REDIS_PASSWORD"
# Per attempt; two attempts, so a request waits at most ~4 s on an unresponsive redis.
REDIS_TIMEOUT = 1.0
REDIS_ATTEMPTS = 2
SQLITE_BUSY_TIMEOUT = 2.0
SQLITE_PURGE_EVERY = 1000
# No record needs to outlive this; it keeps an absurd expiry from overflowing a store's types.
MAX_RECORD_SECONDS = 7 * 86400

log = logging.getLogger("broker.replay")


@dataclass(frozen=True)
class WindowHit:
    """One hit on a sliding-window rate limit that lives in the replay store's redis, counted by the
    same script that records the token (`RedisReplayStore.first_use`); built by `broker.ratelimit`."""

    previous: str  # the previous and current windows' keys, as limits' RedisStorage names them
    current: str
    limit: int
    window: int  # seconds


class LimitReached(Exception):
    """The `WindowHit` was over its limit: nothing was counted and the token was not recorded."""


def _bounded(expires_at: float, now: float) -> float:
    return float(min(expires_at, now + MAX_RECORD_SECONDS))


def is_redis_url(url: str) -> bool:
    return url.startswith(("redis://", "rediss://"))


def replay_key(issuer: str, jti: str) -> str:
    # Hashed so an attacker-chosen jti cannot bloat keys or inject separators. surrogatepass:
    # JSON may spell a lone surrogate (\ud800), which strict UTF-8 cannot encode.
    return hashlib.sha256(f"{issuer}\x00{jti}".encode("utf-8", "surrogatepass")).hexdigest()


class ReplayStore(Protocol):
    def first_use(self, key: str, expires_at: float) -> bool:
        """Record `key` until `expires_at` (unix time); True if it was not already recorded."""
        ...


class MemoryReplayStore:
    """Per-process store: correct for one process only (one gunicorn worker)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._seen: dict[str, float] = {}
        self._expiries: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._clock = clock

    def first_use(self, key: str, expires_at: float) -> bool:
        with self._lock:
            now = self._clock()
            self._purge(now)
            if key in self._seen:
                return False
            self._seen[key] = expires_at
            heapq.heappush(self._expiries, (expires_at, key))
            return True

    def _purge(self, now: float) -> None:
        while self._expiries and self._expiries[0][0] < now:
            expires_at, key = heapq.heappop(self._expiries)
            if self._seen.get(key) == expires_at:
                del self._seen[key]

    def close(self) -> None:
        pass

    def __len__(self) -> int:
        return len(self._seen)


class SqliteReplayStore:
    """One file shared by every process on a host. The upsert below is one atomic statement:
    it inserts, or revives a record whose token has expired, or changes nothing (a replay)."""

    def __init__(self, path: str | Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = str(path)
        self._clock = clock
        self._lock = threading.Lock()
        self._writes = 0
        try:
            self._conn = sqlite_connection(self.path)
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS used_tokens "
                "(key TEXT PRIMARY KEY, expires_at REAL NOT NULL) WITHOUT ROWID"
            )
        except sqlite3.Error as exc:
            raise Unavailable(
                "the replay store is unavailable",
                reason=f"sqlite replay store {self.path}: {type(exc).__name__}: {exc}",
            ) from None

    def first_use(self, key: str, expires_at: float) -> bool:
        now = self._clock()
        expires_at = _bounded(expires_at, now)
        with self._lock:
            try:
                cursor = self._conn.execute(
                    "INSERT INTO used_tokens (key, expires_at) VALUES (?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at "
                    "WHERE used_tokens.expires_at < ?",
                    (key, expires_at, now),
                )
                inserted = cursor.rowcount == 1
            except sqlite3.Error as exc:
                raise Unavailable(
                    "the replay store is unavailable",
                    reason=f"sqlite replay store: {type(exc).__name__}: {exc}",
                ) from None
            self._writes += 1
            if self._writes % SQLITE_PURGE_EVERY == 0:
                # The token is already recorded: a busy database here must not turn its first
                # use into a 503 (the job's retry would then be refused as a replay).
                try:
                    self._conn.execute("DELETE FROM used_tokens WHERE expires_at < ?", (now,))
                except sqlite3.Error as exc:
                    log.warning("sqlite replay store purge failed: %s", type(exc).__name__)
        return inserted

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class RedisReplayStore:
    """Shared by any number of broker processes. Redis being down means 503 for the requests that
    reach this point, and the next request after it returns simply works: the connection pool
    reconnects on demand, so nothing has to be restarted.

    With a per-identity rate limit, `first_use` counts it and records the token in one script, one
    round trip instead of two (the limit first, as the exchange orders them); without one it sends
    a plain `SET NX EX`, so a store without scripting (an ACL) serves a broker without limits.
    """

    def __init__(
        self, url: str, *, timeout: float = REDIS_TIMEOUT, clock: Callable[[], float] = time.time
    ) -> None:
        import redis

        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self._retryable: tuple[type[BaseException], ...] = (
            redis.ConnectionError,
            redis.TimeoutError,
            OSError,
        )
        self.url = url  # compared by the rate limiter, never shown: it may carry a password
        self.where = describe_store(url)
        self._clock = clock
        # redis-py's own retries are off: a blind retry of SET NX whose first reply was lost would
        # report our own write as a replay; `first_use` retries knowing what it wrote.
        self._client = redis_client(url, timeout)
        # EVALSHA of the script's digest; redis-py loads it on NOSCRIPT (first use, redis restart).
        self._counted_first_use = self._client.register_script(COUNTED_FIRST_USE)

    def first_use(self, key: str, expires_at: float, hit: WindowHit | None = None) -> bool:
        """As `ReplayStore.first_use`; with `hit`, count it first and raise LimitReached (having
        recorded nothing) if it is over its limit, all in one atomic script."""
        name = REDIS_PREFIX + key
        # Relative expiry from our clock, so a skewed redis clock cannot shorten the record.
        now = self._clock()
        ttl = max(1, math.ceil(_bounded(expires_at, now) - now))
        nonce = secrets.token_hex(8)
        last: BaseException | None = None
        for attempt in range(REDIS_ATTEMPTS):
            try:
                if hit is not None:
                    # The script tells our own earlier write (a lost reply) from a replay itself.
                    outcome = self._counted_first_use(
                        keys=[name, hit.previous, hit.current], args=[nonce, ttl, hit.limit, hit.window, 1]
                    )
                    if outcome == _LIMIT_REACHED:
                        raise LimitReached
                    return bool(outcome == _FIRST_USE)
                if self._client.set(name, nonce, nx=True, ex=ttl):
                    return True
                if attempt == 0:
                    return False
                # An earlier attempt may have written before its reply was lost: that is still us.
                return bool(self._client.get(name) == nonce.encode())
            except self._retryable as exc:
                last = exc
            except self._errors as exc:
                last = exc
                break
        raise Unavailable(
            "the replay store is unavailable",
            reason=f"redis replay store {self.where}: {type(last).__name__}",
        ) from None

    def close(self) -> None:
        self._client.close()


def _counted_first_use_script() -> str:
    from limits.storage import RedisStorage

    # limits' own sliding-window script, as a function: the counts stay exactly the ones its
    # RedisStorage keeps (refresh's identity limit and Retry-After read them through limits).
    acquire = RedisStorage.SCRIPT_ACQUIRE_SLIDING_WINDOW.decode()
    return f"""
local function acquire_sliding_window(KEYS, ARGV)
{acquire}
end

-- KEYS: the token's record, the limit's previous and current windows.
-- ARGV: this attempt's nonce, the record's lifetime in seconds, then the limit, its window in
-- seconds and the cost (acquire_sliding_window's arguments).
local record = redis.call('get', KEYS[1])
if record == ARGV[1] then
    return {_FIRST_USE}  -- this attempt's own write, whose reply was lost
end
if not acquire_sliding_window({{KEYS[2], KEYS[3]}}, {{ARGV[3], ARGV[4], ARGV[5]}}) then
    return {_LIMIT_REACHED}
end
if record then
    return {_REPLAY}
end
redis.call('set', KEYS[1], ARGV[1], 'EX', ARGV[2])
return {_FIRST_USE}
"""


_REPLAY, _FIRST_USE, _LIMIT_REACHED = 0, 1, 2
COUNTED_FIRST_USE = _counted_first_use_script()


def redis_client(url: str, timeout: float = REDIS_TIMEOUT) -> Any:
    """A redis client with the store's timeouts and without redis-py's own blind retries.

    Shared by the replay and session stores: each retries an operation itself, knowing what an
    earlier attempt whose reply was lost may already have written.
    """
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(url, **redis_options(url, timeout), retry=Retry(NoBackoff(), 0))


def sqlite_connection(path: str) -> sqlite3.Connection:
    """A connection to the store's sqlite file, shared by every process on the host (WAL).

    isolation_level=None: each statement commits on its own and no transaction is left open; a
    store that needs several statements to be atomic opens one explicitly. Raises sqlite3.Error.
    """
    conn = sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def redis_options(url: str, timeout: float = REDIS_TIMEOUT) -> dict[str, Any]:
    """Connection options shared by the replay store and the rate limiter's storage."""
    options: dict[str, Any] = {"socket_connect_timeout": timeout, "socket_timeout": timeout}
    password = os.environ.get(REDIS_PASSWORD_ENV)
    if password and urlsplit(url).password is None:
        options["password"] = password
    return options


def describe_store(url: str) -> str:
    """The store's URL without credentials, for logs and audit reasons."""
    if not is_redis_url(url):
        return url
    try:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}{parts.path}"
    except ValueError:
        return f"{url.split(':', 1)[0]}://(unparsable)"


def store_url_problem(url: str) -> str | None:
    """Why `url` names no usable replay store, or None. Never echoes credentials."""
    if url == "memory":
        return None
    if is_redis_url(url):
        try:
            parts = urlsplit(url)
            host = parts.hostname
            _ = parts.port  # raises ValueError on a non-numeric or out-of-range port
        except ValueError:
            return "is not a valid redis:// URL"
        if not host:
            return "a redis URL needs a host: redis://HOST:PORT/DB"
        db = parts.path.lstrip("/")
        if db and not db.isdigit():
            return "the redis database must be a number: redis://HOST:PORT/DB"
        if parts.fragment:
            return "a redis URL takes no fragment"
        return None
    if url.startswith("sqlite:///"):
        path = sqlite_path(url)
        if not path or path == ":memory:" or path.endswith("/"):
            return "sqlite:///PATH needs a file path (sqlite:////abs/path.db for an absolute one)"
        return None
    return "must be memory, redis://HOST:PORT/DB or sqlite:///PATH"


def sqlite_path(url: str) -> str:
    # SQLAlchemy's spelling: sqlite:///relative.db and sqlite:////absolute/path.db.
    return url[len("sqlite:///") :]


Store = TypeVar("Store")


def open_store(url: str) -> ReplayStore:
    return StoreKinds[ReplayStore](
        "replay store", memory=MemoryReplayStore, redis=RedisReplayStore, sqlite=SqliteReplayStore
    ).open(url)


@dataclass(frozen=True)
class StoreKinds(Generic[Store]):
    """One store (replay, sessions) in each form the broker's store URL (`server.store`) can
    name: one reading of that URL for every store kept there."""

    what: str
    memory: Callable[[], Store]
    redis: Callable[[str], Store]
    sqlite: Callable[[str], Store]

    def open(self, url: str) -> Store:
        """An unusable URL, or redis:// without the redis package, is a ValueError naming the store."""
        problem = store_url_problem(url)
        if problem is not None:
            raise ValueError(f"{self.what}: {problem}")
        if url == "memory":
            return self.memory()
        if is_redis_url(url):
            try:
                return self.redis(url)
            except ImportError:
                raise ValueError(
                    f"{self.what}: redis:// needs the redis package: pip install 'ci-broker[redis]'"
                ) from None
        return self.sqlite(sqlite_path(url))
