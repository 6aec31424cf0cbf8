"""The gunicorn worker `ci-broker serve` runs: gthread, with each request read whole before a thread
sees it.

gunicorn's gthread worker hands a connection to a thread, which then blocks reading the request,
so as many slow clients as there are threads (one byte, or a partial header block, then nothing)
take a worker offline. Here the worker's event loop, which gthread already runs for accepting and
for kept-alive connections, also reads every request, without blocking, into a
`broker.framing.RequestBuffer`; only once the request is whole does a thread get it, with every
byte already in memory, as behind a buffering proxy. A connection costs a socket and its buffer,
never a thread, until its request has arrived, and is dropped if that takes too long:

- `HEADER_TIMEOUT` from the connection's start (for a kept-alive connection, from the first byte
  of its next request) to the end of the header block, then `BODY_TIMEOUT` for the body: a
  request that has started arriving is answered 408, a connection that sent nothing is closed;
- a header block over `HEAD_LIMIT` or a body over `BODY_LIMIT` bytes is answered 413 at once;
- `worker_connections` (see broker.server) connections per worker: at the limit, the oldest
  unfinished request is shed (503) to make room for each new connection;
- once the worker is stopping, `STOP_TIMEOUT` at most for any request still arriving (503).

A thread's socket has a timeout (`IO_TIMEOUT`) for writing the response to a client that does not
read it. A connection that ends after its response lingers in the loop to let the response out
(gthread's own lingering close would hold the loop for up to 2 s per connection).

Why not gunicorn's gevent worker: a greenlet per connection still needs deadlines (that worker
bounds the header block by the keep-alive timeout, never the body), and gevent would patch the
sockets and ssl of the cloud SDKs after the master had imported them. Threads stay as they were
tuned (bench/RESULTS.md); only reading moves to the loop.

The worker is built on gunicorn 27's gthread (`ThreadWorker`, `TConn`) and overrides only how a
connection reaches a thread; pyproject.toml pins gunicorn to that major version and
tests/resilience/test_slow_clients.py checks the whole arrangement against a real server.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import selectors
import socket
import threading
import time
from functools import partial
from typing import Any

from gunicorn.workers.gthread import TConn, ThreadWorker

from broker import requestid
from broker.framing import BODY_LIMIT, HEAD_LIMIT, Progress, RequestBuffer

HEADER_TIMEOUT = 10.0  # seconds to the end of the header block
BODY_TIMEOUT = 10.0  # seconds from there to the end of the body
IO_TIMEOUT = 10.0  # a thread's socket: writing the response, or reading past what was buffered
LINGER_TIMEOUT = 2.0  # after the last response, as gunicorn's own lingering close
LINGER_BYTES = 64 * 1024
STOP_TIMEOUT = 2.0  # once the worker is stopping, what is left of any request's deadline
_SWEEP_INTERVAL = 0.5  # how often deadlines are checked; the loop wakes at least once a second
_RECV_BYTES = 64 * 1024

log = logging.getLogger("broker.worker")


class BufferingThreadWorker(ThreadWorker):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reading: dict[BufferedConn, None] = {}  # connections whose request is arriving
        self.lingering: dict[socket.socket, tuple[float, int]] = {}  # closing: deadline, bytes left
        self._next_sweep = 0.0
        self._stopping = False
        self._stop_by = float("inf")  # no request's deadline goes past it
        self._loop_thread = 0

    @classmethod
    def check_config(cls, cfg: Any, logger: Any) -> None:
        # The loop reads raw bytes: TLS, HTTP/2 and the PROXY protocol would need reading too.
        if cfg.is_ssl or "h2" in cfg.http_protocols or cfg.proxy_protocol != "off":
            raise RuntimeError("BufferingThreadWorker serves plain HTTP/1.1 only")
        super().check_config(cfg, logger)

    def run(self) -> None:
        self._loop_thread = threading.get_ident()
        super().run()

    # -- how a connection reaches a thread -------------------------------------------------------

    def accept(self, listener: socket.socket) -> None:
        try:
            sock, client = listener.accept()
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                # Out of file descriptors or memory: free some rather than spin on the listener.
                log.warning("cannot accept a connection: %s", os.strerror(exc.errno))
                self._shed_oldest()
                return
            if exc.errno in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                return
            raise
        self.nr_conns += 1
        if self.nr_conns >= self.worker_connections:
            self._shed_oldest()
        self._read_request(BufferedConn(self, sock, client, listener.getsockname()))

    def _shed_oldest(self) -> None:
        """At the connection limit, the oldest unfinished request makes room for the new connection.

        gthread would stop accepting instead, and every new connection, health probes included,
        would wait in the listen queue behind the slow ones until their deadlines. Shedding the
        oldest means a client must open connections faster than others' requests complete (a few
        milliseconds) to crowd them out. A shed request gets 503, which clients retry.
        """
        if self.reading:
            conn = next(iter(self.reading))
            self._stop_reading(conn)
            dropped("connection_limit")
            if conn.request.data:
                self._refuse(conn, 503, "unavailable", "the server is at its connection limit; retry")
            else:
                self._close(conn)
        elif self.keepalived_conns:
            idle = self.keepalived_conns.popleft()
            assert isinstance(idle, BufferedConn)
            self.poller.unregister(idle.sock)
            self._close(idle)

    def on_client_socket_readable(self, conn: TConn, client: socket.socket) -> None:
        # A kept-alive connection's next request has started arriving.
        assert isinstance(conn, BufferedConn)  # every connection this worker accepts is one
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self._read_request(conn)

    def enqueue_req(self, conn: TConn) -> None:
        # gthread sends a kept-alive connection here when its last read took in the start of the
        # next request too (pipelining): that request is read whole like any other.
        assert isinstance(conn, BufferedConn)
        self._read_request(conn, _unreader(conn).take_buffered() if conn.parser else b"")

    def _read_request(self, conn: BufferedConn, received: bytes = b"") -> None:
        if conn.sock.gettimeout() != 0.0:
            conn.sock.setblocking(False)
        conn.request = RequestBuffer()
        conn.deadline = min(time.monotonic() + HEADER_TIMEOUT, self._stop_by)
        self.reading[conn] = None
        if received:
            self._advance(conn, conn.request.feed(received))
        else:
            # A kept-alive connection's next request is usually all there already: it is read
            # before the poller is asked to watch the socket, and then mostly never is.
            self._on_readable(conn)

    def _on_readable(self, conn: BufferedConn, _sock: Any = None) -> None:
        try:
            data = conn.sock.recv(_RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            self._watch(conn)
            return
        except OSError:
            data = b""
        if not data:  # the client closed or reset the connection
            self._stop_reading(conn)
            self._close(conn)
            return
        self._advance(conn, conn.request.feed(data))

    def _watch(self, conn: BufferedConn) -> None:
        if not conn.watched:
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_readable, conn))
            conn.watched = True

    def _advance(self, conn: BufferedConn, progress: Progress) -> None:
        request = conn.request
        if progress is Progress.MORE:
            self._watch(conn)
            if request.head_complete and not conn.body_started:
                conn.body_started = True
                conn.deadline = min(time.monotonic() + BODY_TIMEOUT, self._stop_by)
                if request.expects_continue:
                    _send(conn.sock, b"HTTP/1.1 100 Continue\r\n\r\n")
            return
        self._stop_reading(conn)
        if progress is Progress.WHOLE:
            conn.received = bytes(request.data)
            ThreadWorker.enqueue_req(self, conn)
        elif progress is Progress.MALFORMED_BODY:
            dropped("malformed_body")
            self._refuse(conn, 400, "invalid_request", "the request body's chunked framing is malformed")
        elif progress is Progress.HEAD_TOO_LARGE:
            dropped("headers_too_large")
            self._refuse(conn, 413, "payload_too_large", f"the request headers are over {HEAD_LIMIT} bytes")
        else:
            dropped("body_too_large")
            self._refuse(conn, 413, "payload_too_large", f"the body is over {BODY_LIMIT} bytes")

    def _stop_reading(self, conn: BufferedConn) -> None:
        del self.reading[conn]
        if conn.watched:
            self.poller.unregister(conn.sock)
            conn.watched = False
        conn.body_started = False

    # -- deadlines, refusals and closing ----------------------------------------------------------

    def murder_pending(self) -> None:
        # gthread calls this on every turn of its loop, including while it shuts down.
        super().murder_pending()
        now = time.monotonic()
        if not self.alive and not self._stopping:
            # A graceful stop waits for in-flight requests, not for slow clients to finish.
            self._stopping = True
            self._stop_by = now + STOP_TIMEOUT
            for conn in self.reading:
                conn.deadline = min(conn.deadline, self._stop_by)
        if now < self._next_sweep:
            return
        self._next_sweep = now + _SWEEP_INTERVAL
        for conn in [c for c in self.reading if c.deadline <= now]:
            started = bool(conn.request.data)
            phase = "body" if conn.body_started else "headers"
            self._stop_reading(conn)
            dropped(f"{phase}_timeout")
            if started and self._stopping:
                self._refuse(conn, 503, "unavailable", "the server is shutting down; retry")
            elif started:
                seconds = BODY_TIMEOUT if phase == "body" else HEADER_TIMEOUT
                self._refuse(
                    conn, 408, "request_timeout", f"the request {phase} did not arrive within {seconds:g} s"
                )
            else:
                self._close(conn)
        for sock in [s for s, (deadline, _) in self.lingering.items() if deadline <= now]:
            self._end_linger(sock)

    def _refuse(self, conn: BufferedConn, status: int, code: str, message: str) -> None:
        _send(conn.sock, refusal(status, code, message))
        self._close(conn, graceful=True)

    def _close(self, conn: BufferedConn, graceful: bool = False) -> None:
        self.nr_conns -= 1
        conn.close(graceful=graceful)

    def linger(self, sock: socket.socket) -> None:
        """Let a closing connection's last response out before the socket closes.

        Closing a socket with unread bytes from the client resets the connection, which can
        destroy the response in flight; so the write side is shut and what the client still
        sends is read and discarded until it closes too, for at most LINGER_TIMEOUT.
        """
        try:
            sock.setblocking(False)
            sock.shutdown(socket.SHUT_WR)
            self.poller.register(sock, selectors.EVENT_READ, self._drain)
        except (OSError, ValueError, KeyError):
            sock.close()
            return
        self.lingering[sock] = (time.monotonic() + LINGER_TIMEOUT, LINGER_BYTES)

    def _drain(self, sock: socket.socket) -> None:
        deadline, left = self.lingering[sock]
        try:
            data = sock.recv(left)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        left -= len(data)
        if not data or left <= 0:  # closed by the client, or more than it has reason to send
            self._end_linger(sock)
        else:
            self.lingering[sock] = (deadline, left)

    def _end_linger(self, sock: socket.socket) -> None:
        del self.lingering[sock]
        self.poller.unregister(sock)
        sock.close()

    def in_loop(self) -> bool:
        return threading.get_ident() == self._loop_thread


class BufferedConn(TConn):
    """gthread's connection, plus the request being read and its deadline."""

    def __init__(self, worker: BufferingThreadWorker, sock: socket.socket, client: Any, server: Any) -> None:
        super().__init__(worker.cfg, sock, client, server)  # leaves the socket non-blocking
        self.worker = worker
        self.request = RequestBuffer()
        self.received = b""  # the whole request, for the thread
        self.deadline = 0.0
        self.body_started = False
        self.watched = False  # registered with the worker's poller for reading
        self.data_ready = True  # gthread's thread must not wait for data: it is all here

    def init(self) -> None:
        # In the thread, after gthread made the socket blocking: gunicorn's parser reads the
        # request from memory; the socket only takes the response, within IO_TIMEOUT.
        super().init()
        self.sock.settimeout(IO_TIMEOUT)
        if self.received:
            _unreader(self).unread(self.received)
            self.received = b""

    def close(self, graceful: bool = False) -> None:
        if graceful and self.worker.in_loop():
            self.worker.linger(self.sock)
        else:
            super().close(graceful)


