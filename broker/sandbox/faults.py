"""What an unreliable cloud endpoint does, on demand: for tests of the broker's retries and 502s.

A local endpoint asks `Faults.take(path)` before handling a request; a queued fault either makes
it answer with an error status (in that cloud's own error shape) or stall before answering.
`ClosingServer` is a port that accepts connections and drops them, as a failing load balancer does.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Fault:
    path: str  # applies to requests whose path starts with this ("" for any)
    status: int | None = None  # answer with this status instead of handling the request
    retry_after: int | None = None  # with status: the Retry-After header to send
    delay: float = 0.0  # stall this long first (past the client's read timeout, for a timeout)


class Faults:
    def __init__(self) -> None:
        self._queue: list[Fault] = []
        self._lock = threading.Lock()

    def status(self, status: int, *, times: int = 1, path: str = "", retry_after: int | None = None) -> None:
        self._add(Fault(path=path, status=status, retry_after=retry_after), times)

    def stall(self, seconds: float, *, times: int = 1, path: str = "") -> None:
        self._add(Fault(path=path, delay=seconds), times)

    def clear(self) -> None:
        with self._lock:
            self._queue.clear()

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._queue)

    def take(self, path: str) -> Fault | None:
        """The next fault for `path`, removed from the queue; a stall is served here."""
        with self._lock:
            fault = next((f for f in self._queue if path.startswith(f.path)), None)
            if fault is not None:
                self._queue.remove(fault)
        if fault is not None and fault.delay:
            time.sleep(fault.delay)
        return fault

    def _add(self, fault: Fault, times: int) -> None:
        with self._lock:
            self._queue.extend([fault] * times)


class InFlight:
    """The requests an endpoint is serving. A request a fault stalls is recorded by the endpoint
    when it finishes, perhaps long after its caller gave up and its test ended: a later test that
    counts calls waits for none to be in flight first (`settle`)."""

    def __init__(self) -> None:
        self._count = 0
        self._idle = threading.Condition()

    @contextmanager
    def serving(self) -> Iterator[None]:
        with self._idle:
            self._count += 1
        try:
            yield
        finally:
            with self._idle:
                self._count -= 1
                self._idle.notify_all()

    def settle(self, timeout: float = 10.0) -> None:
        with self._idle:
            if not self._idle.wait_for(lambda: self._count == 0, timeout):
                raise TimeoutError(f"still serving {self._count} request(s) after {timeout} s")


class ClosingServer:
    """Accepts TCP connections on 127.0.0.1 and closes each at once; counts them."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.1)  # so stop() is noticed: close() does not wake a blocked accept()
        self.port = int(self._sock.getsockname()[1])
        self.connections = 0
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True, name=f"closing-{self.port}")

    def _serve(self) -> None:
        while not self._stopped.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            conn.close()

    def start(self) -> ClosingServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=2)
        self._sock.close()

    def __enter__(self) -> ClosingServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
