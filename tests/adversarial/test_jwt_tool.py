"""jwt_tool's attack modes (ticarpi/jwt_tool: `-X a|n|b|s|k|i`, `-T` tampering, the playbook
scan), each against the broker. Variants the core's tests already run are not repeated here."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from jwt.algorithms import RSAAlgorithm

from broker.sandbox.issuer import IssuerKeyPair, b64url
from tests.adversarial.forge import b64url_decode, compact, gh_claims, gh_header


def hs256(header: dict[str, Any], payload: dict[str, Any], secret: bytes) -> str:
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(mac)}"


def test_mode_a_alg_none_keeping_the_original_signature(sandbox, broker, attack):
    h, p, s = sandbox.github_token().split(".")
    none_header = b64url(json.dumps({"alg": "none", "typ": "JWT", "kid": sandbox.github.key.kid}).encode())
    attack(f"{none_header}.{p}.{s}", reason="alg 'none' not in")


def test_mode_n_null_signature(sandbox, broker, attack):
    h, p, _ = sandbox.github_token().split(".")
    attack(f"{h}.{p}.", reason="signature is not unpadded base64url")


def test_mode_b_blank_hmac_password(sandbox, broker, attack):
    attack(hs256(gh_header(sandbox, alg="HS256"), gh_claims(sandbox), b""), reason="alg 'HS256' not in")


def test_mode_s_spoofed_jwks_for_the_real_kid(sandbox, broker, attack):
    evil = IssuerKeyPair()
    spoof = sandbox.github.sign_raw(
        gh_header(sandbox, jku=f"{sandbox.github.url}/.well-known/jwks/../../attacker/jwks.json"),
        gh_claims(sandbox),
        evil,
    )
    attack(spoof, reason="header carries jku")


def _public_key_spellings(sandbox: Any) -> dict[str, bytes]:
    public = sandbox.github.key.private_key.public_key()
    return {
        "pkcs1-pem": public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1),
        "spki-der": public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        "jwk-json": json.dumps(sandbox.github.key.public_jwk).encode(),
        "jwk-json-sorted": RSAAlgorithm.to_jwk(public).encode(),
        "modulus": b64url_decode(sandbox.github.key.public_jwk["n"]),
    }


@pytest.mark.parametrize("spelling", ["pkcs1-pem", "spki-der", "jwk-json", "jwk-json-sorted", "modulus"])
def test_mode_k_key_confusion_with_every_spelling_of_the_public_key(sandbox, broker, attack, spelling):
    secret = _public_key_spellings(sandbox)[spelling]
    attack(hs256(gh_header(sandbox, alg="HS256"), gh_claims(sandbox), secret), reason="alg 'HS256' not in")


def test_mode_i_inline_jwk_without_a_kid(sandbox, broker, attack):
    evil = IssuerKeyPair()
    header = {"alg": "RS256", "typ": "JWT", "jwk": evil.public_jwk}
    attack(sandbox.github.sign_raw(header, gh_claims(sandbox), evil), reason="header carries jwk")


@pytest.mark.parametrize(
    "change",
    [
        {"kid": "another-kid"},
        {"typ": "JWT", "x-injected": "1"},
        {"alg": "RS256 "},
    ],
)
def test_tamper_the_header_and_keep_the_signature(sandbox, broker, attack, change):
    token = sandbox.github_token()
    h, p, s = token.split(".")
    header = {**json.loads(b64url_decode(h)), **change}
    attack(f"{b64url(json.dumps(header).encode())}.{p}.{s}")


def test_splice_the_signature_of_one_valid_token_onto_another(sandbox, broker, attack):
    first, second = sandbox.github_token(), sandbox.github_token(repository_id="1")
    h, p, _ = second.split(".")
    attack(f"{h}.{p}.{first.split('.')[2]}", reason="bad signature")


def test_splice_the_payload_of_another_providers_token(sandbox, broker, attack):
    """GitLab's claims under GitHub's header and signature: the signature covers both halves."""
    gh = sandbox.github_token().split(".")
    gl = sandbox.gitlab_token().split(".")
    attack(f"{gh[0]}.{gl[1]}.{gh[2]}")


@pytest.mark.parametrize(
    "token",
    [
        "eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIn0.",  # jwt_tool's default none token
        ".".join(["A" * 10] * 3),
        "Bearer " + "x" * 10,
        "eyJ" + "." * 2,
    ],
)
def test_playbook_junk_is_refused_cleanly(sandbox, broker, attack, token):
    attack(token)


def test_forged_claims_under_a_fresh_rsa_key_with_the_real_kid(sandbox, broker, attack):
    evil = IssuerKeyPair()
    attack(compact(gh_header(sandbox), gh_claims(sandbox), evil.sign(b"unrelated")), reason="bad signature")
