"""Request ids: a fresh one for every request, on every response and in every log line.

The id is always the broker's own, so no two audit events can share one. A caller's
`X-Request-Id`, if it is printable and short, is kept beside it as `client_request_id` (in the
audit event), so a CI job's own correlation id still finds its exchange.

A WSGI wrapper rather than Flask before/after-request hooks, which cost more than the rest of
this module on every request. It also marks every response `Cache-Control: no-store` unless the
view chose its own caching (the issuer documents do): exchange answers carry credentials.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable
from typing import Any

from flask import has_request_context, request

ENVIRON_KEY = "ci_broker.request_id"
CLIENT_ENVIRON_KEY = "ci_broker.client_request_id"
# What a caller's id may be to be recorded: printable ASCII without spaces, bounded.
CLIENT_REQUEST_ID = re.compile(r"[!-~]{1,128}")


def current() -> str | None:
    """The id of the request being handled, or None outside a request."""
    return request.environ.get(ENVIRON_KEY) if has_request_context() else None


def new_id() -> str:
    # Not a secret, only unique: 96 random bits from the random module, which reseeds itself in
    # every forked worker, spare the system call that `secrets` makes for each request.
    return f"{random.getrandbits(96):024x}"


class RequestIds:
    def __init__(self, wsgi_app: Callable[..., Iterable[bytes]]) -> None:
        self.wsgi_app = wsgi_app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        request_id = new_id()
        environ[ENVIRON_KEY] = request_id
        incoming = environ.get("HTTP_X_REQUEST_ID")
        if incoming and CLIENT_REQUEST_ID.fullmatch(incoming):
            environ[CLIENT_ENVIRON_KEY] = incoming

        def tagged(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            headers.append(("X-Request-Id", request_id))
            if not any(name.lower() == "cache-control" for name, _ in headers):
                headers.append(("Cache-Control", "no-store"))
            return start_response(status, headers, exc_info)

        return self.wsgi_app(environ, tagged)
