"""Verification of a CI job's OIDC token, failing closed at every step.

Order matters: size, then strict parsing, then the issuer (by exact match of the still-unverified
`iss`, which only selects which configured keys to try), then the signature with the provider's
pinned algorithms, then every claim. Nothing from the token is trusted before its signature
verifies, and no key ever comes from the token itself.

Verifying changes no state: the single-use record is written by the exchange flow
(`broker.exchange`) once every other check has passed, so a token refused for its request's shape
or for load is not spent. `VerifiedToken` carries what that record needs.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt

from broker import jose
from broker.config import Config, ProviderConfig
from broker.errors import InvalidToken, PayloadTooLarge
from broker.jwks import KeyCache
from broker.replay import replay_key

# GitHub and GitLab tokens are 1-3 KB; AWS accepts web identity tokens up to 20,000 characters.
MAX_TOKEN_CHARS = 16 * 1024
TIME_CLAIMS = ("exp", "iat", "nbf")
# 9999-12-31T23:59:59Z: no CI token's time lies beyond it, and past it dates stop being portable.
MAX_TIME = 253402300799
# The longest lifetime (exp - iat) a token may declare. A token is accepted only while its iat is
# younger than token_max_age whatever its exp says; a declared lifetime beyond any CI's is a sign
# of a broken or hostile issuer. GitLab sets an ID token's exp to the job's timeout, which a project
# can raise to a month; GitHub's tokens live minutes.
MAX_DECLARED_LIFETIME = 31 * 86400
REQUIRED = ("iss", "aud", "sub", "exp", "iat", "jti")


@dataclass(frozen=True)
class VerifiedToken:
    provider: ProviderConfig
    claims: dict[str, Any]
    sha256: str
    # The single-use record: its key, and until when it must be kept (unix time). The token is
    # acceptable until exp or iat + max age, whichever is first, plus leeway.
    replay_key: str
    record_until: float


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


class TokenVerifier:
    def __init__(
        self,
        config: Config,
        caches: dict[str, KeyCache],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.audience = config.server.audience
        self.max_age = config.server.token_max_age
        self.leeway = config.server.leeway
        self.config = config
        self.caches = caches  # by provider name
        self.clock = clock
        self._required = {
            p.name: REQUIRED + tuple(sorted(p.schema.required)) for p in config.providers.values()
        }

    def verify(self, token: str) -> VerifiedToken:
        if len(token) > MAX_TOKEN_CHARS:
            raise PayloadTooLarge(f"token longer than {MAX_TOKEN_CHARS} characters")
        if not token.isascii():
            raise InvalidToken("malformed token", reason="token is not ASCII")
        parsed = jose.parse(token)

        issuer = parsed.claims.get("iss")
        provider = self.config.provider_for_issuer(issuer) if isinstance(issuer, str) else None
        if provider is None:
            raise InvalidToken("token issuer is not trusted", reason=f"unknown issuer {str(issuer)[:200]!r}")

        alg = parsed.header["alg"]
        if alg not in provider.algorithms:
            raise InvalidToken(
                "token algorithm not accepted",
                reason=f"alg {alg[:20]!r} not in {list(provider.algorithms)} for {provider.name}",
            )
        key = self.caches[provider.name].get(parsed.header["kid"], alg)
        algorithm = jwt.get_algorithm_by_name(alg)
        if not algorithm.verify(parsed.signing_input, key.key, parsed.signature):
            raise InvalidToken("token signature is invalid", reason=f"bad signature for kid {key.kid[:64]!r}")

        claims = parsed.claims
        self._check_claims(claims, provider)
        self._check_with_pyjwt(claims, provider)
        return VerifiedToken(
            provider=provider,
            claims=claims,
            sha256=token_sha256(token),
            replay_key=replay_key(provider.issuer, claims["jti"]),
            record_until=min(claims["exp"], claims["iat"] + self.max_age) + self.leeway,
        )

    def _check_claims(self, claims: dict[str, Any], provider: ProviderConfig) -> None:
        for name in self._required[provider.name]:
            if name not in claims:
                raise InvalidToken("token lacks a required claim", reason=f"missing claim {name!r}")
        for name in TIME_CLAIMS:
            # bool is an int in Python; JSON true must not pass as a timestamp.
            if name in claims and (isinstance(claims[name], bool) or not isinstance(claims[name], int)):
                raise InvalidToken("token has a malformed time claim", reason=f"{name} is not an integer")
            if name in claims and not 0 <= claims[name] <= MAX_TIME:
                raise InvalidToken(
                    "token has a time claim out of range", reason=f"{name} {claims[name]} is not a sane time"
                )
        lifetime = claims["exp"] - claims["iat"]
        if not 0 < lifetime <= MAX_DECLARED_LIFETIME:
            raise InvalidToken(
                "token has a time claim out of range",
                reason=f"exp is {lifetime}s after iat, outside 1..{MAX_DECLARED_LIFETIME}",
            )
        for name in ("sub", "jti"):
            if not isinstance(claims[name], str) or not claims[name]:
                raise InvalidToken("token has a malformed claim", reason=f"{name} is not a non-empty string")

        aud = claims["aud"]
        audiences = [aud] if isinstance(aud, str) else aud
        if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences):
            raise InvalidToken(
                "token has a malformed audience", reason="aud is not a string or list of strings"
            )
        if self.audience not in audiences:
            raise InvalidToken(
                "token audience is wrong", reason=f"aud {audiences[:5]!r} lacks {self.audience!r}"
            )

        now = self.clock()
        if claims["exp"] <= now - self.leeway:
            raise InvalidToken("token has expired", reason=f"exp {claims['exp']} is past")
        if "nbf" in claims and claims["nbf"] > now + self.leeway:
            raise InvalidToken("token is not yet valid", reason=f"nbf {claims['nbf']} is in the future")
        if claims["iat"] > now + self.leeway:
            raise InvalidToken("token is not yet valid", reason=f"iat {claims['iat']} is in the future")
        if now - claims["iat"] > self.max_age + self.leeway:
            raise InvalidToken(
                "token is too old", reason=f"issued {int(now - claims['iat'])}s ago, limit {self.max_age}s"
            )

    def _check_with_pyjwt(self, claims: dict[str, Any], provider: ProviderConfig) -> None:
        """A second, independent opinion on the claims from PyJWT, every option spelled out.

        Our own checks above are the strict ones; this guards against a mistake in them. The
        signature was already verified by PyJWT's own algorithm over the exact signing input, so
        a full `jwt.decode` would add only a second parse of the token, and that parse costs more
        than the rest of the broker's own work per exchange (PyJWT 2.15 checks base64url one
        character at a time in Python), for bytes our strict parser has already checked.
        """
        try:
            _PYJWT_CLAIMS.validate(claims, audience=self.audience, issuer=provider.issuer, leeway=self.leeway)
        except jwt.PyJWTError as exc:
            raise InvalidToken("token failed verification", reason=f"pyjwt: {type(exc).__name__}") from None


class _PyJWTClaims(jwt.PyJWT):
    """PyJWT's claim validation (exp, nbf, iat, aud, iss, required) on an already parsed claims set."""

    OPTIONS = {
        "require": list(REQUIRED),
        "verify_signature": True,
        "verify_aud": True,
        "verify_iss": True,
        "verify_exp": True,
        "verify_iat": True,
        "verify_nbf": True,
        "strict_aud": False,
    }

    def validate(self, claims: dict[str, Any], *, audience: str, issuer: str, leeway: int) -> None:
        # The claim step `PyJWT.decode_complete` runs after its signature check, with the options
        # merged once, at construction.
        self._validate_claims(claims, self.options, audience=audience, issuer=issuer, leeway=leeway)


_PYJWT_CLAIMS = _PyJWTClaims(options=_PyJWTClaims.OPTIONS)  # type: ignore[arg-type]
