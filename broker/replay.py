"""Single use of CI tokens: each (issuer, jti) is accepted once until the token expires.

The store sits behind one method so a shared store (redis, sqlite) can replace the in-memory one
without touching the request path. A store that cannot answer must raise `Unavailable`: the
broker then refuses, it never grants on doubt.
"""

from __future__ import annotations

import hashlib
import heapq
import threading
import time
from typing import Callable, Protocol


def replay_key(issuer: str, jti: str) -> str:
    # Hashed so an attacker-chosen jti cannot bloat keys or inject separators.
    return hashlib.sha256(f"{issuer}\x00{jti}".encode()).hexdigest()


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

    def __len__(self) -> int:
        return len(self._seen)


def open_store(url: str) -> ReplayStore:
    if url == "memory":
        return MemoryReplayStore()
    raise ValueError(f"replay store {url!r} is not supported by this build")
