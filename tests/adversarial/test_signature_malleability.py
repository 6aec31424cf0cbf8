"""Wycheproof-style signature malleability and edge values, for ES256 and RS256.

ECDSA is malleable by design: (r, n - s) verifies wherever (r, s) does (JOSE does not require
low-S, and neither does OpenSSL). So the property that matters is that single use is keyed on the
token's (issuer, jti), not on its bytes: a malleated twin can never be a second grant. Every
non-canonical encoding (DER instead of raw r||s, padded or truncated integers, out-of-range values,
RSA signatures of the wrong length) is refused outright.
"""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from tests.adversarial.forge import gh_claims, signature_of, signing_input, with_signature

P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def rs(signature: bytes) -> tuple[int, int]:
    return int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")


def raw(r: int, s: int, size: int = 32) -> bytes:
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")


@pytest.fixture
def ec_issuer(second_issuer: Any) -> Any:
    return second_issuer("ES256")


def ec_token(sandbox: Any, issuer: Any) -> str:
    return issuer.mint(gh_claims(sandbox, iss=issuer.url))


@pytest.mark.parametrize("twin_first", [False, True])
def test_a_high_s_twin_is_never_a_second_grant(sandbox, ec_issuer, attack, twin_first):
    token = ec_token(sandbox, ec_issuer)
    r, s = rs(signature_of(token))
    twin = with_signature(token, raw(r, P256_N - s))
    first, second = (twin, token) if twin_first else (token, twin)
    assert sandbox.exchange(first).status_code == 200
    attack(second, reason="replayed")


def test_a_der_encoded_ecdsa_signature_is_refused(sandbox, ec_issuer, attack):
    token = ec_token(sandbox, ec_issuer)
    der = encode_dss_signature(*rs(signature_of(token)))
    attack(with_signature(token, der), reason="bad signature")


def test_a_der_signature_made_by_the_real_key_is_refused(sandbox, ec_issuer, attack):
    token = ec_token(sandbox, ec_issuer)
    der = ec_issuer.key.private_key.sign(signing_input(token), ec.ECDSA(hashes.SHA256()))
    attack(with_signature(token, der), reason="bad signature")


@pytest.mark.parametrize(
    "case",
    [
        "psychic r=0 s=0",
        "r=0",
        "s=0",
        "r=n s=n",
        "r=n+r",
        "s=n+s",
        "swapped",
        "all ff",
        "r=1 s=1",
        "leading zero on r",
        "truncated",
        "padded to 33+33",
        "p-384 length",
        "empty",
    ],
)
def test_out_of_range_or_non_canonical_ecdsa_signatures_are_refused(sandbox, ec_issuer, attack, case):
    token = ec_token(sandbox, ec_issuer)
    sig = signature_of(token)
    r, s = rs(sig)
    forged = {
        "psychic r=0 s=0": raw(0, 0),
        "r=0": raw(0, s),
        "s=0": raw(r, 0),
        "r=n s=n": raw(P256_N, P256_N),
        "r=n+r": (r + P256_N).to_bytes(33, "big") + s.to_bytes(32, "big"),
        "s=n+s": r.to_bytes(32, "big") + (s + P256_N).to_bytes(33, "big"),
        "swapped": raw(s, r),
        "all ff": b"\xff" * 64,
        "r=1 s=1": raw(1, 1),
        "leading zero on r": b"\x00" + sig,
        "truncated": sig[:-1],
        "padded to 33+33": raw(r, s, 33),
        "p-384 length": sig + b"\x00" * 32,
        "empty": b"",
    }[case]
    attack(with_signature(token, forged))


# -- RSA -------------------------------------------------------------------------------------------


def rsa_modulus(sandbox: Any) -> int:
    return sandbox.github.key.private_key.public_key().public_numbers().n


@pytest.mark.parametrize(
    "case",
    [
        "leading zero",
        "plus n",
        "zero",
        "one",
        "n minus one",
        "n",
        "all ff",
        "doubled",
        "truncated",
    ],
)
def test_rsa_signatures_of_the_wrong_length_or_range_are_refused(sandbox, broker, attack, case):
    token = sandbox.github_token()
    sig = signature_of(token)
    n = rsa_modulus(sandbox)
    value = int.from_bytes(sig, "big")
    forged = {
        "leading zero": b"\x00" + sig,
        "plus n": (value + n).to_bytes(257, "big"),
        "zero": b"\x00" * 256,
        "one": (1).to_bytes(256, "big"),
        "n minus one": (n - 1).to_bytes(256, "big"),
        "n": n.to_bytes(256, "big"),
        "all ff": b"\xff" * 256,
        "doubled": sig + sig,
        "truncated": sig[:-1],
    }[case]
    attack(with_signature(token, forged))


def test_an_rsa_signature_with_its_leading_zero_byte_stripped_is_refused(sandbox, broker, attack):
    """About one signature in 256 starts with 0x00; its 255-byte spelling must not verify."""
    for _ in range(4000):
        token = sandbox.github_token()
        if signature_of(token)[0] == 0:
            break
    else:
        pytest.fail("no RSA signature starting with 0x00 in 4000 tries")
    attack(with_signature(token, signature_of(token)[1:]), reason="bad signature")
    assert sandbox.exchange(token).status_code == 200  # the canonical spelling still works
