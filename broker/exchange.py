"""The exchange (contract section 4) as one flow, read top to bottom in `Broker.exchange`; beside
it the session's refresh and revoke (section 8), `Broker.refresh` and `Broker.revoke`.

    client limit -> token and body -> verify -> decide -> blocks -> the request against the role
        -> identity limit -> spend the token -> mint and issue -> start the role's session

    refresh: client limit -> refresh token and body -> its session, usable (not ended, not
        expired) -> the token not spent (else: end the session, alert) -> decide again on the
        recorded claims -> blocks
        -> the request against the role and the session -> identity and session limits
        -> rotate the refresh token -> mint and issue

- Verifying changes no state. The policy decision (deny rules, then allow rules; an unknown role is
  a denial like any other) needs none either, so it comes before anything is written. Runtime
  blocks (`ci-broker block`) are checked right after it, against this process's copy of them.
- Everything that can refuse a well-formed, permitted request for its shape (a duration the role
  does not allow) or for load (429) runs before the token is spent: a CI job may then retry with
  the same token, which matters to GitLab jobs that get one ID token each.
- The token is spent last, just before the cloud is called: a replayed token is refused there.
- One typed `AuditEvent` is filled in as the flow goes and written once, in `finally`, whatever the
  outcome; the exchange counters and the alert detectors (`broker.alerts`) are fed that same
  event. The HTTP layer (`broker.app`) only parses and renders.
- A refresh makes the exchange's decision again, on the claims the first exchange verified, with
  the policy and the blocks as they are now. Its refresh token is rotated (spent) only after every
  check has passed and just before the cloud is called, so nothing is issued unless the store
  recorded the rotation; if the cloud then fails, the rotation is undone and the caller may retry
  its token. A spent token presented again ends the session (someone holds a copy).

Everything a request needs (keys, SDK clients, compiled policy) was built at start-up by
`broker.service.build_broker`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from broker import audit, clouds, metrics
from broker.alerts import Alerts
from broker.assertion import AssertionSigner, ci_context
from broker.audit import AuditEvent
from broker.blocks import BlockList
from broker.config import Config, ProviderConfig, RoleConfig
from broker.errors import AccessDenied, BrokerError, InvalidRequest, InvalidToken, UpstreamError
from broker.jwks import KeyCache, KeyRefresher
from broker.ratelimit import RateLimiter
from broker.replay import ReplayStore
from broker.sessions import REFRESH_REUSE, REVOKED, Session, SessionGrant, Sessions, is_refresh_token
from broker.verify import TokenVerifier, VerifiedToken


@dataclass(frozen=True)
class Ask:
    """What the caller asks for in the body: a role, and optionally a shorter lifetime."""

    role: str
    duration: int | None


class ExchangeRequest(Protocol):
    """An exchange as the HTTP layer hands it over: parsing happens when the flow asks for it,
    so a malformed header or body is refused, audited and counted like every other refusal."""

    client: str | None
    request_id: str
    client_request_id: str | None

    def bearer_token(self) -> str: ...
    def ask(self) -> Ask: ...


class SessionRequest(Protocol):
    """A refresh or a revoke as the HTTP layer hands it over."""

    client: str | None
    request_id: str
    client_request_id: str | None

    def refresh_token(self) -> str:
        """A well-formed refresh token (InvalidToken otherwise)."""
        ...

    def bearer_token(self) -> str:
        """Whatever bearer token came (revoke answers 200 for any of them)."""
        ...

    def duration(self) -> int | None:
        """The body's optional `duration`."""
        ...


@dataclass(frozen=True)
class Granted:
    role: RoleConfig
    issued: clouds.Issued
    session: SessionGrant | None = None


