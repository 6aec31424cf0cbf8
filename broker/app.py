"""The HTTP API (contract section 4): a Flask app factory that parses requests and renders answers.

The exchange itself is `broker.exchange.Broker.exchange`; this module hands it an `HttpExchange`
(which parses the bearer token and the JSON body when the flow asks) and renders what comes back.
Every refusal is a `BrokerError` rendered as one JSON shape; nothing else reaches the caller.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from broker import audit, discovery, metrics, requestid, strictjson
from broker.config import Config
from broker.errors import (
    BrokerError,
    InvalidRequest,
    InvalidToken,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from broker.exchange import Ask, Broker, Granted
from broker.service import build_broker
from broker.sessions import is_refresh_token
from broker.verify import MAX_TOKEN_CHARS

log = logging.getLogger("broker.app")

MAX_BODY_BYTES = 4 * 1024
MAX_DURATION = 43200
MAX_REFRESH_HEADER = 128
_BEARER = re.compile(r"Bearer +([^ ]+) *", re.IGNORECASE)

api = Blueprint("api", __name__)


def create_app(config: Config, *, broker: Broker | None = None, metrics_route: bool = True) -> Flask:
    """The broker's WSGI app. `metrics_route=False` when `/metrics` is served by a listener of its
    own (`serve --metrics-bind`): the app then has no such route, however the path is spelled."""
    app = Flask("broker")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.extensions["broker"] = broker or build_broker(config)
    app.extensions["issuer_documents"] = discovery.documents(config.server)
    app.register_blueprint(api)
    app.register_error_handler(BrokerError, _render_broker_error)
    app.register_error_handler(HTTPException, _render_http_error)
    app.register_error_handler(Exception, _render_unexpected)
    metrics.instrument(app, route=metrics_route)
    app.wsgi_app = requestid.RequestIds(app.wsgi_app)  # type: ignore[method-assign]
    return app


def _broker() -> Broker:
    broker: Broker = current_app.extensions["broker"]
    return broker


# -- the exchange ---------------------------------------------------------------------------------


@api.post("/v1/exchange")
def exchange() -> Response:
    granted = _broker().exchange(HttpExchange(request.environ))
    return json_response(granted_body(granted))


def granted_body(granted: Granted) -> dict[str, Any]:
    body = {
        "role": granted.role.name,
        "cloud": granted.role.cloud,
        "expires_at": audit.rfc3339(granted.issued.expires_at),
        "credentials": granted.issued.credentials,
    }
    if granted.session is not None:
        body["session"] = {
            "id": granted.session.id,
            "refresh_token": granted.session.refresh_token,
            "expires_at": audit.rfc3339(granted.session.expires_at),
        }
    return body


class HttpExchange:
    """One HTTP request as the exchange flow sees it (`broker.exchange.ExchangeRequest`).

    The WSGI environ is read directly: each access through Flask's request proxy costs more than
    the lookup it stands for.
    """

    def __init__(self, environ: dict[str, Any]) -> None:
        self.environ = environ
        self.client: str | None = environ.get("REMOTE_ADDR")
        self.request_id: str = environ[requestid.ENVIRON_KEY]
        self.client_request_id: str | None = environ.get(requestid.CLIENT_ENVIRON_KEY)

    def bearer_token(self) -> str:
        return bearer_token(self.environ)

    def ask(self) -> Ask:
        return exchange_body(self.environ)


# -- sessions: refresh and revoke (contract section 8) ---------------------------------------------


@api.post("/v1/refresh")
def refresh() -> Response:
    granted = _broker().refresh(HttpSessionRequest(request.environ))
    return json_response(granted_body(granted))


@api.post("/v1/revoke")
def revoke() -> Response:
    _broker().revoke(HttpSessionRequest(request.environ))
    return json_response({})


class HttpSessionRequest:
    """A refresh or revoke as the flow sees it (`broker.exchange.SessionRequest`)."""

    def __init__(self, environ: dict[str, Any]) -> None:
        self.environ = environ
        self.client: str | None = environ.get("REMOTE_ADDR")
        self.request_id: str = environ[requestid.ENVIRON_KEY]
        self.client_request_id: str | None = environ.get(requestid.CLIENT_ENVIRON_KEY)

    def refresh_token(self) -> str:
        header = self.environ.get("HTTP_AUTHORIZATION", "")
        # A refresh token is 49 characters; anything much longer is not one (a CI token, say),
        # and is refused like any other malformed refresh token, never as a payload error.
        match = _BEARER.fullmatch(header) if len(header) <= MAX_REFRESH_HEADER else None
        token = match.group(1) if match else ""
        if not is_refresh_token(token):
            raise InvalidToken(
                "an Authorization: Bearer <refresh token> header is required (the session's "
                "refresh_token; CI tokens go to /v1/exchange)",
                reason="no bearer token" if not header else "malformed refresh token",
            )
        return token

    def bearer_token(self) -> str:
        return bearer_token(self.environ)

    def duration(self) -> int | None:
        body = json_body(self.environ)
        unknown = set(body) - {"duration"}
        if unknown:
            raise InvalidRequest(f"unknown field(s): {', '.join(sorted(k[:40] for k in unknown))}")
        return duration_field(body)


def json_response(body: dict[str, Any], status: int = 200) -> Response:
    # Flask's jsonify sorts keys and looks up the app's JSON provider on every call; the bodies
    # here are fixed shapes of strings.
    return Response(strictjson.dumps(body), status=status, mimetype="application/json")


def bearer_token(environ: dict[str, Any]) -> str:
    header = environ.get("HTTP_AUTHORIZATION", "")
    if len(header) > MAX_TOKEN_CHARS + 64:
        raise PayloadTooLarge(f"token longer than {MAX_TOKEN_CHARS} characters")
    match = _BEARER.fullmatch(header)
    if not match:
        raise InvalidToken(
            "an Authorization: Bearer <CI OIDC token> header is required", reason="no bearer token"
        )
    return match.group(1)


def exchange_body(environ: dict[str, Any]) -> Ask:
    body = json_body(environ)
    unknown = set(body) - {"role", "duration"}
    if unknown:
        raise InvalidRequest(f"unknown field(s): {', '.join(sorted(k[:40] for k in unknown))}")
    role = body.get("role")
    if not isinstance(role, str) or not role or len(role) > 256:
        raise InvalidRequest("role must be a non-empty string")
    return Ask(role=role, duration=duration_field(body))


def duration_field(body: dict[str, Any]) -> int | None:
    duration = body.get("duration")
    if duration is not None and (
        isinstance(duration, bool) or not isinstance(duration, int) or not 1 <= duration <= MAX_DURATION
    ):
        raise InvalidRequest(f"duration must be an integer number of seconds from 1 to {MAX_DURATION}")
    return duration


def json_body(environ: dict[str, Any]) -> dict[str, Any]:
    """The request's JSON object body, refused unless it is UTF-8 `application/json`."""
    # The exact spelling every client sends skips werkzeug's header parsing; any other is parsed.
    if environ.get("CONTENT_TYPE") != "application/json":
        if request.mimetype != "application/json":
            raise UnsupportedMediaType("the body must be application/json")
        charset = request.mimetype_params.get("charset", "utf-8").lower()
        if charset not in ("utf-8", "utf8"):
            raise UnsupportedMediaType("the body must be UTF-8 JSON")
    try:
        body = strictjson.loads(request_body(environ))
    except ValueError as exc:
        raise InvalidRequest(f"the body is not valid JSON: {exc}"[:200]) from None
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    return body


