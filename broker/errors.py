"""The refusals the broker can give, each tied to one HTTP status and error code.

Every failure on the request path is raised as one of these, so the view renders one JSON shape
and nothing else can leak out as a 500 with a stack trace. `message` is shown to the caller;
`reason` is for the operator's audit log only (it may name the claim that failed and why).
Neither ever contains a token or a credential.
"""

from __future__ import annotations


class BrokerError(Exception):
    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or message


class InvalidRequest(BrokerError):
    status = 400
    code = "invalid_request"


class InvalidToken(BrokerError):
    status = 401
    code = "invalid_token"


class AccessDenied(BrokerError):
    """Every 403 says the same to the caller, whatever refused it (no rule, a deny rule, no such
    role, a block, a claim a session tag needs): telling them apart would let a caller learn which
    roles exist and how far its token got. The audit `reason` keeps the detail."""

    status = 403
    code = "access_denied"
    MESSAGE = "no rule of this role grants this token"

    def __init__(self, *, reason: str) -> None:
        super().__init__(self.MESSAGE, reason=reason)


class Blocked(AccessDenied):
    """A runtime block (`ci-broker block`) matched: the caller sees the same 403 as any other."""

    def __init__(self, block_id: str, block_reason: str) -> None:
        super().__init__(reason=f"block {block_id}: {block_reason}")
        self.block_id = block_id


class PayloadTooLarge(BrokerError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(BrokerError):
    status = 415
    code = "unsupported_media_type"


class RateLimited(BrokerError):
    status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: int, reason: str | None = None) -> None:
        super().__init__(message, reason=reason)
        self.retry_after = retry_after


class UpstreamError(BrokerError):
    status = 502
    code = "upstream_error"


class Unavailable(BrokerError):
    status = 503
    code = "unavailable"