@dataclass
class Broker:
    config: Config
    verifier: TokenVerifier
    signer: AssertionSigner
    backends: dict[str, clouds.Backend]
    limiter: RateLimiter
    replay: ReplayStore
    sessions: Sessions
    caches: dict[str, KeyCache]
    refresher: KeyRefresher
    blocks: BlockList
    alerts: Alerts
    extras: dict[str, Any] = field(default_factory=dict)

    def exchange(self, request: ExchangeRequest) -> Granted:
        event = AuditEvent("exchange", request.request_id, request.client, request.client_request_id)
        try:
            self.limiter.check_client(request.client)  # before any parsing or crypto: floods stay cheap
            token = request.bearer_token()
            ask = request.ask()
            event.role = ask.role

            verified = self.verifier.verify(token)
            event.record_token(verified)

            role, decision = self.config.decide(ask.role, verified.provider, verified.claims)
            event.matched_rule = decision.matched_rule
            event.cloud = role.cloud if role is not None else None
            if role is None or not decision.allowed:
                raise AccessDenied(reason=decision.summary())
            self.blocks.refuse_if_blocked(verified.provider, verified.claims, role.name)

            duration = requested_duration(role, ask.duration)
            self.admit_and_spend(verified)

            issued = self.issue(role, verified.provider, verified.claims, duration)
            session = self.start_session(role, verified, event)
            event.granted(decision.summary(), issued.expires_at)
            return Granted(role, issued, session)
        except BrokerError as exc:
            event.refused(exc)
            raise
        except Exception as exc:
            event.failed(exc)
            raise
        finally:
            self.record(event)

    def refresh(self, request: SessionRequest) -> Granted:
        with self.audited(
            AuditEvent("refresh", request.request_id, request.client, request.client_request_id)
        ) as event:
            self.limiter.check_client(request.client)
            token = request.refresh_token()
            duration = request.duration()

            presented = self.sessions.find(token)
            if presented is None:
                raise InvalidToken("the refresh token is not valid", reason="unknown refresh token")
            session = presented.session
            provider = self.config.providers.get(session.provider)
            event.record_session(session, provider)
            self.sessions.check_usable(session)
            if presented.spent:
                raise self.end_reused(session, event, "a spent refresh token was presented again")

            if provider is None or provider.issuer != session.issuer:
                raise AccessDenied(reason=f"provider {session.provider!r} is no longer configured")
            role, decision = self.config.decide(session.role, provider, session.claims)
            event.matched_rule = decision.matched_rule
            event.cloud = role.cloud if role is not None else None
            if role is None or not decision.allowed:
                raise AccessDenied(reason=decision.summary())
            self.blocks.refuse_if_blocked(provider, session.claims, role.name)

            duration = session_duration(role, duration, self.sessions.remaining(session))
            self.limiter.admit(provider, session.claims)
            self.limiter.admit_session(session.id)
            grant = self.sessions.rotate(presented)
            if grant is None:
                raise self.end_reused(session, event, "its refresh token was spent by a concurrent refresh")

            try:
                issued = self.issue(role, provider, session.claims, duration)
            except Exception:
                self.sessions.undo_rotation(presented, grant)  # so the job can retry its token
                raise
            event.granted(decision.summary(), issued.expires_at)
            return Granted(role, issued, grant)

    def revoke(self, request: SessionRequest) -> None:
        """End the session of any of its refresh tokens (RFC 7009: other tokens change nothing)."""
        with self.audited(
            AuditEvent("revoke", request.request_id, request.client, request.client_request_id)
        ) as event:
            self.limiter.check_client(request.client)
            token = request.bearer_token()
            event.outcome, event.reason = "unchanged", "not a refresh token the broker knows"
            presented = self.sessions.find(token) if is_refresh_token(token) else None
            if presented is not None:
                session = presented.session
                event.record_session(session, self.config.providers.get(session.provider))
                event.reason = f"session had already ended ({session.end_reason})"
                if self.sessions.end(session, REVOKED):
                    metrics.session_ended(REVOKED)
                    event.outcome, event.reason = "revoked", "session revoked by its holder"

    @contextmanager
    def audited(self, event: AuditEvent) -> Iterator[AuditEvent]:
        """The request's outcome on its audit event, written and counted once whatever happens
        (`exchange` spells the same out in its own try/finally)."""
        try:
            yield event
        except BrokerError as exc:
            event.refused(exc)
            raise
        except Exception as exc:
            event.failed(exc)
            raise
        finally:
            self.record(event)

    # -- the steps --------------------------------------------------------------------------------

    def admit_and_spend(self, verified: VerifiedToken) -> None:
        """Count the token against its identity's rate limit, then record its single use; refuse it
        if it was used before (on redis both are one round trip: `RateLimiter.admit_and_spend`)."""
        if not self.limiter.admit_and_spend(
            verified.provider, verified.claims, self.replay, verified.replay_key, verified.record_until
        ):
            metrics.replay_refused()
            jti = str(verified.claims.get("jti"))
            raise InvalidToken("token has already been used", reason=f"jti {jti[:100]!r} replayed")

    def issue(
        self, role: RoleConfig, provider: ProviderConfig, claims: Mapping[str, Any], duration: int | None
    ) -> clouds.Issued:
        """Sign the broker's assertion for the role and trade it with the role's cloud."""
        context = ci_context(provider.name, claims, provider.schema.neutral)
        grant = clouds.Grant(
            role=role.name,
            provider=provider.name,
            claims=claims,
            context=context,
            duration=duration,
            mint_assertion=lambda audience, extra: self.signer.mint(role.name, audience, context, extra),
        )
        start = time.perf_counter()
        try:
            issued = self.backends[role.name].issue(grant)
        except UpstreamError:
            metrics.upstream_finished(role.cloud, ok=False, seconds=time.perf_counter() - start)
            raise
        # Refusals other than the cloud's (a session tag whose claim is missing) are not upstream
        # latency: they happen before any call.
        metrics.upstream_finished(role.cloud, ok=True, seconds=time.perf_counter() - start)
        return issued

    def start_session(
        self, role: RoleConfig, verified: VerifiedToken, event: AuditEvent
    ) -> SessionGrant | None:
        """A role with `session_lifetime`: record the session the caller may refresh."""
        if not role.session_lifetime:
            return None
        session, grant = self.sessions.start(
            role=role.name,
            lifetime=role.session_lifetime,
            provider=verified.provider.name,
            issuer=verified.provider.issuer,
            claims=verified.claims,
            token_sha256=verified.sha256,
        )
        event.session_id = session.id
        return grant

    def end_reused(self, session: Session, event: AuditEvent, why: str) -> InvalidToken:
        """Someone holds a copy of the session's refresh token: raise the alert, end the session."""
        self.alerts.refresh_reuse(event, session_id=session.id)
        if self.sessions.end(session, REFRESH_REUSE):
            metrics.session_ended(REFRESH_REUSE)
        return InvalidToken(
            "the refresh token was already used; the session has been ended",
            reason=f"session {session.id}: {why}; session ended",
        )

    def record(self, event: AuditEvent) -> None:
        """A request has its outcome: write its audit event and count it, together."""
        audit.emit(event.fields())
        if event.type == "exchange":
            metrics.exchange_finished(event, self.config.roles)
        elif event.type == "refresh":
            metrics.refresh_finished(event, self.config.roles)
        self.alerts.observe(event)

    # -- lifecycle --------------------------------------------------------------------------------

    def ready(self) -> tuple[bool, dict[str, str]]:
        """Ready once every provider's keys have been fetched at least once."""
        states = {
            name: ("ok" if c.has_keys else f"no keys: {c.last_error or 'not fetched yet'}")
            for name, c in self.caches.items()
        }
        return all(c.has_keys for c in self.caches.values()), states

    def close(self) -> None:
        self.refresher.stop()
        self.blocks.close()
        self.alerts.close()


def requested_duration(role: RoleConfig, duration: int | None) -> int | None:
    """The caller's duration, refused with 400 outside what the role and its cloud allow.

    Asked only once the token is known to be granted the role, so the bounds never tell a caller
    about a role it may not use, and before the token is spent, so a corrected retry works.
    """
    if duration is None:
        return None
    maximum = role.max_duration
    if maximum is not None and duration > maximum:
        raise InvalidRequest(f"duration must be at most {maximum} for this role")
    minimum = role.min_duration
    if duration < minimum:
        raise InvalidRequest(f"duration must be at least {minimum} for this role ({role.cloud}'s minimum)")
    return duration


def session_duration(role: RoleConfig, duration: int | None, remaining: float) -> int | None:
    """A refresh's duration: the caller's (checked as an exchange's) or the role's, cut to what is
    left of the session, as far as the cloud's minimum allows. Clouds that choose the lifetime
    themselves (Azure) ignore it."""
    duration = requested_duration(role, duration)
    maximum = role.max_duration
    if maximum is None:
        return duration
    return min(duration or maximum, max(role.min_duration, math.ceil(remaining)))
