"""`serve --metrics-bind HOST:PORT`: `/metrics` on a listener of its own, in the gunicorn master.

The Prometheus convention: metrics on a port that only the scraper can reach (a NetworkPolicy
can say so; an ingress rule on the path cannot, since `//metrics`, `/%6detrics` and an
absolute-form request line all reach `/metrics` on the main port). Served by a thread in the
gunicorn master, which handles no requests of its own, from the workers' shared multiprocess
directory: a scrape needs no worker and is not slowed by load on the main port.

The master forks workers while this thread runs, so the thread keeps to what survives a fork:
the broker's metric objects are built before it starts (their lock is never held at a fork), it
writes nothing but through `logging` (whose locks a forked child resets), and each worker closes
its inherited copy of the listening socket.
Clients are bounded: `MAX_CLIENTS` at a time (more are closed at once), each with a socket
timeout of `CLIENT_TIMEOUT`.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
from http.server import BaseHTTPRequestHandler
from typing import Any

from broker import metrics

MAX_CLIENTS = 4
CLIENT_TIMEOUT = 10.0
PATH = "/metrics"

log = logging.getLogger("broker.metricslistener")


def parse_bind(value: str) -> tuple[str, int]:
    """HOST:PORT (IPv6 in brackets) as (host, port); ValueError with a message otherwise."""
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return host, int(port)


class MetricsListener:
    """Binds at once (so a port in use fails `serve` before it starts); serves after `start`."""

    def __init__(self, bind: str) -> None:
        host, port = parse_bind(bind)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.server = _Server((host, port), family)
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        return self.server.server_address[:2]  # type: ignore[return-value]

    def start(self) -> None:
        metrics.render()  # builds the metric objects here, before the thread can race a fork
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.5}, name="metrics", daemon=True
        )
        self._thread.start()

    def close_inherited(self) -> None:
        """In a forked worker: the listening socket is the master's to serve, not the worker's."""
        self.server.socket.close()


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 16

    def __init__(self, address: tuple[str, int], family: socket.AddressFamily) -> None:
        self.address_family = family
        self.slots = threading.BoundedSemaphore(MAX_CLIENTS)
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


class _Handler(BaseHTTPRequestHandler):
    timeout = CLIENT_TIMEOUT
    server_version = "ci-broker"
    sys_version = ""

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def _answer(self, body: bool) -> None:
        if self.path.split("?", 1)[0] != PATH:
            self._send(404, "text/plain; charset=utf-8", b"not found\n", body)
            return
        from prometheus_client import CONTENT_TYPE_LATEST

        try:
            page = metrics.render()
        except Exception:
            log.exception("rendering the metrics failed")
            self._send(500, "text/plain; charset=utf-8", b"metrics unavailable\n", body)
            return
        self._send(200, CONTENT_TYPE_LATEST, page, body)

    def _send(self, status: int, content_type: str, payload: bytes, body: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if body:
            self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a line per scrape would be noise
