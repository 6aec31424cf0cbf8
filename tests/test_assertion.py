"""The broker's own assertion: a compact JWS any standard verifier accepts, with fixed registered claims."""

from __future__ import annotations

import json

import jwt
import pytest

from broker.assertion import MAX_LIFETIME, AssertionSigner
from broker.keys import write_private_key
from broker.sandbox.issuer import b64url


@pytest.fixture(params=["ES256", "RS256"])
def signer(request, tmp_path) -> AssertionSigner:
    key = write_private_key(tmp_path / "key.pem", request.param)
    return AssertionSigner("https://broker.example", key, clock=lambda: 1_800_000_000)


def decode(signer: AssertionSigner, token: str, audience: str) -> dict:
    public = jwt.PyJWK(signer.key.public_jwk).key
    return jwt.decode(
        token,
        public,
        algorithms=[signer.key.alg],
        audience=audience,
        issuer="https://broker.example",
        options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
    )


def test_pyjwt_verifies_the_assertion_against_the_published_key(signer):
    token = signer.mint("deploy", "sts.amazonaws.com", {"provider": "github", "repository": "o/r"})
    claims = decode(signer, token, "sts.amazonaws.com")
    assert claims["sub"] == "role:deploy"
    assert claims["repository"] == "o/r"
    assert claims["exp"] - claims["iat"] == MAX_LIFETIME
    assert claims["iat"] == claims["nbf"] == 1_800_000_000


def test_the_header_names_the_algorithm_the_key_and_the_type_and_nothing_else(signer):
    token = signer.mint("deploy", "sts.amazonaws.com", {})
    assert jwt.get_unverified_header(token) == {"alg": signer.key.alg, "kid": signer.key.kid, "typ": "JWT"}


def test_context_and_extra_claims_cannot_override_registered_ones(signer):
    forged = {
        "sub": "role:admin",
        "iss": "https://evil.example",
        "aud": "elsewhere",
        "exp": 10**10,
        "jti": "x",
    }
    token = signer.mint("deploy", "sts.amazonaws.com", forged, extra=forged)
    claims = decode(signer, token, "sts.amazonaws.com")
    assert claims["sub"] == "role:deploy" and claims["iss"] == "https://broker.example"
    assert claims["exp"] == 1_800_000_000 + MAX_LIFETIME and claims["jti"] != "x"


def test_every_assertion_has_its_own_jti(signer):
    jtis = {decode(signer, signer.mint("deploy", "a", {}), "a")["jti"] for _ in range(50)}
    assert len(jtis) == 50


def test_the_signature_is_over_the_exact_header_and_payload(signer):
    token = signer.mint("deploy", "a", {})
    header, payload, signature = token.split(".")
    tampered = json.loads(jwt.utils.base64url_decode(payload))
    tampered["sub"] = "role:admin"
    forged = f"{header}.{b64url(json.dumps(tampered).encode())}.{signature}"
    with pytest.raises(jwt.InvalidSignatureError):
        decode(signer, forged, "a")
