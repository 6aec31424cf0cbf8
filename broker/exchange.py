"""The exchange (contract section 4) as one flow, read top to bottom in `Broker.exchange`.

    client limit -> token and body -> verify -> decide -> blocks -> the request against the role
        -> identity limit -> spend the token -> mint and issue

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

Everything a request needs (keys, SDK clients, compiled policy) was built at start-up by
`broker.service.build_broker`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from broker import audit, clouds, metrics
from broker.alerts import Alerts
from broker.assertion import AssertionSigner, ci_context
from broker.audit import AuditEvent
from broker.blocks import BlockList
from broker.config import Config, RoleConfig
from broker.errors import AccessDenied, BrokerError, InvalidRequest, InvalidToken, UpstreamError
from broker.jwks import KeyCache, KeyRefresher
from broker.ratelimit import RateLimiter
from broker.replay import ReplayStore
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


@dataclass(frozen=True)
class Granted:
    role: RoleConfig
    issued: clouds.Issued


@dataclass
class Broker:
    config: Config
    verifier: TokenVerifier
    signer: AssertionSigner
    backends: dict[str, clouds.Backend]
    limiter: RateLimiter
    replay: ReplayStore
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
            self.limiter.admit(verified.provider, verified.claims)
            self.spend(verified)

            issued = self.issue(role, verified, duration)
            event.granted(decision.summary(), issued.expires_at)
            return Granted(role, issued)
        except BrokerError as exc:
            event.refused(exc)
            raise
        except Exception as exc:
            event.failed(exc)
            raise
        finally:
            self.record(event)

    # -- the steps --------------------------------------------------------------------------------

    def spend(self, verified: VerifiedToken) -> None:
        """Record the token's single use; refuse it if it was used before."""
        if not self.replay.first_use(verified.replay_key, verified.record_until):
            metrics.replay_refused()
            jti = str(verified.claims.get("jti"))
            raise InvalidToken("token has already been used", reason=f"jti {jti[:100]!r} replayed")

    def issue(self, role: RoleConfig, verified: VerifiedToken, duration: int | None) -> clouds.Issued:
        """Sign the broker's assertion for the role and trade it with the role's cloud."""
        provider = verified.provider
        context = ci_context(provider.name, verified.claims, provider.schema.neutral)
        grant = clouds.Grant(
            role=role.name,
            provider=provider.name,
            claims=verified.claims,
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

    def record(self, event: AuditEvent) -> None:
        """An exchange has its outcome: write its audit event and count it, together."""
        audit.emit(event.fields())
        metrics.exchange_finished(event, self.config.roles)
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
