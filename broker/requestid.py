"""Request ids: the caller's `X-Request-Id` if well-formed, else a fresh one, on every response.

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

REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{8,64}")
ENVIRON_KEY = "ci_broker.request_id"


def current() -> str | None:
    """The id of the request being handled, or None outside a request."""
    return request.environ.get(ENVIRON_KEY) if has_request_context() else None


def new_id() -> str:
    # Not a secret (any caller may choose its own), only unique: 96 random bits from the random
    # module, which reseeds itself in every forked worker, spare the system call that `secrets`
    # makes for each request.
    return f"{random.getrandbits(96):024x}"


class RequestIds:
    def __init__(self, wsgi_app: Callable[..., Iterable[bytes]]) -> None:
        self.wsgi_app = wsgi_app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        incoming = environ.get("HTTP_X_REQUEST_ID", "")
        request_id = incoming if REQUEST_ID.fullmatch(incoming) else new_id()
        environ[ENVIRON_KEY] = request_id

        def tagged(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            headers.append(("X-Request-Id", request_id))
            if not any(name.lower() == "cache-control" for name, _ in headers):
                headers.append(("Cache-Control", "no-store"))
            return start_response(status, headers, exc_info)

        return self.wsgi_app(environ, tagged)
