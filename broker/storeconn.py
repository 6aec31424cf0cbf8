"""Connections to the shared store as the block list and the alert counters open them.

- redis: a client without retries inside a call (each caller polls or counts again a moment
  later, and a command line write should fail plainly rather than wait through several
  timeouts), with the replay store's timeouts and password handling.
- sqlite: the replay store's file, in WAL mode, one statement or explicit transaction at a time,
  shared by the caller's threads under the caller's own lock; `write_transaction` for writes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from broker.replay import REDIS_TIMEOUT, SQLITE_BUSY_TIMEOUT, redis_options


def redis_client(url: str, timeout: float = REDIS_TIMEOUT) -> tuple[Any, tuple[type[BaseException], ...]]:
    """A redis client for `url`, and the exceptions that mean the store did not answer."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    client = redis.Redis.from_url(url, **redis_options(url, timeout), retry=Retry(NoBackoff(), 0))
    return client, (redis.RedisError, OSError)


def sqlite_connection(path: str, *tables: str) -> sqlite3.Connection:
    """A connection to the sqlite file at `path` with `tables` (CREATE TABLE IF NOT EXISTS ...)."""
    # isolation_level=None: transactions are the callers' explicit BEGINs, nothing implicit.
    conn = sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    for table in tables:
        conn.execute(table)
    return conn


@contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE (the write lock up front: no deadlock upgrading a read), COMMIT on success,
    ROLLBACK on any exception, which propagates."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
