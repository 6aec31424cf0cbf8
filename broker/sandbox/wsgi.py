"""Serve a WSGI app on a free loopback port in a background thread."""

from __future__ import annotations

import ssl
import threading
from typing import Any

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *args: Any, **kwargs: Any) -> None:  # the demo prints its own story
        pass


class LocalServer:
    def __init__(
        self,
        app: Any,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
        handler: type[WSGIRequestHandler] = _QuietHandler,
    ) -> None:
        self.app = app
        self._host, self._port = host, port
        self._ssl_context = ssl_context
        self._handler = handler
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "call start() first"
        scheme = "https" if self._ssl_context else "http"
        host = "localhost" if self._ssl_context else self._host
        return f"{scheme}://{host}:{self._server.server_port}"

    def start(self) -> LocalServer:
        self._server = make_server(
            self._host,
            self._port,
            self.app,
            threaded=True,
            request_handler=self._handler,
            ssl_context=self._ssl_context,
        )
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            daemon=True,
            name=f"local-server-{self._server.server_port}",
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