def _unreader(conn: TConn) -> Any:
    """The HTTP/1.1 parser's buffer (this worker serves no HTTP/2 or uwsgi: gunicorn's defaults)."""
    return getattr(conn.parser, "unreader")  # noqa: B009 - the parser's type is a union


def refusal(status: int, code: str, message: str) -> bytes:
    """A complete HTTP response in the broker's error shape, for a request the app never saw."""
    request_id = requestid.new_id()
    body = json.dumps({"error": code, "message": message, "request_id": request_id}).encode()
    reason = {
        400: "Bad Request",
        408: "Request Timeout",
        413: "Content Too Large",
        503: "Service Unavailable",
    }[status]
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"X-Request-Id: {request_id}\r\n"
        "Cache-Control: no-store\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


def _send(sock: socket.socket, data: bytes) -> None:
    # From the loop, never blocking: a few hundred bytes fit any socket buffer not already full,
    # and a client that filled it with unread responses does not get another.
    try:
        sock.send(data)
    except OSError:
        pass


_dropped: Any = None


def dropped(reason: str) -> None:
    """Count a request the server refused or dropped before the app saw it."""
    global _dropped
    if _dropped is None:
        from prometheus_client import Counter

        _dropped = Counter(
            "ci_broker_requests_dropped",
            "Requests the server refused before the app saw them, by reason: headers_timeout, "
            "body_timeout, headers_too_large, body_too_large, malformed_body, connection_limit.",
            ["reason"],
        )
    _dropped.labels(reason).inc()
