"""The broker's own assertions: what the clouds verify before issuing credentials.

Each is short-lived (at most five minutes), names the granted role as `sub = role:<name>` so each
cloud trusts one exact subject per role, and carries non-secret CI context for the clouds' logs.
"""

from __future__ import annotations

import secrets
import time
from typing import Any, Callable, Mapping

import jwt

from broker.keys import SigningKey

MAX_LIFETIME = 300


class AssertionSigner:
    def __init__(self, issuer: str, key: SigningKey, lifetime: int = MAX_LIFETIME,
                 clock: Callable[[], float] = time.time) -> None:
        self.issuer = issuer
        self.key = key
        self.lifetime = min(lifetime, MAX_LIFETIME)
        self.clock = clock
        self._headers = {"kid": key.kid, "typ": "JWT"}

    def mint(self, role: str, audience: str, context: Mapping[str, str],
             extra: Mapping[str, Any] | None = None) -> str:
        now = int(self.clock())
        claims: dict[str, Any] = dict(context)
        claims.update(extra or {})
        # Registered claims last, so neither context nor extras can override them.
        claims.update({
            "iss": self.issuer, "sub": f"role:{role}", "aud": audience,
            "iat": now, "nbf": now, "exp": now + self.lifetime, "jti": secrets.token_urlsafe(18),
        })
        return jwt.encode(claims, self.key.private_key, algorithm=self.key.alg, headers=self._headers)


def ci_context(provider: str, claims: Mapping[str, Any], neutral: Mapping[str, str]) -> dict[str, str]:
    """Provider-neutral context (repository, repository_id, ref, run_id, sha) from a CI token."""
    context = {"provider": provider}
    for name, claim in neutral.items():
        value = claims.get(claim)
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            context[name] = str(value)
    return context
