"""Broker sessions (contract section 8): credentials for jobs that outlive them.

A role with `session_lifetime` gives each granted exchange a session: the CI token's verified
claims, recorded once, and a refresh token the job presents at `POST /v1/refresh` for fresh
credentials until the session expires or ends. This module holds the session record, the refresh
tokens (format, generation, hash), and the stores that keep sessions where every replica sees
them, on the same store URL as the replay store (memory, sqlite, redis).

Refresh tokens rotate: each refresh spends the presented token and issues the next. Every token a
session ever had maps to the session and the generation it was issued for, so a spent token
presented again is recognised as spent (and the refresh flow ends the session: someone holds a
copy); a token the store has never seen is only unknown, and ends nothing. Only SHA-256 hashes of
refresh tokens are stored: each token carries 256 bits of randomness, so its hash reveals nothing
and needs no slow key-derivation function.

The query API (`SessionStore.sessions`, `SessionStore.end`) is what operators' commands
(`ci-broker revoke`, broker/revoke.py) use to list and end sessions; a listed session holds no
secret.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

from broker.errors import InvalidToken, Unavailable
from broker.replay import (
    REDIS_ATTEMPTS,
    StoreKinds,
    describe_store,
    redis_client,
    sqlite_connection,
)

MAX_SESSION_LIFETIME = 43200
# `cibrt_` makes a leaked refresh token recognisable to secret scanners and to people, and lets
# the broker tell one from a CI token at a glance; 32 random bytes follow, base64url (43 chars).
REFRESH_TOKEN_PREFIX = "cibrt_"
REFRESH_TOKEN = re.compile(r"cibrt_[A-Za-z0-9_-]{43}")
# Why a session ended (bounded: these are metric labels).
REVOKED, REFRESH_REUSE, OPERATOR = "revoked", "refresh_reuse", "operator"
END_REASONS = (REVOKED, REFRESH_REUSE, OPERATOR)
# A record outlives its session by this much, so a late refresh learns "expired", not "unknown".
RETAIN_SECONDS = 3600
SQLITE_PURGE_EVERY = 200

REDIS_SESSION = "ci-broker:session:"
REDIS_REFRESH = "ci-broker:refresh:"
REDIS_INDEX = "ci-broker:sessions"

log = logging.getLogger("broker.sessions")
T = TypeVar("T")


def new_refresh_token() -> str:
    return REFRESH_TOKEN_PREFIX + secrets.token_urlsafe(32)


def is_refresh_token(text: str) -> bool:
    return REFRESH_TOKEN.fullmatch(text) is not None


def refresh_token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


@dataclass(frozen=True)
class Session:
    """One session: who it was granted to (the first exchange's verified claims), for which role,
    until when, and how many times its refresh token has rotated. Holds no secret."""

    id: str
    role: str
    provider: str
    issuer: str
    claims: Mapping[str, Any]
    token_sha256: str  # the first exchange's CI token, to correlate with its audit event
    created_at: float
    expires_at: float
    generation: int = 0
    ended_at: float | None = None
    end_reason: str | None = None

    def describe(self) -> dict[str, Any]:
        """The session as operators' commands list it (JSON-ready)."""
        return {
            "id": self.id,
            "role": self.role,
            "provider": self.provider,
            "subject": self.claims.get("sub"),
            "created_at": _rfc3339(self.created_at),
            "expires_at": _rfc3339(self.expires_at),
            "refreshes": self.generation,
            "ended_at": _rfc3339(self.ended_at) if self.ended_at is not None else None,
            "end_reason": self.end_reason,
            "claims": dict(self.claims),
        }

    def fields(self) -> dict[str, str]:
        """The record as flat text fields (redis hash, sqlite row)."""
        out = {
            "id": self.id,
            "role": self.role,
            "provider": self.provider,
            "issuer": self.issuer,
            # ASCII escapes: a claim may hold a lone surrogate, which UTF-8 cannot carry.
            "claims": json.dumps(self.claims, separators=(",", ":"), ensure_ascii=True),
            "token_sha256": self.token_sha256,
            "created_at": repr(self.created_at),
            "expires_at": repr(self.expires_at),
            "generation": str(self.generation),
        }
        if self.ended_at is not None:
            out["ended_at"] = repr(self.ended_at)
            out["end_reason"] = self.end_reason or ""
        return out

    @classmethod
    def from_fields(cls, raw: Mapping[str, str]) -> Session:
        ended = raw.get("ended_at")
        return cls(
            id=raw["id"],
            role=raw["role"],
            provider=raw["provider"],
            issuer=raw["issuer"],
            claims=json.loads(raw["claims"]),
            token_sha256=raw["token_sha256"],
            created_at=float(raw["created_at"]),
            expires_at=float(raw["expires_at"]),
            generation=int(raw["generation"]),
            ended_at=float(ended) if ended else None,
            end_reason=raw.get("end_reason") or None,
        )


@dataclass(frozen=True)
class Presented:
    """A refresh token the store knows: its session, and the generation it was issued for."""

    session: Session
    generation: int

    @property
    def spent(self) -> bool:
        """A later token has been issued: this one was already used for a refresh."""
        return self.generation < self.session.generation


@dataclass(frozen=True)
class SessionGrant:
    """What the caller gets: the session's id, its next refresh token, and its end."""

    id: str
    refresh_token: str
    expires_at: datetime


class SessionStore(Protocol):
    def create(self, session: Session, token_hash: str) -> None:
        """Record a new session and its first refresh token (generation 0)."""
        ...

    def find(self, token_hash: str, now: float) -> Presented | None:
        """The session a refresh token belongs to (spent or not), or None if unknown."""
        ...

    def rotate(self, presented: Presented, token_hash: str) -> bool:
        """Spend the presented token and record `token_hash` as the next generation's, atomically:
        False unless the presented token is still the session's current one and the session has
        not ended (another refresh won, or the token was spent already)."""
        ...

    def unrotate(self, presented: Presented, token_hash: str) -> bool:
        """Undo `rotate(presented, token_hash)` (the next token was never handed out): the presented
        token is current again and `token_hash` forgotten. False if the session moved on."""
        ...

    def end(self, session_id: str, reason: str, at: float) -> bool:
        """End a session; True if it was live (and now is not), False if unknown or already ended."""
        ...

    def get(self, session_id: str) -> Session | None: ...

    def sessions(self, now: float, *, include_ended: bool = False) -> list[Session]:
        """Sessions that have not expired (and, unless include_ended, not ended), oldest first."""
        ...

    def close(self) -> None: ...


# -- the rules over a store -----------------------------------------------------------------------


class Sessions:
    """Session rules over a store: start one, look a refresh token up, check it is usable, rotate."""

    def __init__(self, store: SessionStore, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock

    def start(
        self,
        *,
        role: str,
        lifetime: int,
        provider: str,
        issuer: str,
        claims: Mapping[str, Any],
        token_sha256: str,
    ) -> tuple[Session, SessionGrant]:
        now = self.clock()
        session = Session(
            id=secrets.token_hex(16),
            role=role,
            provider=provider,
            issuer=issuer,
            claims=dict(claims),
            token_sha256=token_sha256,
            created_at=now,
            expires_at=now + min(lifetime, MAX_SESSION_LIFETIME),
        )
        token = new_refresh_token()
        self.store.create(session, refresh_token_hash(token))
        return session, grant(session, token)

    def find(self, token: str) -> Presented | None:
        """The session of a well-formed refresh token (spent or not), or None if never issued."""
        return self.store.find(refresh_token_hash(token), self.clock())

    def check_usable(self, session: Session) -> None:
        """Refuse a session that has ended (revoked, reuse) or expired."""
        if session.ended_at is not None:
            raise InvalidToken(
                "the session has ended; start a new one with an exchange",
                reason=f"session {session.id} ended ({session.end_reason})",
            )
        if self.clock() >= session.expires_at:
            raise InvalidToken(
                "the session has expired; start a new one with an exchange",
                reason=f"session {session.id} expired at {_rfc3339(session.expires_at)}",
            )

    def rotate(self, presented: Presented) -> SessionGrant | None:
        """The session's next refresh token, or None if the presented one was spent meanwhile."""
        token = new_refresh_token()
        if not self.store.rotate(presented, refresh_token_hash(token)):
            return None
        return grant(replace(presented.session, generation=presented.generation + 1), token)

    def undo_rotation(self, presented: Presented, grant: SessionGrant) -> None:
        """The credentials could not be issued: the caller keeps the token it presented, so it can
        try again instead of holding a spent one. Best effort: a store that fails here leaves
        the rotation in place (the session then ends at the caller's next attempt)."""
        try:
            self.store.unrotate(presented, refresh_token_hash(grant.refresh_token))
        except Unavailable as exc:
            log.warning("could not undo a refresh token rotation: %s", exc.reason)

    def end(self, session: Session, reason: str) -> bool:
        return self.store.end(session.id, reason, self.clock())

    def remaining(self, session: Session) -> float:
        return session.expires_at - self.clock()


def grant(session: Session, token: str) -> SessionGrant:
    return SessionGrant(session.id, token, datetime.fromtimestamp(session.expires_at, UTC))


# -- queries for operators --------------------------------------------------------------------------


def end_session(store: SessionStore, session_id: str, *, reason: str = OPERATOR) -> bool:
    """End one session by id; True if it was live."""
    return store.end(session_id, reason, time.time())


# -- stores -----------------------------------------------------------------------------------------


class MemorySessionStore:
    """Per-process sessions: correct for one process only (one gunicorn worker)."""

    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}
        self._tokens: dict[str, tuple[str, int]] = {}
        self._lock = threading.Lock()

    def create(self, session: Session, token_hash: str) -> None:
        with self._lock:
            self._purge(session.created_at)
            self._sessions[session.id] = session
            self._tokens[token_hash] = (session.id, session.generation)

    def find(self, token_hash: str, now: float) -> Presented | None:
        with self._lock:
            entry = self._tokens.get(token_hash)
            session = self._sessions.get(entry[0]) if entry else None
            if entry is None or session is None or now >= session.expires_at + RETAIN_SECONDS:
                return None
            return Presented(session, entry[1])

    def rotate(self, presented: Presented, token_hash: str) -> bool:
        session_id, generation = presented.session.id, presented.generation
        with self._lock:
            current = self._sessions.get(session_id)
            if current is None or current.generation != generation or current.ended_at is not None:
                return False
            self._sessions[session_id] = replace(current, generation=generation + 1)
            self._tokens[token_hash] = (session_id, generation + 1)
            return True

    def unrotate(self, presented: Presented, token_hash: str) -> bool:
        session_id, generation = presented.session.id, presented.generation
        with self._lock:
            current = self._sessions.get(session_id)
            if current is None or current.generation != generation + 1 or current.ended_at is not None:
                return False
            self._sessions[session_id] = replace(current, generation=generation)
            self._tokens.pop(token_hash, None)
            return True

    def end(self, session_id: str, reason: str, at: float) -> bool:
        with self._lock:
            current = self._sessions.get(session_id)
            if current is None or current.ended_at is not None:
                return False
            self._sessions[session_id] = replace(current, ended_at=at, end_reason=reason)
            return True

    def get(self, session_id: str) -> Session | None:
        with self._lock:
            return self._sessions.get(session_id)

    def sessions(self, now: float, *, include_ended: bool = False) -> list[Session]:
        with self._lock:
            found = [
                s
                for s in self._sessions.values()
                if s.expires_at > now and (include_ended or s.ended_at is None)
            ]
        return sorted(found, key=lambda s: s.created_at)

    def _purge(self, now: float) -> None:
        gone = {i for i, s in self._sessions.items() if now >= s.expires_at + RETAIN_SECONDS}
        if gone:
            for session_id in gone:
                del self._sessions[session_id]
            self._tokens = {h: e for h, e in self._tokens.items() if e[0] not in gone}

    def close(self) -> None:
        pass


_SQLITE_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS sessions (id TEXT PRIMARY KEY, role TEXT NOT NULL, "
    "provider TEXT NOT NULL, issuer TEXT NOT NULL, claims TEXT NOT NULL, token_sha256 TEXT NOT NULL, "
    "created_at REAL NOT NULL, expires_at REAL NOT NULL, generation INTEGER NOT NULL, "
    "ended_at REAL, end_reason TEXT) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS refresh_tokens (hash TEXT PRIMARY KEY, session_id TEXT NOT NULL, "
    "generation INTEGER NOT NULL, expires_at REAL NOT NULL) WITHOUT ROWID",
)
_SQLITE_COLUMNS = (
    "id, role, provider, issuer, claims, token_sha256, created_at, expires_at, generation, "
    "ended_at, end_reason"
)


class SqliteSessionStore:
    """Sessions in the store's sqlite file, shared by every process on one host. A rotation is
    one transaction: the generation moves on only if it is still the one the token was issued
    for, and the next token is recorded with it."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._lock = threading.Lock()
        self._creates = 0
        try:
            self._conn = sqlite_connection(self.path)
            for statement in _SQLITE_SCHEMA:
                self._conn.execute(statement)
        except sqlite3.Error as exc:
            raise _sqlite_unavailable(exc) from None

    def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            try:
                return work(self._conn)
            except sqlite3.Error as exc:
                try:
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # the connection is unusable; the next statement will say so again
                raise _sqlite_unavailable(exc) from None

    def create(self, session: Session, token_hash: str) -> None:
        row = _sqlite_row(session)

        def work(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(f"INSERT INTO sessions ({_SQLITE_COLUMNS}) VALUES ({', '.join('?' * 11)})", row)
            conn.execute(
                "INSERT INTO refresh_tokens (hash, session_id, generation, expires_at) VALUES (?, ?, ?, ?)",
                (token_hash, session.id, session.generation, session.expires_at + RETAIN_SECONDS),
            )
            conn.execute("COMMIT")

        self._run(work)
        self._creates += 1
        if self._creates % SQLITE_PURGE_EVERY == 0:
            self._purge(session.created_at)

    def find(self, token_hash: str, now: float) -> Presented | None:
        def work(conn: sqlite3.Connection) -> Presented | None:
            entry = conn.execute(
                "SELECT session_id, generation FROM refresh_tokens WHERE hash = ? AND expires_at > ?",
                (token_hash, now),
            ).fetchone()
            if entry is None:
                return None
            session = _sqlite_session(conn, entry[0])
            return Presented(session, int(entry[1])) if session is not None else None

        return self._run(work)

    def rotate(self, presented: Presented, token_hash: str) -> bool:
        session, generation = presented.session, presented.generation

        def work(conn: sqlite3.Connection) -> bool:
            conn.execute("BEGIN IMMEDIATE")
            moved = conn.execute(
                "UPDATE sessions SET generation = generation + 1 "
                "WHERE id = ? AND generation = ? AND ended_at IS NULL",
                (session.id, generation),
            ).rowcount
            if moved == 1:
                conn.execute(
                    "INSERT INTO refresh_tokens (hash, session_id, generation, expires_at) "
                    "VALUES (?, ?, ?, ?)",
                    (token_hash, session.id, generation + 1, session.expires_at + RETAIN_SECONDS),
                )
            conn.execute("COMMIT")
            return moved == 1

        return self._run(work)

    def unrotate(self, presented: Presented, token_hash: str) -> bool:
        session, generation = presented.session, presented.generation

        def work(conn: sqlite3.Connection) -> bool:
            conn.execute("BEGIN IMMEDIATE")
            moved = conn.execute(
                "UPDATE sessions SET generation = ? WHERE id = ? AND generation = ? AND ended_at IS NULL",
                (generation, session.id, generation + 1),
            ).rowcount
            if moved == 1:
                conn.execute("DELETE FROM refresh_tokens WHERE hash = ?", (token_hash,))
            conn.execute("COMMIT")
            return moved == 1

        return self._run(work)

    def end(self, session_id: str, reason: str, at: float) -> bool:
        return self._run(
            lambda conn: (
                conn.execute(
                    "UPDATE sessions SET ended_at = ?, end_reason = ? WHERE id = ? AND ended_at IS NULL",
                    (at, reason, session_id),
                ).rowcount
                == 1
            )
        )

    def get(self, session_id: str) -> Session | None:
        return self._run(lambda conn: _sqlite_session(conn, session_id))

    def sessions(self, now: float, *, include_ended: bool = False) -> list[Session]:
        live = "" if include_ended else " AND ended_at IS NULL"
        rows = self._run(
            lambda conn: conn.execute(
                f"SELECT {_SQLITE_COLUMNS} FROM sessions WHERE expires_at > ?{live} ORDER BY created_at",
                (now,),
            ).fetchall()
        )
        return [_sqlite_from_row(row) for row in rows]

    def _purge(self, now: float) -> None:
        # The new session is already recorded: a busy database must not turn it into a 503.
        try:
            with self._lock:
                self._conn.execute("DELETE FROM refresh_tokens WHERE expires_at < ?", (now,))
                self._conn.execute("DELETE FROM sessions WHERE expires_at < ?", (now - RETAIN_SECONDS,))
        except sqlite3.Error as exc:
            log.warning("sqlite session store purge failed: %s", type(exc).__name__)

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _sqlite_unavailable(exc: sqlite3.Error) -> Unavailable:
    return Unavailable(
        "the session store is unavailable", reason=f"sqlite session store: {type(exc).__name__}: {exc}"
    )


def _sqlite_row(session: Session) -> tuple[Any, ...]:
    return (
        session.id,
        session.role,
        session.provider,
        session.issuer,
        session.fields()["claims"],
        session.token_sha256,
        session.created_at,
        session.expires_at,
        session.generation,
        session.ended_at,
        session.end_reason,
    )


def _sqlite_session(conn: sqlite3.Connection, session_id: str) -> Session | None:
    row = conn.execute(f"SELECT {_SQLITE_COLUMNS} FROM sessions WHERE id = ?", (session_id,)).fetchone()
    return _sqlite_from_row(row) if row is not None else None


def _sqlite_from_row(row: tuple[Any, ...]) -> Session:
    sid, role, provider, issuer, claims, token_sha256, created, expires, generation, ended, reason = row
    return Session(
        id=sid,
        role=role,
        provider=provider,
        issuer=issuer,
        claims=json.loads(claims),
        token_sha256=token_sha256,
        created_at=created,
        expires_at=expires,
        generation=generation,
        ended_at=ended,
        end_reason=reason,
    )


# Atomic on the server: the generation moves on only if it is still the presented token's and the
# session has not ended, and the next token's record is written in the same step.
_REDIS_ROTATE = """
local generation = redis.call('HGET', KEYS[1], 'generation')
if not generation or tonumber(generation) ~= tonumber(ARGV[1]) then return 0 end
if redis.call('HEXISTS', KEYS[1], 'ended_at') == 1 then return 0 end
redis.call('HSET', KEYS[1], 'generation', tonumber(ARGV[1]) + 1)
redis.call('SET', KEYS[2], ARGV[2], 'EX', tonumber(ARGV[3]))
return 1
"""
_REDIS_UNROTATE = """
local generation = redis.call('HGET', KEYS[1], 'generation')
if not generation or tonumber(generation) ~= tonumber(ARGV[1]) + 1 then return 0 end
if redis.call('HEXISTS', KEYS[1], 'ended_at') == 1 then return 0 end
redis.call('HSET', KEYS[1], 'generation', tonumber(ARGV[1]))
redis.call('DEL', KEYS[2])
return 1
"""
# HSETNX decides who ends a session; a session that expired out of redis is not recreated.
_REDIS_END = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HSETNX', KEYS[1], 'ended_at', ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'end_reason', ARGV[2])
return 1
"""


class RedisSessionStore:
    """Sessions in redis, shared by any number of broker processes on any number of hosts.

    A session is a hash (`ci-broker:session:<id>`), each refresh token a key
    (`ci-broker:refresh:<sha256>` = "<id> <generation>"), and a sorted set indexes sessions by
    expiry for listing. Every key expires with its session (plus RETAIN_SECONDS).
    """

    def __init__(self, url: str) -> None:
        import redis

        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self._retryable: tuple[type[BaseException], ...] = (
            redis.ConnectionError,
            redis.TimeoutError,
            OSError,
        )
        self.where = describe_store(url)
        self._client = redis_client(url)
        self._rotate = self._client.register_script(_REDIS_ROTATE)
        self._end = self._client.register_script(_REDIS_END)
        self._unrotate = self._client.register_script(_REDIS_UNROTATE)

    def _call(self, work: Callable[[int], T]) -> T:
        last: BaseException | None = None
        for attempt in range(REDIS_ATTEMPTS):
            try:
                return work(attempt)
            except self._retryable as exc:
                last = exc
            except self._errors as exc:
                last = exc
                break
        raise Unavailable(
            "the session store is unavailable",
            reason=f"redis session store {self.where}: {type(last).__name__}",
        ) from None

    @staticmethod
    def _ttl(session: Session) -> int:
        return max(1, math.ceil(session.expires_at + RETAIN_SECONDS - time.time()))

    def create(self, session: Session, token_hash: str) -> None:
        key, ttl = REDIS_SESSION + session.id, self._ttl(session)

        def work(attempt: int) -> None:  # every write is idempotent: a retry repeats it whole
            pipe = self._client.pipeline(transaction=True)
            pipe.hset(key, mapping=session.fields())
            pipe.expire(key, ttl)
            pipe.set(REDIS_REFRESH + token_hash, f"{session.id} {session.generation}", ex=ttl)
            pipe.zadd(REDIS_INDEX, {session.id: session.expires_at})
            pipe.zremrangebyscore(REDIS_INDEX, "-inf", session.created_at - RETAIN_SECONDS)
            pipe.execute()

        self._call(work)

    def find(self, token_hash: str, now: float) -> Presented | None:
        def work(attempt: int) -> Presented | None:
            entry = self._client.get(REDIS_REFRESH + token_hash)
            if entry is None:
                return None
            session_id, generation = entry.decode().split(" ")
            session = self._load(session_id)
            return Presented(session, int(generation)) if session is not None else None

        return self._call(work)

    def rotate(self, presented: Presented, token_hash: str) -> bool:
        session, generation = presented.session, presented.generation
        key, next_entry = REDIS_REFRESH + token_hash, f"{session.id} {generation + 1}"

        def work(attempt: int) -> bool:
            # An earlier attempt may have rotated before its reply was lost: the new token's
            # record (its hash is this request's own random token) says whether that was us.
            if attempt > 0 and self._client.get(key) == next_entry.encode():
                return True
            keys = [REDIS_SESSION + session.id, key]
            return bool(self._rotate(keys=keys, args=[generation, next_entry, self._ttl(session)]))

        return self._call(work)

    def unrotate(self, presented: Presented, token_hash: str) -> bool:
        session, generation = presented.session, presented.generation
        keys = [REDIS_SESSION + session.id, REDIS_REFRESH + token_hash]
        return self._call(lambda attempt: bool(self._unrotate(keys=keys, args=[generation])))

    def end(self, session_id: str, reason: str, at: float) -> bool:
        return self._call(
            lambda attempt: bool(self._end(keys=[REDIS_SESSION + session_id], args=[repr(at), reason]))
        )

    def get(self, session_id: str) -> Session | None:
        return self._call(lambda attempt: self._load(session_id))

    def sessions(self, now: float, *, include_ended: bool = False) -> list[Session]:
        def work(attempt: int) -> list[Session]:
            ids = self._client.zrangebyscore(REDIS_INDEX, f"({now!r}", "+inf")
            pipe = self._client.pipeline(transaction=False)
            for session_id in ids:
                pipe.hgetall(REDIS_SESSION + session_id.decode())
            found = [_redis_session(raw) for raw in pipe.execute() if raw]
            return [s for s in found if include_ended or s.ended_at is None]

        return sorted(self._call(work), key=lambda s: s.created_at)

    def _load(self, session_id: str) -> Session | None:
        raw = self._client.hgetall(REDIS_SESSION + session_id)
        return _redis_session(raw) if raw else None

    def close(self) -> None:
        self._client.close()


def _redis_session(raw: Mapping[bytes, bytes]) -> Session:
    return Session.from_fields({k.decode(): v.decode() for k, v in raw.items()})


def open_session_store(url: str) -> SessionStore:
    """The session store on the broker's store URL (`server.store`), beside the replay store."""
    return StoreKinds[SessionStore](
        "session store", memory=MemorySessionStore, redis=RedisSessionStore, sqlite=SqliteSessionStore
    ).open(url)


def _rfc3339(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
