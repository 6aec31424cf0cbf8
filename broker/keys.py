"""The broker's own signing keys: loading, generating, and publishing them as a JWKS.

Keys are parsed once at start-up. The `kid` is the RFC 7638 thumbprint of the public key, so it is
stable across restarts and replicas without anyone having to name keys by hand.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

ALGORITHMS = ("ES256", "RS256")
MIN_RSA_BITS = 2048


@dataclass(frozen=True)
class SigningKey:
    kid: str
    alg: str
    private_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    public_jwk: dict[str, str]


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 JWK thumbprint (SHA-256) over the required members only."""
    members = ("crv", "kty", "x", "y") if jwk["kty"] == "EC" else ("e", "kty", "n")
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canonical.encode()).digest())


def signing_key_from_private(private_key: Any) -> SigningKey:
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        if not isinstance(private_key.curve, ec.SECP256R1):
            raise ValueError(f"EC keys must be on P-256 (for ES256), not {private_key.curve.name}")
        alg = "ES256"
        jwk = ECAlgorithm.to_jwk(private_key.public_key(), as_dict=True)
    elif isinstance(private_key, rsa.RSAPrivateKey):
        if private_key.key_size < MIN_RSA_BITS:
            raise ValueError(f"RSA keys must have at least {MIN_RSA_BITS} bits, not {private_key.key_size}")
        alg = "RS256"
        jwk = RSAAlgorithm.to_jwk(private_key.public_key(), as_dict=True)
    else:
        raise ValueError("only EC P-256 (ES256) and RSA (RS256) private keys are supported")
    kid = thumbprint(jwk)
    public = {k: v for k, v in jwk.items() if k in ("kty", "crv", "x", "y", "n", "e")}
    public.update({"kid": kid, "alg": alg, "use": "sig"})
    return SigningKey(kid=kid, alg=alg, private_key=private_key, public_jwk=public)


def load_signing_key(path: Path) -> SigningKey:
    """Parse one PEM private key file; raises ValueError with a reason fit for the operator."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read key file {str(path)!r}: {exc.strerror}") from None
    try:
        private_key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ValueError(f"{str(path)!r} is not an unencrypted PEM private key") from None
    return signing_key_from_private(private_key)


def generate_private_key(alg: str) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    raise ValueError(f"unsupported algorithm {alg!r}; use one of {', '.join(ALGORITHMS)}")


def private_key_pem(private_key: PrivateKeyTypes) -> bytes:
    return private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def write_private_key(path: Path, alg: str) -> SigningKey:
    """Write a new key readable by its owner only; refuses to overwrite an existing file."""
    private_key = generate_private_key(alg)
    # O_EXCL: never clobber a key in use; mode 0600 from the first byte, not chmod afterwards.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(private_key_pem(private_key))
    return signing_key_from_private(private_key)


def jwks(keys: tuple[SigningKey, ...]) -> dict[str, Any]:
    return {"keys": [dict(k.public_jwk) for k in keys]}
