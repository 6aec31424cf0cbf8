"""Where runtime blocks live: the shared store (sqlite or redis), as records plus a version.

Every write (a block added, one removed, expired ones purged) changes the records and bumps the
version in one transaction, so a reader that finds the version unchanged knows its copy of the
records is current, and a reader that takes both in one snapshot never sees one without the other.
The version is `EPOCH:N`: a counter, and a random epoch chosen by the first write to an empty
store, so a store that lost everything (a redis restart without persistence) and was written again
as many times never shows a reader the version it saw before.
Records are stored as the JSON text `broker.blocks` writes and are parsed there, not here: this
module only moves them. With `memory` there is nothing to share a block with, so there is no
block store (`open_block_store` returns None).

Nothing here logs or returns a store URL, which may carry a password.
"""

from __future__ import annotations

import secrets
import sqlite3
import threading
from collections.abc import Mapping
from typing import Any, Protocol

from broker.replay import describe_store, is_redis_url, sqlite_path
from broker.storeconn import redis_client, sqlite_connection, write_transaction

REDIS_RECORDS = "ci-broker:blocks"
REDIS_VERSION = "ci-broker:blocks:version"
REDIS_EPOCH = "ci-broker:blocks:epoch"


class BlockStoreError(Exception):
    """The store could not be read or written; the message names the store without credentials."""


class BlockStore(Protocol):
    where: str

    def version(self) -> str:
        """The current version: changes whenever any record does ("" for a store never written)."""
        ...

    def snapshot(self) -> tuple[str, dict[str, str]]:
        """The version and every record (id -> JSON text), read together."""
        ...

    def add(self, block_id: str, record: str, purge: list[str]) -> bool:
        """Store a record under a new id, removing the ids in `purge`; False if the id exists."""
        ...

    def remove(self, block_id: str) -> bool:
        """Remove a record; False if there was none."""
        ...

    def close(self) -> None: ...


class SqliteBlockStore:
    """The blocks in the same sqlite file as the replay store: every process on one host shares it."""

    def __init__(self, path: str) -> None:
        self.where = f"sqlite:///{path}"
        self._lock = threading.Lock()
        try:
            self._conn = sqlite_connection(
                path,
                "CREATE TABLE IF NOT EXISTS blocks (id TEXT PRIMARY KEY, record TEXT NOT NULL) WITHOUT ROWID",
                "CREATE TABLE IF NOT EXISTS blocks_version (singleton INTEGER PRIMARY KEY CHECK (singleton = 0), "
                "version INTEGER NOT NULL, epoch TEXT NOT NULL)",
            )
        except sqlite3.Error as exc:
            raise BlockStoreError(f"{self.where}: {type(exc).__name__}: {exc}") from None

    def version(self) -> str:
        return _version(self._query("SELECT epoch, version FROM blocks_version WHERE singleton = 0"))

    def snapshot(self) -> tuple[str, dict[str, str]]:
        with self._lock:
            try:
                self._conn.execute("BEGIN")  # one read transaction: one snapshot of both tables
                try:
                    version = self._conn.execute("SELECT epoch, version FROM blocks_version").fetchall()
                    records = self._conn.execute("SELECT id, record FROM blocks").fetchall()
                finally:
                    self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise BlockStoreError(f"{self.where}: {type(exc).__name__}: {exc}") from None
        return _version(version), {str(i): str(r) for i, r in records}

    def add(self, block_id: str, record: str, purge: list[str]) -> bool:
        def write(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "INSERT INTO blocks (id, record) VALUES (?, ?) ON CONFLICT (id) DO NOTHING",
                (block_id, record),
            )
            if cursor.rowcount != 1:
                return False
            conn.executemany("DELETE FROM blocks WHERE id = ?", [(i,) for i in purge])
            return True

        return self._write(write)

    def remove(self, block_id: str) -> bool:
        return self._write(
            lambda conn: conn.execute("DELETE FROM blocks WHERE id = ?", (block_id,)).rowcount == 1
        )

    def _write(self, change: Any) -> bool:
        with self._lock:
            try:
                with write_transaction(self._conn) as conn:
                    changed = bool(change(conn))
                    if changed:
                        conn.execute(
                            "INSERT INTO blocks_version (singleton, version, epoch) VALUES (0, 1, ?) "
                            "ON CONFLICT (singleton) DO UPDATE SET version = version + 1",
                            (secrets.token_hex(8),),
                        )
                return changed
            except sqlite3.Error as exc:
                raise BlockStoreError(f"{self.where}: {type(exc).__name__}: {exc}") from None

    def _query(self, sql: str) -> list[Any]:
        with self._lock:
            try:
                return self._conn.execute(sql).fetchall()
            except sqlite3.Error as exc:
                raise BlockStoreError(f"{self.where}: {type(exc).__name__}: {exc}") from None

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class RedisBlockStore:
    """The blocks in one redis hash, with the version in a key of its own (INCR on every write)."""

    def __init__(self, url: str) -> None:
        self.where = describe_store(url)
        self._client, self._errors = redis_client(url)

    def version(self) -> str:
        epoch, n = self._call(lambda: self._client.mget(REDIS_EPOCH, REDIS_VERSION))
        return _version([(epoch, n)] if n is not None else [])

    def snapshot(self) -> tuple[str, dict[str, str]]:
        def read() -> list[Any]:
            with self._client.pipeline(transaction=True) as pipe:
                pipe.mget(REDIS_EPOCH, REDIS_VERSION)
                pipe.hgetall(REDIS_RECORDS)
                return list(pipe.execute())

        (epoch, n), records = self._call(read)
        return _version([(epoch, n)] if n is not None else []), _decoded(records)

    def add(self, block_id: str, record: str, purge: list[str]) -> bool:
        def write() -> bool:
            with self._client.pipeline(transaction=True) as pipe:
                pipe.hsetnx(REDIS_RECORDS, block_id, record)
                if purge:
                    pipe.hdel(REDIS_RECORDS, *purge)
                _bump(pipe)
                return bool(pipe.execute()[0])

        return bool(self._call(write))

    def remove(self, block_id: str) -> bool:
        def write() -> bool:
            with self._client.pipeline(transaction=True) as pipe:
                pipe.hdel(REDIS_RECORDS, block_id)
                _bump(pipe)
                return bool(pipe.execute()[0])

        return bool(self._call(write))

    def _call(self, operation: Any) -> Any:
        try:
            return operation()
        except self._errors as exc:
            raise BlockStoreError(f"redis {self.where}: {type(exc).__name__}") from None

    def close(self) -> None:
        self._client.close()


def _bump(pipe: Any) -> None:
    pipe.set(REDIS_EPOCH, secrets.token_hex(8), nx=True)
    pipe.incr(REDIS_VERSION)


def _version(rows: list[Any]) -> str:
    """`EPOCH:N` from an (epoch, counter) row, or "" for a store never written."""
    if not rows:
        return ""
    epoch, n = rows[0]
    epoch = epoch.decode() if isinstance(epoch, bytes) else str(epoch)
    return f"{epoch}:{int(n)}"


def _decoded(records: Mapping[bytes, bytes]) -> dict[str, str]:
    return {k.decode("utf-8", "replace"): v.decode("utf-8", "replace") for k, v in records.items()}


def open_block_store(url: str) -> BlockStore | None:
    """The block store on the broker's shared store, or None for `memory` (nothing to share)."""
    if url == "memory":
        return None
    if is_redis_url(url):
        return RedisBlockStore(url)
    return SqliteBlockStore(sqlite_path(url))
