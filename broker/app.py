"""The HTTP API (contract section 4): a Flask app factory and the exchange request path.

`exchange` reads top to bottom as the request: check the request's shape, verify the CI token,
evaluate the role policy, sign the broker's assertion and call the cloud, audit. Every refusal is
a `BrokerError` rendered as one JSON shape; nothing else reaches the caller.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from broker import audit, discovery, metrics, requestid, strictjson
from broker.assertion import ci_context
from broker.clouds import Grant
from broker.config import Config
from broker.errors import (
    AccessDenied,
    BrokerError,
    InvalidRequest,
    InvalidToken,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from broker.policy import Decision, evaluate
from broker.ratelimit import RateLimiter
from broker.requestid import RequestIds
from broker.service import Broker, build_broker
from broker.verify import MAX_TOKEN_CHARS, VerifiedToken

log = logging.getLogger("broker.app")

MAX_BODY_BYTES = 4 * 1024
MAX_DURATION = 43200
_BEARER = re.compile(r"Bearer +([^ ]+) *", re.IGNORECASE)

api = Blueprint("api", __name__)


def create_app(config: Config, *, broker: Broker | None = None) -> Flask:
    app = Flask("broker")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.extensions["broker"] = broker or build_broker(config)
    app.extensions["ratelimit"] = RateLimiter.for_config(config)
    app.extensions["issuer_documents"] = discovery.documents(config.server)
    app.register_blueprint(api)
    app.register_error_handler(BrokerError, _render_broker_error)
    app.register_error_handler(HTTPException, _render_http_error)
    app.register_error_handler(Exception, _render_unexpected)
    metrics.instrument(app)
    app.wsgi_app = RequestIds(app.wsgi_app)  # type: ignore[method-assign]
    return app


def _broker() -> Broker:
    return current_app.extensions["broker"]


# -- the exchange ---------------------------------------------------------------------------------


@api.post("/v1/exchange")
def exchange() -> Response:
    # The WSGI environ is read directly: each access through Flask's request proxy costs more
    # than the lookup it stands for.
    environ = request.environ
    extensions = current_app.extensions
    broker: Broker = extensions["broker"]
    limiter: RateLimiter = extensions["ratelimit"]
    client = environ.get("REMOTE_ADDR")
    event: dict[str, Any] = {"request_id": environ.get(requestid.ENVIRON_KEY), "client": client}
    g.audit_event = event
    limiter.check_client(client)  # before any parsing or crypto: floods stay cheap
    token = bearer_token(environ)
    role_name, duration = exchange_body(environ)
    event["role"] = role_name

    verified = broker.verifier.verify(token, admit=limiter.admit)
    record_token(event, verified)

    role = broker.config.roles.get(role_name)
    if role is None:
        decision = Decision(role_name, False, None, ())
    else:
        event["cloud"] = role.cloud
        decision = evaluate(
            role_name,
            role.rules,
            verified.provider.name,
            verified.provider.schema,
            verified.claims,
            trace=False,
        )
    event["matched_rule"] = decision.matched_rule
    if role is None or not decision.allowed:
        # An unknown role and a denied one look the same to the caller; the log tells them apart.
        raise AccessDenied("no rule of this role grants this token", reason=decision.summary())
    if duration is not None and role.max_duration is not None and duration > role.max_duration:
        raise InvalidRequest(f"duration must be at most {role.max_duration} for this role")

    context = ci_context(verified.provider.name, verified.claims, verified.provider.schema.neutral)
    grant = Grant(
        role=role.name,
        provider=verified.provider.name,
        claims=verified.claims,
        context=context,
        duration=duration,
        mint_assertion=lambda audience, extra: broker.signer.mint(role.name, audience, context, extra),
    )
    issued = broker.backends[role.name].issue(grant)

    expires_at = audit.rfc3339(issued.expires_at)
    event.update(outcome="granted", reason=decision.summary(), expires_at=expires_at)
    finish(event)
    return json_response(
        {"role": role.name, "cloud": role.cloud, "expires_at": expires_at, "credentials": issued.credentials}
    )


def json_response(body: dict[str, Any], status: int = 200) -> Response:
    # Flask's jsonify sorts keys and looks up the app's JSON provider on every call; the bodies
    # here are fixed shapes of strings.
    return Response(strictjson.dumps(body), status=status, mimetype="application/json")


def finish(event: dict[str, Any]) -> None:
    """An exchange has its outcome: write its audit event and count it, together."""
    audit.emit(event)
    metrics.exchange_finished(event, _broker().config.roles)


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


def exchange_body(environ: dict[str, Any]) -> tuple[str, int | None]:
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
    unknown = set(body) - {"role", "duration"}
    if unknown:
        raise InvalidRequest(f"unknown field(s): {', '.join(sorted(k[:40] for k in unknown))}")
    role = body.get("role")
    if not isinstance(role, str) or not role or len(role) > 256:
        raise InvalidRequest("role must be a non-empty string")
    duration = body.get("duration")
    if duration is not None and (
        isinstance(duration, bool) or not isinstance(duration, int) or not 1 <= duration <= MAX_DURATION
    ):
        raise InvalidRequest(f"duration must be an integer number of seconds from 1 to {MAX_DURATION}")
    return role, duration


def request_body(environ: dict[str, Any]) -> bytes:
    """The body, refused if larger than MAX_BODY_BYTES."""
    declared = environ.get("CONTENT_LENGTH", "")
    # A plain Content-Length (what every client sends) is read directly: werkzeug's stream
    # wrappers cost more than the rest of the body checks together.
    if 0 < len(declared) <= 9 and declared.isascii() and declared.isdigit():
        length = int(declared)
        if length > MAX_BODY_BYTES:
            raise PayloadTooLarge(f"the body is larger than {MAX_BODY_BYTES} bytes")
        data = environ["wsgi.input"].read(length)
        if len(data) != length:
            raise InvalidRequest("the body is shorter than its Content-Length")
        return data
    data = request.get_data(cache=False)
    # werkzeug cuts a chunked body (no Content-Length) at the limit without complaint; one that
    # fills it was longer.
    if len(data) >= MAX_BODY_BYTES and request.content_length is None:
        raise PayloadTooLarge(f"the body is larger than {MAX_BODY_BYTES} bytes")
    return data


def record_token(event: dict[str, Any], verified: VerifiedToken) -> None:
    claims = verified.claims
    schema = verified.provider.schema
    event.update(
        provider=verified.provider.name,
        issuer=claims["iss"],
        subject=claims["sub"],
        jti=claims["jti"],
        token_sha256=verified.sha256,
        claims={name: claims[name] for name in schema.audited if name in claims},
    )


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


def _error_response(status: int, code: str, message: str) -> Response:
    return json_response({"error": code, "message": message, "request_id": requestid.current()}, status)


def _render_broker_error(exc: BrokerError) -> Response:
    event = g.get("audit_event")
    if event is not None:
        event.update(outcome="refused", error=exc.code, reason=exc.reason)
        finish(event)
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
    event = g.get("audit_event")
    if event is not None:
        event.update(outcome="refused", error="internal_error", reason=type(exc).__name__)
        finish(event)
    return _error_response(500, "internal_error", "internal error")
