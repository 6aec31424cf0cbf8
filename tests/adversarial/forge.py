"""Building blocks for forged tokens: the pieces an attacker can choose, spelled out."""

from __future__ import annotations

import base64
import json
from typing import Any

from broker.sandbox.issuer import b64url, github_claims, gitlab_claims


def b64url_decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def gh_claims(sandbox: Any, **overrides: Any) -> dict[str, Any]:
    return github_claims(**{"iss": sandbox.github.url, "aud": sandbox.broker_url, **overrides})


def gl_claims(sandbox: Any, **overrides: Any) -> dict[str, Any]:
    return gitlab_claims(**{"iss": sandbox.gitlab.url, "aud": sandbox.broker_url, **overrides})


def gh_header(sandbox: Any, **overrides: Any) -> dict[str, Any]:
    return {"alg": "RS256", "kid": sandbox.github.key.kid, "typ": "JWT", **overrides}


def compact(header: dict[str, Any] | bytes, payload: dict[str, Any] | bytes, signature: bytes) -> str:
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    p = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return f"{b64url(h)}.{b64url(p)}.{b64url(signature)}"


def signing_input(token: str) -> bytes:
    h, p, _ = token.split(".")
    return f"{h}.{p}".encode()


def with_signature(token: str, signature: bytes) -> str:
    h, p, _ = token.split(".")
    return f"{h}.{p}.{b64url(signature)}"


def signature_of(token: str) -> bytes:
    return b64url_decode(token.split(".")[2])
