"""Strict parsing of a compact JWS before anything trusts it.

PyJWT alone accepts padded or standard-alphabet base64, duplicate JSON keys (last one wins),
`cty`, and float or string times. Here a token is refused unless every segment is canonical
unpadded base64url, both JSON documents are objects without duplicate keys or NaN, and the header
names no key source or extension we do not implement. Only then does signature checking begin.
"""

from __future__ import annotations

import base64
import binascii
import re
import string
from dataclasses import dataclass
from typing import Any

from broker import strictjson
from broker.errors import InvalidToken

_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")
_BITS = {
    char: value
    for value, char in enumerate(string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_")
}
# Header parameters that would let the token choose its own key or change how it is processed.
# No CI provider sends them, so their presence is itself a sign of an attack.
FORBIDDEN_HEADER = frozenset({"jwk", "jku", "x5u", "x5c", "crit", "cty", "enc", "zip", "b64"})


@dataclass(frozen=True)
class ParsedToken:
    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes
    signature: bytes


def b64url_decode(segment: str, what: str) -> bytes:
    """Decode unpadded base64url, refusing any non-canonical spelling (malleability)."""
    tail = len(segment) % 4
    if not _SEGMENT.fullmatch(segment) or tail == 1:
        raise InvalidToken("malformed token", reason=f"{what} is not unpadded base64url")
    # The last character's unused low bits (4 of its 6 after two characters, 2 after three) must
    # be zero, or two spellings would decode to the same bytes.
    if tail and _BITS[segment[-1]] & (0b1111 if tail == 2 else 0b11):
        raise InvalidToken("malformed token", reason=f"{what} is not canonical base64url")
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise InvalidToken("malformed token", reason=f"{what} is not base64url") from None


def strict_json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = strictjson.loads(data)
    except ValueError as exc:
        raise InvalidToken("malformed token", reason=f"{what} is not valid JSON: {exc}"[:200]) from None
    if not isinstance(value, dict):
        raise InvalidToken("malformed token", reason=f"{what} is not a JSON object")
    return value


def parse(token: str) -> ParsedToken:
    parts = token.split(".")
    if len(parts) != 3:
        raise InvalidToken("malformed token", reason=f"expected 3 dot-separated segments, got {len(parts)}")
    header_b64, payload_b64, signature_b64 = parts
    header = strict_json_object(b64url_decode(header_b64, "header"), "header")
    claims = strict_json_object(b64url_decode(payload_b64, "payload"), "payload")
    signature = b64url_decode(signature_b64, "signature")

    alg = header.get("alg")
    if not isinstance(alg, str) or not alg:
        raise InvalidToken("malformed token", reason="header has no alg")
    forbidden = FORBIDDEN_HEADER.intersection(header)
    if forbidden:
        raise InvalidToken(
            "token header not accepted", reason=f"header carries {', '.join(sorted(forbidden))}"
        )
    typ = header.get("typ")
    if typ is not None and (not isinstance(typ, str) or typ.upper() not in ("JWT", "AT+JWT")):
        raise InvalidToken("token header not accepted", reason=f"typ {typ!r} is not JWT")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid or len(kid) > 256:
        raise InvalidToken("token header not accepted", reason="header has no usable kid")
    return ParsedToken(
        header=header,
        claims=claims,
        signing_input=f"{header_b64}.{payload_b64}".encode("ascii"),
        signature=signature,
    )
