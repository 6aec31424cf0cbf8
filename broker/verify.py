"""Verification of a CI job's OIDC token, failing closed at every step.

Order matters: size, then strict parsing, then the issuer (by exact match of the still-unverified
`iss`, which only selects which configured keys to try), then the signature with the provider's
pinned algorithms, then every claim. Nothing from the token is trusted before its signature
verifies, and no key ever comes from the token itself.

Verifying changes no state: the single-use record is written by the exchange flow
(`broker.exchange`) once every other check has passed, so a token refused for its request's shape
or for load is not spent. `VerifiedToken` carries what that record needs: the token's `jti`, or,
for providers whose tokens may lack one (Buildkite's older agents, CircleCI, Kubernetes), the
SHA-256 of what the issuer signed. Not of the whole token: an ECDSA signature has a second valid
encoding, (r, n - s), so the same signed claims can arrive as two different token strings.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt

from broker import jose
from broker.claims import ABSENT, REGISTERED, resolve
from broker.config import Config
from broker.errors import InvalidToken, PayloadTooLarge
from broker.jwks import KeyCache
from broker.providers import ProviderConfig
from broker.replay import replay_key

# GitHub and GitLab tokens are 1-3 KB; AWS accepts web identity tokens up to 20,000 characters.
MAX_TOKEN_CHARS = 16 * 1024
TIME_CLAIMS = ("exp", "iat", "nbf")
IDENTIFIER_CLAIMS = ("sub", "jti")
SHAPED_CLAIMS = TIME_CLAIMS + IDENTIFIER_CLAIMS
# 9999-12-31T23:59:59Z: no CI token's time lies beyond it, and past it dates stop being portable.
MAX_TIME = 253402300799
# The longest lifetime (exp - iat) a token may declare. A token is accepted only while its iat is
# younger than token_max_age whatever its exp says; a declared lifetime beyond any CI's is a sign
# of a broken or hostile issuer. GitLab sets an ID token's exp to the job's timeout, which a project
# can raise to a month; GitHub's tokens live minutes.
MAX_DECLARED_LIFETIME = 31 * 86400
# What every token needs, whatever its type; the rest of what a token must carry (sub, jti, the
# provider's own claims) is its schema's `required` (broker.claims). A required claim that is null
# is refused like a missing one (or, for these and sub and jti, as malformed).
CORE_REQUIRED = ("iss", "aud", "exp", "iat")


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
        self.max_age = config.server.token_max_age
        self.leeway = config.server.leeway
        self.config = config
        self.caches = caches  # by provider name
        self.clock = clock
        self._required = {
            p.name: CORE_REQUIRED + tuple(sorted(p.schema.required)) for p in config.providers.values()
        }
        # Where the CI fixes the audience (Azure DevOps' api://AzureADTokenExchange, CircleCI's
        # organization id) the provider names its own; every other provider's is the server's.
        self._audience = {p.name: p.audience or config.server.audience for p in config.providers.values()}
        self._pyjwt_options = {
            name: {**_PYJWT_CLAIMS.options, "require": [c for c in required if c in REGISTERED]}
            for name, required in self._required.items()
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
        jti = claims.get("jti")
        once = (
            jti
            if jti is not None
            else f"\x00signed-sha256:{hashlib.sha256(parsed.signing_input).hexdigest()}"
        )
        return VerifiedToken(
            provider=provider,
            claims=claims,
            sha256=token_sha256(token),
            replay_key=replay_key(provider.issuer, once),
            record_until=min(claims["exp"], claims["iat"] + self.max_age) + self.leeway,
        )

    def _check_claims(self, claims: dict[str, Any], provider: ProviderConfig) -> None:
        for name in self._required[provider.name]:
            value = resolve(claims, name)
            if value is ABSENT:
                raise InvalidToken("token lacks a required claim", reason=f"missing claim {name!r}")
            if value is None and name not in SHAPED_CLAIMS:  # those are "malformed": said below
                raise InvalidToken("token lacks a required claim", reason=f"claim {name!r} is null")
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
        for name in IDENTIFIER_CLAIMS:
            # A schema may make either optional; absent is then fine, but present (null included,
            # as PyJWT also holds) it must be usable as an identifier.
            if name not in claims and name not in self._required[provider.name]:
                continue
            value = claims.get(name)
            if not isinstance(value, str) or not value:
                raise InvalidToken("token has a malformed claim", reason=f"{name} is not a non-empty string")

        aud = claims["aud"]
        audiences = [aud] if isinstance(aud, str) else aud
        if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences):
            raise InvalidToken(
                "token has a malformed audience", reason="aud is not a string or list of strings"
            )
        audience = self._audience[provider.name]
        if audience not in audiences:
            raise InvalidToken("token audience is wrong", reason=f"aud {audiences[:5]!r} lacks {audience!r}")

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
            _PYJWT_CLAIMS.validate(
                claims,
                self._pyjwt_options[provider.name],
                audience=self._audience[provider.name],
                issuer=provider.issuer,
                leeway=self.leeway,
            )
        except jwt.PyJWTError as exc:
            raise InvalidToken("token failed verification", reason=f"pyjwt: {type(exc).__name__}") from None


class _PyJWTClaims(jwt.PyJWT):
    """PyJWT's claim validation (exp, nbf, iat, aud, iss, required) on an already parsed claims set."""

    OPTIONS = {
        "require": list(CORE_REQUIRED),
        "verify_signature": True,
        "verify_aud": True,
        "verify_iss": True,
        "verify_exp": True,
        "verify_iat": True,
        "verify_nbf": True,
        "strict_aud": False,
    }

    def validate(
        self, claims: dict[str, Any], options: Any, *, audience: str, issuer: str, leeway: int
    ) -> None:
        # The claim step `PyJWT.decode_complete` runs after its signature check, with options
        # merged once per provider, at start-up (each provider requires its own registered claims).
        self._validate_claims(claims, options, audience=audience, issuer=issuer, leeway=leeway)


_PYJWT_CLAIMS = _PyJWTClaims(options=_PyJWTClaims.OPTIONS)  # type: ignore[arg-type]
