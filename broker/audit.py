"""One audit event per exchange or refresh, granted or refused, and per alert, on its own logger.

Events carry who asked for what and why it was decided, the token's SHA-256 to correlate with the
CI system's logs, and never the token or any credential. Each is one line: JSON by default, or
CEF (`server.audit.format`, `broker.cef`); where lines go is `broker.auditsink`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from broker import cef
from broker.auditsink import direct_sink
from broker.errors import Blocked

if TYPE_CHECKING:
    from broker.config import ProviderConfig
    from broker.errors import BrokerError
    from broker.sessions import Session
    from broker.verify import VerifiedToken

AUDIT_LOGGER = "broker.audit"
_logger = logging.getLogger(AUDIT_LOGGER)
_encode = json.JSONEncoder(separators=(",", ":"), default=str).encode


def rfc3339(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_clock_text: tuple[int, str] = (0, "")


def _now_text() -> str:
    """The current UTC second in RFC 3339, formatted once per second rather than per event."""
    global _clock_text
    second = int(time.time())
    if _clock_text[0] != second:
        _clock_text = (second, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second)))
    return _clock_text[1]


@dataclass
class AuditEvent:
    """One exchange's (or refresh's) audit event, filled in as the request goes.

    Every field is always written (null when the request did not get that far), so each line has
    the same shape for whoever queries the log. Never a token or a credential: the token is named
    by its SHA-256 and its non-secret claims only.
    """

    type: str  # "exchange" | "refresh" | "revoke"
    request_id: str | None
    client: str | None
    client_request_id: str | None = None
    outcome: str = "refused"  # "granted" | "refused"; a revoke: "revoked" | "unchanged"
    error: str | None = None
    reason: str | None = None
    role: str | None = None
    cloud: str | None = None
    provider: str | None = None
    issuer: str | None = None
    subject: str | None = None
    jti: str | None = None
    token_sha256: str | None = None
    claims: dict[str, Any] = field(default_factory=dict)
    matched_rule: int | None = None
    expires_at: str | None = None
    session_id: str | None = None  # the broker session granted, refreshed or revoked (section 8)
    block_id: str | None = None
    # provider:repository-or-project id (`ProviderConfig.identity`), once the token verified.
    identity: str | None = None  # the runtime block that refused it (`ci-broker block`)

    @property
    def verified(self) -> bool:
        """Whether the CI token verified: only then do its claims, and the role asked for, count."""
        return self.provider is not None

    def record_token(self, verified: VerifiedToken) -> None:
        claims = verified.claims
        self.provider = verified.provider.name
        self.identity = verified.provider.identity(claims)
        self.issuer = claims["iss"]
        self.subject = claims["sub"]
        self.jti = claims.get("jti")
        self.token_sha256 = verified.sha256
        self.claims = verified.provider.schema.audit_claims(claims)

    def record_session(self, session: Session, provider: ProviderConfig | None) -> None:
        """A refresh or revoke: the identity is the one the session's first exchange verified."""
        claims = session.claims
        self.session_id = session.id
        self.role = session.role
        self.provider = session.provider
        self.issuer = session.issuer
        self.subject = claims.get("sub")
        self.jti = claims.get("jti")
        self.token_sha256 = session.token_sha256
        audited = provider.schema.audited if provider is not None else ()
        self.claims = {name: claims[name] for name in audited if name in claims}
        self.identity = provider.identity(claims) if provider is not None else None

    def granted(self, reason: str, expires_at: datetime) -> None:
        self.outcome, self.reason, self.expires_at = "granted", reason, rfc3339(expires_at)

    def refused(self, exc: BrokerError) -> None:
        self.outcome, self.error, self.reason = "refused", exc.code, exc.reason
        if isinstance(exc, Blocked):
            self.block_id = exc.block_id

    def failed(self, exc: BaseException) -> None:
        # The traceback goes to the operator's log (broker.app); the event names only the type.
        self.outcome, self.error, self.reason = "refused", "internal_error", type(exc).__name__

    def fields(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _FIELDS}


_FIELDS = tuple(f.name for f in fields(AuditEvent))


def json_line(event: Mapping[str, Any]) -> str:
    return _encode({"time": _now_text(), **event})


def cef_line(event: Mapping[str, Any]) -> str:
    return cef.line(event, time.time())


FORMATTERS = {"json": json_line, "cef": cef_line}
_format = json_line


def set_format(name: str) -> None:
    """`server.audit.format`: every event this process writes from now on, whatever its type."""
    global _format
    _format = FORMATTERS[name]


def emit(event: Mapping[str, Any]) -> None:
    """Write one audit event (an `AuditEvent`'s fields, or another event type's) as one line."""
    if not _logger.isEnabledFor(logging.INFO):
        return
    line = _format(event)
    sink = direct_sink(_logger)
    if sink is None:
        _logger.handle(_record(line))
        return
    try:
        sink.write_line(line)
    except Exception:  # reported as the handler's emit would report it; the exchange goes on
        sink.handleError(_record(line))


def _record(line: str) -> logging.LogRecord:
    # What Logger.info builds, less its walk up the stack for the caller's file and line: no audit
    # handler prints them, and the walk is a measurable part of an exchange's own CPU time.
    return _logger.makeRecord(AUDIT_LOGGER, logging.INFO, __file__, 0, line, (), None)