def request_body(environ: dict[str, Any]) -> bytes:
    """The body, refused if larger than MAX_BODY_BYTES."""
    declared = environ.get("CONTENT_LENGTH", "")
    # A plain Content-Length (what every client sends) is read directly: werkzeug's stream
    # wrappers cost more than the rest of the body checks together.
    if 0 < len(declared) <= 9 and declared.isascii() and declared.isdigit():
        length = int(declared)
        if length > MAX_BODY_BYTES:
            raise PayloadTooLarge(f"the body is larger than {MAX_BODY_BYTES} bytes")
        data: bytes = environ["wsgi.input"].read(length)
        if len(data) != length:
            raise InvalidRequest("the body is shorter than its Content-Length")
        return data
    try:
        data = request.get_data(cache=False)
    except RequestEntityTooLarge:
        raise PayloadTooLarge(f"the body is larger than {MAX_BODY_BYTES} bytes") from None
    except HTTPException as exc:  # a truncated or malformed chunked body
        raise InvalidRequest(f"the body could not be read: {exc.name}") from None
    # werkzeug cuts a chunked body (no Content-Length) at the limit without complaint; one that
    # fills it was longer.
    if len(data) >= MAX_BODY_BYTES and request.content_length is None:
        raise PayloadTooLarge(f"the body is larger than {MAX_BODY_BYTES} bytes")
    return data


# -- the broker as an OIDC issuer, and health -----------------------------------------------------


@api.get("/.well-known/openid-configuration")
def openid_configuration() -> Response:
    return _issuer_document(discovery.DISCOVERY_PATH)


@api.get("/.well-known/jwks.json")
def jwks_document() -> Response:
    return _issuer_document(discovery.JWKS_PATH)


def _issuer_document(path: str) -> Response:
    # Rendered once at start-up: the same bytes `ci-broker discovery` writes for static hosting.
    response = Response(current_app.extensions["issuer_documents"][path], mimetype="application/json")
    response.cache_control.public = True
    response.cache_control.max_age = 300
    return response


@api.get("/healthz")
def healthz() -> Response:
    return jsonify(status="ok")


@api.get("/readyz")
def readyz() -> tuple[Response, int]:
    ready, providers = _broker().ready()
    return jsonify(status="ready" if ready else "not ready", providers=providers), 200 if ready else 503


# -- errors ---------------------------------------------------------------------------------------
# The exchange flow has already written the audit event of any refusal it raised; these only render.


def _error_response(status: int, code: str, message: str) -> Response:
    return json_response({"error": code, "message": message, "request_id": requestid.current()}, status)


def _render_broker_error(exc: BrokerError) -> Response:
    response = _error_response(exc.status, exc.code, exc.message)
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response


def _render_http_error(exc: HTTPException) -> Response:
    if isinstance(exc, RequestEntityTooLarge):
        return _render_broker_error(PayloadTooLarge(f"the body is larger than {MAX_BODY_BYTES} bytes"))
    code = (exc.name or "error").lower().replace(" ", "_")
    return _error_response(exc.code or 500, code, exc.description or exc.name or "error")


def _render_unexpected(exc: Exception) -> Response:
    # The traceback goes to the operator's log; the caller gets no detail it could probe with.
    log.error("unexpected error in request %s: %s", requestid.current(), type(exc).__name__, exc_info=True)
    return _error_response(500, "internal_error", "internal error")
