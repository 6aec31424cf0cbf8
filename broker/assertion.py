"""The broker's own assertions: what the clouds verify before issuing credentials.

Each is short-lived (at most five minutes), names the granted role as `sub = role:<name>` so each
cloud trusts one exact subject per role, and carries non-secret CI context for the clouds' logs.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any

import jwt

from broker import strictjson
from broker.claims import resolve
from broker.keys import SigningKey, b64url

MAX_LIFETIME = 300


class AssertionSigner:
    def __init__(
        self,
        issuer: str,
        key: SigningKey,
        lifetime: int = MAX_LIFETIME,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.issuer = issuer
        self.key = key
        self.lifetime = min(lifetime, MAX_LIFETIME)
        self.clock = clock
        # PyJWT's own algorithm signs (ES256 as raw r||s, RS256 as PKCS#1 v1.5), as it verifies CI
        # tokens; the header never changes, so it is encoded once rather than on every exchange.
        self._algorithm = jwt.get_algorithm_by_name(key.alg)
        header = {"alg": key.alg, "kid": key.kid, "typ": "JWT"}
        self._header_b64 = b64url(strictjson.dumps(header).encode())

    def mint(
        self, role: str, audience: str, context: Mapping[str, str], extra: Mapping[str, Any] | None = None
    ) -> str:
        now = int(self.clock())
        claims: dict[str, Any] = dict(context)
        claims.update(extra or {})
        # Registered claims last, so neither context nor extras can override them.
        claims.update(
            {
                "iss": self.issuer,
                "sub": f"role:{role}",
                "aud": audience,
                "iat": now,
                "nbf": now,
                "exp": now + self.lifetime,
                "jti": secrets.token_urlsafe(18),
            }
        )
        signing_input = f"{self._header_b64}.{b64url(strictjson.dumps(claims).encode())}"
        signature = self._algorithm.sign(signing_input.encode("ascii"), self.key.private_key)
        return f"{signing_input}.{b64url(signature)}"


def ci_context(provider: str, claims: Mapping[str, Any], neutral: Mapping[str, str]) -> dict[str, str]:
    """Provider-neutral context (repository, repository_id, ref, run_id, sha) from a CI token.

    `neutral` maps each name to a claim path (`kubernetes.io.serviceaccount.uid`).
    """
    context = {"provider": provider}
    for name, claim in neutral.items():
        value = resolve(claims, claim)
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            context[name] = str(value)
    return context
