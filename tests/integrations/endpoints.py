"""Small HTTP endpoints on 127.0.0.1 that stand in for what a CI runner provides.

- `OIDCRequestEndpoint` is GitHub's `ACTIONS_ID_TOKEN_REQUEST_URL`: it checks the request token
  and mints a job token for the requested audience (with the test issuer, in end-to-end tests).
- `ScriptedBroker` answers `/v1/exchange` with scripted responses, for the client's failure
  paths (unreachable, 401, 403, 429, 503, garbage) that a real broker cannot be made to give on
  demand. The success paths run against the real `ci-broker serve`.
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


class _Server:
    """A threaded HTTP server on an ephemeral loopback port, started and stopped by `with`."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.owner = self  # type: ignore[attr-defined]
        # A short poll keeps shutdown (each test's teardown) from waiting half a second.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


class _Quiet(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args) -> None:
        pass

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class OIDCRequestEndpoint(_Server):
    """GitHub's job token endpoint: GET ?audience=AUD with `Authorization: bearer REQUEST_TOKEN`."""

    def __init__(self, mint: Callable[[str], str]) -> None:
        self.mint = mint
        self.request_token = "rt-" + secrets.token_urlsafe(24)
        self.audiences: list[str] = []
        self.issued: list[str] = []
        super().__init__(_OIDCHandler)

    @property
    def request_url(self) -> str:
        # GitHub's URL already carries a query string; the client must append with "&".
        return f"{self.url}/token?api-version=2.0"


class _OIDCHandler(_Quiet):
    def do_GET(self) -> None:
        owner: OIDCRequestEndpoint = self.server.owner  # type: ignore[attr-defined]
        query = parse_qs(urlsplit(self.path).query)
        if self.headers.get("Authorization", "").lower() != f"bearer {owner.request_token}".lower():
            self._send(401, b'{"message":"bad request token"}')
            return
        audience = query.get("audience", [""])[0]
        owner.audiences.append(audience)
        token = owner.mint(audience)
        owner.issued.append(token)
        self._send(200, json.dumps({"count": len(token), "value": token}).encode())


@dataclass
class Reply:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "application/json"})


@dataclass
class Seen:
    authorization: str
    content_type: str
    body: bytes


class ScriptedBroker(_Server):
    """Answers each POST /v1/exchange with the next scripted reply (the last one repeats)."""

    def __init__(self, *replies: Reply) -> None:
        self.replies = list(replies)
        self.seen: list[Seen] = []
        self.requests = 0  # every request, of any method (seen: the exchanges)
        super().__init__(_BrokerHandler)

    @staticmethod
    def error(status: int, code: str, message: str, request_id: str = "req-0123") -> Reply:
        body = {"error": code, "message": message, "request_id": request_id}
        return Reply(
            status,
            json.dumps(body).encode(),
            {"Content-Type": "application/json", "X-Request-Id": request_id},
        )

    @staticmethod
    def granted(cloud: str, credentials: dict[str, str], role: str = "deploy") -> Reply:
        body = {
            "role": role,
            "cloud": cloud,
            "expires_at": "2030-01-01T00:00:00Z",
            "credentials": credentials,
        }
        return Reply(200, json.dumps(body).encode())


class _BrokerHandler(_Quiet):
    def do_GET(self) -> None:
        self.server.owner.requests += 1  # type: ignore[attr-defined]
        self._send(200, b'{"status":"ok"}')

    def do_POST(self) -> None:
        owner: ScriptedBroker = self.server.owner  # type: ignore[attr-defined]
        owner.requests += 1
        length = int(self.headers.get("Content-Length", "0"))
        owner.seen.append(
            Seen(
                self.headers.get("Authorization", ""),
                self.headers.get("Content-Type", ""),
                self.rfile.read(length),
            )
        )
        reply = owner.replies[min(len(owner.seen), len(owner.replies)) - 1]
        self._send(reply.status, reply.body, reply.headers)
