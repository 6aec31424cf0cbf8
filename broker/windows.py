"""Alert counts in the shared store: sliding windows and remembered keys, so replicas count together.

Two operations, sent together in one round trip per batch (`WindowStore.run`):

- `Count(key, member, window)`: record `member` at `now` in the window `key` and answer how many
  members it holds from the last `window` seconds. A member recorded again moves to `now` rather
  than counting twice, so a window of role names counts distinct roles and a window of request ids
  counts requests.
- `Remember(key, ttl, refresh)`: answer whether `key` was absent, and keep it for `ttl` seconds
  from now (`refresh`: renew a present key's time too; without it, a present key keeps its own).

The alert detectors (`broker.alerts`) call these from their background thread only, never from
the request path. Keys are built by the detectors from hashes, never from caller text.

- memory: this process's dictionaries (one worker only, like the memory replay store);
- sqlite: two tables in the replay store's file, one transaction per batch;
- redis: sorted sets and plain keys with expiries, one pipeline per batch.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from broker.replay import (
    REDIS_TIMEOUT,
    SQLITE_BUSY_TIMEOUT,
    describe_store,
    is_redis_url,
    redis_options,
    sqlite_path,
)

REDIS_PREFIX = "ci-broker:alert:"
PURGE_EVERY = 1000


@dataclass(frozen=True)
class Count:
    key: str
    member: str
    window: int


@dataclass(frozen=True)
class Remember:
    key: str
    ttl: int
    refresh: bool = True


Op = Count | Remember


class WindowStoreError(Exception):
    """The store could not answer; the message names it without credentials."""


class WindowStore(Protocol):
    where: str

    def run(self, ops: Sequence[Op], now: float) -> list[Any]:
        """Each op's answer, in order: an int for Count, a bool (was absent) for Remember."""
        ...

    def close(self) -> None: ...


class MemoryWindows:
    def __init__(self) -> None:
        self.where = "memory"
        self._windows: dict[str, dict[str, float]] = {}
        self._spans: dict[str, int] = {}
        self._marks: dict[str, float] = {}
        self._lock = threading.Lock()
        self._ops = 0

    def run(self, ops: Sequence[Op], now: float) -> list[Any]:
        with self._lock:
            self._ops += len(ops)
            if self._ops >= PURGE_EVERY:
                self._purge(now)
            return [self._one(op, now) for op in ops]

    def _one(self, op: Op, now: float) -> Any:
        if isinstance(op, Count):
            members = self._windows.setdefault(op.key, {})
            self._spans[op.key] = op.window
            members[op.member] = now
            for member in [m for m, at in members.items() if at <= now - op.window]:
                del members[member]
            return len(members)
        until = self._marks.get(op.key)
        absent = until is None or until <= now
        if absent or op.refresh:
            self._marks[op.key] = now + op.ttl
        return absent

    def _purge(self, now: float) -> None:
        self._ops = 0
        for key, members in list(self._windows.items()):
            if all(at <= now - self._spans[key] for at in members.values()):
                del self._windows[key], self._spans[key]
        for key in [k for k, until in self._marks.items() if until <= now]:
            del self._marks[key]

    def close(self) -> None:
        pass


class SqliteWindows:
    def __init__(self, path: str) -> None:
        self.where = f"sqlite:///{path}"
        self._lock = threading.Lock()
        self._runs = 0
        try:
            self._conn = sqlite3.connect(
                path, timeout=SQLITE_BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS alert_windows "
                "(key TEXT NOT NULL, member TEXT NOT NULL, at REAL NOT NULL, PRIMARY KEY (key, member)) "
                "WITHOUT ROWID"
            )
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS alert_marks (key TEXT PRIMARY KEY, until REAL NOT NULL) WITHOUT ROWID"
            )
        except sqlite3.Error as exc:
            raise WindowStoreError(f"{self.where}: {type(exc).__name__}") from None

    def run(self, ops: Sequence[Op], now: float) -> list[Any]:
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    answers = [self._one(op, now) for op in ops]
                    self._runs += 1
                    if self._runs % PURGE_EVERY == 0:
                        # Windows are at most a day, marks at most a year: older rows count for nothing.
                        self._conn.execute("DELETE FROM alert_windows WHERE at <= ?", (now - 86400,))
                        self._conn.execute("DELETE FROM alert_marks WHERE until <= ?", (now,))
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
                self._conn.execute("COMMIT")
                return answers
            except sqlite3.Error as exc:
                raise WindowStoreError(f"{self.where}: {type(exc).__name__}") from None

    def _one(self, op: Op, now: float) -> Any:
        c = self._conn
        if isinstance(op, Count):
            c.execute(
                "INSERT INTO alert_windows (key, member, at) VALUES (?, ?, ?) "
                "ON CONFLICT (key, member) DO UPDATE SET at = excluded.at",
                (op.key, op.member, now),
            )
            c.execute("DELETE FROM alert_windows WHERE key = ? AND at <= ?", (op.key, now - op.window))
            return int(c.execute("SELECT COUNT(*) FROM alert_windows WHERE key = ?", (op.key,)).fetchone()[0])
        row = c.execute("SELECT until FROM alert_marks WHERE key = ?", (op.key,)).fetchone()
        absent = row is None or row[0] <= now
        if absent or op.refresh:
            c.execute(
                "INSERT INTO alert_marks (key, until) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET until = excluded.until",
                (op.key, now + op.ttl),
            )
        return absent

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class RedisWindows:
    def __init__(self, url: str, *, timeout: float = REDIS_TIMEOUT) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.where = describe_store(url)
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self._client = redis.Redis.from_url(url, **redis_options(url, timeout), retry=Retry(NoBackoff(), 0))

    def run(self, ops: Sequence[Op], now: float) -> list[Any]:
        picks: list[int] = []  # the index, in the pipeline's replies, of each op's answer
        try:
            with self._client.pipeline(transaction=False) as pipe:
                for op in ops:
                    key = REDIS_PREFIX + op.key
                    if isinstance(op, Count):
                        pipe.zadd(key, {op.member: now})
                        pipe.zremrangebyscore(key, "-inf", now - op.window)
                        picks.append(len(pipe))
                        pipe.zcard(key)
                        pipe.expire(key, op.window + 1)
                    else:
                        picks.append(len(pipe))
                        pipe.set(key, b"1", nx=True, ex=op.ttl)
                        if op.refresh:
                            pipe.expire(key, op.ttl)
                replies = pipe.execute()
        except self._errors as exc:
            raise WindowStoreError(f"redis {self.where}: {type(exc).__name__}") from None
        return [
            int(replies[i]) if isinstance(op, Count) else bool(replies[i])
            for i, op in zip(picks, ops, strict=True)
        ]

    def close(self) -> None:
        self._client.close()


def open_window_store(url: str) -> WindowStore:
    if is_redis_url(url):
        return RedisWindows(url)
    if url == "memory":
        return MemoryWindows()
    return SqliteWindows(sqlite_path(url))
