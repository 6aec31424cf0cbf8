"""PyJWT's published advisories, each replayed against the broker (which uses PyJWT's algorithms
for signatures and `jwt.decode` for a second opinion, but its own strict parser and checks first).

- CVE-2017-11424: HMAC keyed with an RSA public key in PKCS#1 PEM form ("BEGIN RSA PUBLIC KEY").
- CVE-2022-29217 (GHSA-ffqj-6fqr-9h24): HMAC keyed with an OpenSSH-format public key.
- CVE-2024-53861 (pyjwt#1020): 2.10.0 matched a string `issuer` as a substring.
- CVE-2025-45768: HMAC with a weak (short) key.
- CVE-2026-32597 (GHSA-752w-5fwx-jx9f): unknown `crit` extensions were accepted.
- CVE-2026-48523 (GHSA-jq35-7prp-9v3f): a key's own algorithm verified a token whose header named
  another, allowed one.
- CVE-2026-48524: every unknown `kid` triggered a JWKS fetch, without limit.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from broker.sandbox.issuer import IssuerKeyPair, b64url
from tests.adversarial.forge import gh_claims, gh_header
from tests.helpers import assert_refused


def hs(header: dict[str, Any], payload: dict[str, Any], secret: bytes, digest: Any = hashlib.sha256) -> str:
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}"
    return f"{signing_input}.{b64url(hmac.new(secret, signing_input.encode(), digest).digest())}"


def test_cve_2017_11424_hmac_keyed_with_a_pkcs1_pem_public_key(sandbox, broker, attack):
    pem = sandbox.github.key.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.PKCS1
    )
    assert pem.startswith(b"-----BEGIN RSA PUBLIC KEY-----")
    attack(hs(gh_header(sandbox, alg="HS256"), gh_claims(sandbox), pem), reason="alg 'HS256' not in")


@pytest.mark.parametrize(
    "alg,digest", [("HS256", hashlib.sha256), ("HS384", hashlib.sha384), ("HS512", hashlib.sha512)]
)
def test_cve_2022_29217_hmac_keyed_with_an_openssh_public_key(sandbox, broker, attack, alg, digest):
    ssh = sandbox.github.key.private_key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    assert ssh.startswith(b"ssh-rsa ")
    attack(hs(gh_header(sandbox, alg=alg), gh_claims(sandbox), ssh, digest), reason=f"alg '{alg}' not in")


@pytest.mark.parametrize(
    "make_iss",
    [
        lambda url: "http",
        lambda url: url[:12],
        lambda url: url.split("//")[1],
        lambda url: url[len("http://") :],
        lambda url: "",
        lambda url: "/",
    ],
)
def test_cve_2024_53861_a_substring_of_the_issuer_is_not_the_issuer(sandbox, broker, attack, make_iss):
    iss = make_iss(sandbox.github.url)
    assert iss in sandbox.github.url and iss != sandbox.github.url
    attack(sandbox.github.mint(gh_claims(sandbox, iss=iss)), reason="unknown issuer")


def test_cve_2025_45768_a_short_hmac_key_is_never_a_key(sandbox, broker, attack):
    attack(hs(gh_header(sandbox, alg="HS256"), gh_claims(sandbox), b"k"), reason="alg 'HS256' not in")


@pytest.mark.parametrize(
    "extra",
    [
        {"crit": ["b64"], "b64": False},
        {"crit": ["x-policy"], "x-policy": "require-mfa"},
        {"crit": []},
    ],
)
def test_cve_2026_32597_critical_extensions_are_refused(sandbox, broker, attack, extra):
    attack(sandbox.github.sign_raw(gh_header(sandbox, **extra), gh_claims(sandbox)), reason="crit")


@pytest.mark.parametrize("scheme", ["PS256", "RS512", "RS384"])
def test_cve_2026_48523_the_header_alg_is_the_one_verified(sandbox, broker, attack, scheme):
    """Signed by the issuer's real key, but with another scheme than the RS256 the header claims."""
    header = json.dumps(gh_header(sandbox)).encode()
    payload = json.dumps(gh_claims(sandbox)).encode()
    signing_input = f"{b64url(header)}.{b64url(payload)}".encode()
    digest = {"256": hashes.SHA256(), "384": hashes.SHA384(), "512": hashes.SHA512()}[scheme[2:]]
    pad = (
        padding.PSS(padding.MGF1(digest), digest.digest_size)
        if scheme.startswith("PS")
        else padding.PKCS1v15()
    )
    signature = sandbox.github.key.private_key.sign(signing_input, pad, digest)
    attack(f"{signing_input.decode()}.{b64url(signature)}", reason="bad signature")


def test_cve_2026_48524_a_concurrent_flood_of_unknown_kids_costs_at_most_one_fetch(sandbox, broker):
    cache = broker.extensions["broker"].caches["github"]
    assert cache.refresh()
    before = sandbox.github.jwks_requests
    evil = IssuerKeyPair()  # one attacker key, forty kids the issuer never published
    tokens = [
        sandbox.github.sign_raw(gh_header(sandbox, kid=f"{evil.kid}-{n}"), gh_claims(sandbox), evil)
        for n in range(40)
    ]
    barrier = threading.Barrier(20)

    def send(token: str) -> Any:
        if tokens.index(token) < 20:
            barrier.wait()
        return sandbox.exchange(token)

    with ThreadPoolExecutor(20) as pool:
        for response in pool.map(send, tokens):
            assert_refused(response, 401, "invalid_token")
    assert sandbox.github.jwks_requests - before <= 1
