"""What a cloud does with the broker's assertion before it issues anything.

AWS (an IAM OIDC provider plus a role trust policy), GCP (a workload identity pool provider with an
attribute condition) and Azure (a federated identity credential) all do the same thing: fetch the
issuer's discovery document and JWKS, verify the signature, and require an exact issuer, audience
and subject. The local cloud endpoints use this class so that a passing test proves the real cloud
would accept what the broker sent.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import jwt
import requests


class TrustRefused(Exception):
    """The assertion would not satisfy the cloud's trust configuration; `str()` says why."""


@dataclass
class FederatedTrust:
    issuer: str  # the broker's issuer URL, as registered with the cloud
    audience: str  # what the cloud requires in aud
    subjects: set[str] = field(default_factory=set)  # allowed sub values (one per trusted role)
    max_lifetime: int = 3600  # clouds refuse tokens valid for too long (Azure, GCP: 1 h; AWS: 1 d)
    accepted: list[dict[str, Any]] = field(default_factory=list)  # claims of every accepted assertion
    # Where the issuer's two documents are served on this machine, when the issuer's own URL is
    # not (an https name no test can serve): the discovery document must still name `issuer`.
    fetch_from: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def verify(self, assertion: str) -> dict[str, Any]:
        claims = self.verify_signed(assertion)
        if claims["sub"] not in self.subjects:
            raise TrustRefused(f"subject {claims['sub']!r} is not trusted")
        self.record(claims)
        return claims

    def record(self, claims: dict[str, Any]) -> None:
        with self._lock:
            self.accepted.append(claims)

    def verify_signed(self, assertion: str) -> dict[str, Any]:
        """The claims of an assertion the issuer signed for this audience, within its lifetime;
        which subjects may use it is the caller's decision (`verify`, or a policy)."""
        try:
            header = jwt.get_unverified_header(assertion)
            discovery = requests.get(
                self._served(f"{self.issuer}/.well-known/openid-configuration"), timeout=5
            ).json()
            if discovery.get("issuer") != self.issuer:
                raise TrustRefused("discovery document issuer mismatch")
            keys = jwt.PyJWKSet.from_dict(requests.get(self._served(discovery["jwks_uri"]), timeout=5).json())
            key = next((k for k in keys.keys if k.key_id == header.get("kid")), None)
            if key is None:
                raise TrustRefused(f"no key {header.get('kid')!r} in the issuer's JWKS")
            claims = jwt.decode(
                assertion,
                key.key,
                algorithms=["ES256", "RS256"],
                audience=self.audience,
                issuer=self.issuer,
                options={"require": ["iss", "sub", "aud", "exp", "iat"]},
            )
        except TrustRefused:
            raise
        except (jwt.PyJWTError, requests.RequestException, ValueError, KeyError) as exc:
            raise TrustRefused(f"{type(exc).__name__}: {exc}") from None
        if claims["exp"] - claims["iat"] > self.max_lifetime:
            raise TrustRefused("assertion lifetime is too long")
        return claims

    def _served(self, url: str) -> str:
        if self.fetch_from is not None and url.startswith(f"{self.issuer}/"):
            return self.fetch_from + url[len(self.issuer) :]
        return url
