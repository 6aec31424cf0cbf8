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
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def verify(self, assertion: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(assertion)
            discovery = requests.get(f"{self.issuer}/.well-known/openid-configuration", timeout=5).json()
            if discovery.get("issuer") != self.issuer:
                raise TrustRefused("discovery document issuer mismatch")
            keys = jwt.PyJWKSet.from_dict(requests.get(discovery["jwks_uri"], timeout=5).json())
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
        if claims["sub"] not in self.subjects:
            raise TrustRefused(f"subject {claims['sub']!r} is not trusted")
        if claims["exp"] - claims["iat"] > self.max_lifetime:
            raise TrustRefused("assertion lifetime is too long")
        with self._lock:
            self.accepted.append(claims)
        return claims
