"""A bounded queue drained by one thread of this process: work that must never hold up a request.

The alert webhook, the alert counters in the shared store and the syslog audit sink all hand their
work to one of these. What a caller gets, and what it is promised:

- `offer` never blocks and never raises: it appends under a lock and returns. When the queue
  already holds `capacity` items the new item is dropped (the oldest are kept: they were promised
  first) and `ci_broker_background_dropped_total{queue, reason="queue_full"}` counts it.
- Items are handled in order by a thread of the process that offered them, in batches of up to
  `batch`: whatever is waiting, after up to `linger` seconds for a batch to fill. A handler that
  waits (a retry's backoff) waits in `sleep`, which `close` interrupts.
- `close` lets the thread finish the queue for up to `grace` seconds, then counts what is left as
  dropped (`reason="shutdown"`).

Threads do not survive a fork: a queue is made, and its thread started, in the process that uses
it (each gunicorn worker builds its own after the fork). A queue that finds itself in a forked
child starts afresh, with an empty queue and a thread of its own.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from broker import metrics

T = TypeVar("T")
log = logging.getLogger("broker.background")

_pid = os.getpid()


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


class BackgroundQueue(Generic[T]):
    def __init__(
        self,
        name: str,
        handle: Callable[[list[T]], None],
        *,
        capacity: int,
        batch: int = 1,
        linger: float = 0.0,
        grace: float = 2.0,
    ) -> None:
        self.name = name  # the `queue` label of the drop counter: a fixed word per kind of queue
        self.capacity = capacity
        self.batch = batch
        self.linger = linger
        self.grace = grace
        self._handle = handle
        self._reset()

    def _reset(self) -> None:
        self._pid = _pid
        self._items: deque[T] = deque()
        lock = threading.Lock()
        self._cond = threading.Condition(lock)  # the thread waits here for items
        self._idle = threading.Condition(lock)  # `flush` waits here for the thread
        self._busy = False
        self._hurry = False
        self._closing = False
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._pid != _pid:
            self._reset()
        with self._cond:
            if self._thread is not None or self._closing:
                return
            self._thread = threading.Thread(target=self._run, name=f"ci-broker-{self.name}", daemon=True)
            self._thread.start()

    def offer(self, item: T) -> bool:
        """Queue `item` for the thread; False (and counted) if the queue is full or closed."""
        if self._pid != _pid:
            self._reset()
        full = False
        with self._cond:
            if self._closing or len(self._items) >= self.capacity:
                full = not self._closing
                accepted = False
            else:
                self._items.append(item)
                # The thread waits for a first item, then (lingering) for a full batch.
                if len(self._items) == 1 or len(self._items) >= self.batch:
                    self._cond.notify()
                accepted = True
            started = self._thread is not None
        if not accepted:
            metrics.background_dropped(self.name, "queue_full" if full else "shutdown")
            return False
        if not started:
            self.start()
        return True

    def dropped(self, reason: str) -> None:
        """For handlers: count an item given up on (`gave_up`, `rejected`, `failed`)."""
        metrics.background_dropped(self.name, reason)

    def sleep(self, seconds: float) -> bool:
        """Wait in the thread (a handler's backoff); False if the queue is closing meanwhile."""
        return not self._stopped.wait(seconds)

    def _stopping(self) -> bool:
        # A method, not an expression in the loop: both flags change in other threads.
        return self._closing or self._hurry

    @property
    def closing(self) -> bool:
        return self._stopped.is_set()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._items and not self._closing:
                    self._cond.wait()
                if self.linger and not self._closing:
                    # Let a batch gather: one round trip then serves many items.
                    deadline = time.monotonic() + self.linger
                    while len(self._items) < self.batch and not self._stopping():
                        left = deadline - time.monotonic()
                        if left <= 0 or not self._cond.wait(left):
                            break
                if not self._items:
                    return
                items = [self._items.popleft() for _ in range(min(self.batch, len(self._items)))]
                self._busy, self._hurry = True, False
            try:
                self._handle(items)
            except Exception:  # one bad batch must not stop the thread
                log.exception("background %s: handling failed", self.name)
            finally:
                with self._cond:
                    self._busy = False
                    self._idle.notify_all()

    def flush(self, timeout: float) -> bool:
        """Wait until every queued item has been handled; False on timeout (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._items or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._hurry = True  # no lingering for a batch: someone is waiting
                self._cond.notify()
                self._idle.wait(left)
        return True

    def pending(self) -> int:
        with self._cond:
            return len(self._items) + (1 if self._busy else 0)

    def close(self) -> None:
        """Finish the queue for up to `grace` seconds, then stop; what is left is counted as dropped."""
        if self._pid != _pid:
            return
        self.flush(self.grace)
        with self._cond:
            self._closing = True
            left = len(self._items)
            self._items.clear()
            self._cond.notify_all()
        self._stopped.set()  # interrupts a handler's backoff
        for _ in range(left):
            metrics.background_dropped(self.name, "shutdown")
        if self._thread is not None:
            self._thread.join(timeout=self.grace + 10)
