"""Alert counts in the shared store: sliding windows and remembered keys, so replicas count together.

Two operations, sent together in one round trip per batch (`WindowStore.run`):

- `Count(key, member, window, at)`: record `member` at time `at` in the window `key` and answer
  how many members it holds from the `window` seconds up to `at`. A member recorded again moves to
  its new time rather than counting twice, so a window of role names counts distinct roles and a window of request ids
  counts requests.
- `Remember(key, ttl, at, refresh)`: answer whether `key` was absent, and keep it for `ttl`
  seconds from `at` (`refresh`: renew a present key's time too; without it, a present key keeps
  its own).

The alert detectors (`broker.alerts`) call these from their background thread only, never from
the request path. Keys are built by the detectors from hashes, never from caller text.

- memory: this process's dictionaries (one worker only, like the memory replay store);
- sqlite: two tables in the replay store's file, one transaction per batch;
- redis: sorted sets and plain keys with expiries, one Lua script call per batch.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from broker.replay import describe_store, is_redis_url, sqlite_path
from broker.storeconn import redis_client, sqlite_connection, write_transaction

REDIS_PREFIX = "ci-broker:alert:"
PURGE_EVERY = 1000


@dataclass(frozen=True)
class Count:
    key: str
    member: str
    window: int
    at: float  # the event's Unix time: "now" for this operation


@dataclass(frozen=True)
class Remember:
    key: str
    ttl: int
    at: float
    refresh: bool = True


Op = Count | Remember


class WindowStoreError(Exception):
    """The store could not answer; the message names it without credentials."""


class WindowStore(Protocol):
    where: str

    def run(self, ops: Sequence[Op]) -> list[Any]:
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

    def run(self, ops: Sequence[Op]) -> list[Any]:
        with self._lock:
            self._ops += len(ops)
            if self._ops >= PURGE_EVERY and ops:
                self._purge(ops[-1].at)
            return [self._one(op) for op in ops]

    def _one(self, op: Op) -> Any:
        now = op.at
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
            self._conn = sqlite_connection(
                path,
                "CREATE TABLE IF NOT EXISTS alert_windows "
                "(key TEXT NOT NULL, member TEXT NOT NULL, at REAL NOT NULL, PRIMARY KEY (key, member)) "
                "WITHOUT ROWID",
                "CREATE TABLE IF NOT EXISTS alert_marks (key TEXT PRIMARY KEY, until REAL NOT NULL) WITHOUT ROWID",
            )
        except sqlite3.Error as exc:
            raise WindowStoreError(f"{self.where}: {type(exc).__name__}") from None

    def run(self, ops: Sequence[Op]) -> list[Any]:
        with self._lock:
            try:
                with write_transaction(self._conn) as conn:
                    answers = [self._one(op) for op in ops]
                    self._runs += 1
                    if self._runs % PURGE_EVERY == 0 and ops:
                        now = ops[-1].at
                        # Windows are at most a day, marks at most a year: older rows count for nothing.
                        conn.execute("DELETE FROM alert_windows WHERE at <= ?", (now - 86400,))
                        conn.execute("DELETE FROM alert_marks WHERE until <= ?", (now,))
                return answers
            except sqlite3.Error as exc:
                raise WindowStoreError(f"{self.where}: {type(exc).__name__}") from None

    def _one(self, op: Op) -> Any:
        c, now = self._conn, op.at
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
    """One Lua script per batch: a round trip and one command, however many operations.

    The rate limiter (the `limits` library) runs Lua scripts on the same redis already, so this
    asks for nothing a deployment with rate limits does not grant. Sent as separate commands
    (ZADD, ZREMRANGEBYSCORE, ZCARD, EXPIRE per count) the same batch costs the worker several times
    the CPU in redis-py's command encoding and reply parsing (bench/incident.py).
    """

    def __init__(self, url: str) -> None:
        self.where = describe_store(url)
        self._client, self._errors = redis_client(url)
        self._script = self._client.register_script(_REDIS_BATCH)

    def run(self, ops: Sequence[Op]) -> list[Any]:
        keys = [REDIS_PREFIX + op.key for op in ops]
        # One JSON argument for the whole batch: redis-py encodes each argument separately, and
        # hundreds of small ones cost more than the script.
        plan = json.dumps(
            [
                ["c", op.at, op.window, op.member]
                if isinstance(op, Count)
                else ["r", op.at, op.ttl, op.refresh]
                for op in ops
            ]
        )
        try:
            replies = self._script(keys=keys, args=[plan])
        except self._errors as exc:
            raise WindowStoreError(f"redis {self.where}: {type(exc).__name__}") from None
        return [int(r) if isinstance(op, Count) else bool(r) for r, op in zip(replies, ops, strict=True)]

    def close(self) -> None:
        self._client.close()


# KEYS: one per operation; ARGV[1]: a JSON array, per operation ["c", at, window, member] or
# ["r", at, ttl, refresh] (see RedisWindows.run).
_REDIS_BATCH = """
local ops = cjson.decode(ARGV[1])
local out = {}
for i, key in ipairs(KEYS) do
  local op = ops[i]
  local now = op[2]
  if op[1] == "c" then
    local window = op[3]
    redis.call("ZADD", key, now, op[4])
    redis.call("ZREMRANGEBYSCORE", key, "-inf", now - window)
    out[i] = redis.call("ZCARD", key)
    redis.call("EXPIRE", key, window + 1)
  else
    local ttl = op[3]
    if redis.call("SET", key, "1", "NX", "EX", ttl) then
      out[i] = 1
    else
      out[i] = 0
      if op[4] then redis.call("EXPIRE", key, ttl) end
    end
  end
end
return out
"""


def open_window_store(url: str) -> WindowStore:
    if is_redis_url(url):
        return RedisWindows(url)
    if url == "memory":
        return MemoryWindows()
    return SqliteWindows(sqlite_path(url))
