"""Each attack on token verification, through the HTTP API: refused with 401 and the reason that
names the check which stopped it, and the cloud never called."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from broker.sandbox.issuer import IssuerKeyPair, b64url, github_claims
from tests.helpers import assert_refused, last_refusal


@pytest.fixture
def attack(sandbox, broker, audit_events):
    """Send a token; assert 401 invalid_token, the audit reason, and that STS saw nothing."""

    def send(token: str, reason: str, *, status: int = 401, code: str = "invalid_token") -> dict[str, Any]:
        calls_before = len(sandbox.sts.calls)
        response = sandbox.exchange(token)
        assert_refused(response, status, code)
        event = last_refusal(audit_events)
        assert reason in event["reason"], event["reason"]
        assert len(sandbox.sts.calls) == calls_before, "STS was called for a refused token"
        assert token not in json.dumps(audit_events) and token not in response.text
        return event

    return send


def claims(sandbox, **overrides: Any) -> dict[str, Any]:
    return github_claims(**{"iss": sandbox.github.url, "aud": sandbox.broker_url, **overrides})


def header(sandbox, **overrides: Any) -> dict[str, Any]:
    return {"alg": "RS256", "kid": sandbox.github.key.kid, "typ": "JWT", **overrides}


def test_a_genuine_token_is_granted(sandbox, broker):
    assert sandbox.exchange(sandbox.github_token()).status_code == 200


@pytest.mark.parametrize("alg", ["none", "None", "nOnE", "NONE"])
def test_alg_none_is_refused(sandbox, attack, alg):
    h = b64url(json.dumps(header(sandbox, alg=alg)).encode())
    p = b64url(json.dumps(claims(sandbox)).encode())
    attack(f"{h}.{p}.{b64url(b'x')}", f"alg {alg!r} not in")


def test_alg_none_with_empty_signature_is_refused(sandbox, attack):
    h = b64url(json.dumps(header(sandbox, alg="none")).encode())
    p = b64url(json.dumps(claims(sandbox)).encode())
    attack(f"{h}.{p}.", "signature is not unpadded base64url")


def test_hs256_keyed_with_the_issuers_public_key_is_refused(sandbox, attack):
    public_pem = sandbox.github.key.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    h = b64url(json.dumps(header(sandbox, alg="HS256")).encode())
    p = b64url(json.dumps(claims(sandbox)).encode())
    mac = hmac.new(public_pem, f"{h}.{p}".encode(), hashlib.sha256).digest()
    attack(f"{h}.{p}.{b64url(mac)}", "alg 'HS256' not in")


def test_an_embedded_jwk_is_refused(sandbox, attack):
    evil = IssuerKeyPair()
    token = sandbox.github.sign_raw(header(sandbox, kid=evil.kid, jwk=evil.public_jwk), claims(sandbox), evil)
    attack(token, "header carries jwk")


def test_an_embedded_jwk_naming_the_real_kid_is_refused(sandbox, attack):
    evil = IssuerKeyPair()
    token = sandbox.github.sign_raw(header(sandbox, jwk=evil.public_jwk), claims(sandbox), evil)
    attack(token, "header carries jwk")


@pytest.mark.parametrize("param", ["jku", "x5u"])
def test_a_key_url_to_another_host_is_refused(sandbox, attack, param):
    token = sandbox.github.sign_raw(
        header(sandbox, **{param: "https://attacker.example/jwks"}), claims(sandbox)
    )
    attack(token, f"header carries {param}")


def test_crit_is_refused(sandbox, attack):
    token = sandbox.github.sign_raw(header(sandbox, crit=["exp"]), claims(sandbox))
    attack(token, "header carries crit")


def test_cty_nested_token_is_refused(sandbox, attack):
    token = sandbox.github.sign_raw(header(sandbox, cty="JWT"), claims(sandbox))
    attack(token, "header carries cty")


def test_a_token_signed_by_another_key_under_the_real_kid_is_refused(sandbox, attack):
    evil = IssuerKeyPair()
    token = sandbox.github.sign_raw(header(sandbox), claims(sandbox), evil)
    attack(token, "bad signature")


def test_a_tampered_payload_is_refused(sandbox, attack):
    h, p, s = sandbox.github_token().split(".")
    forged = json.loads(base64.urlsafe_b64decode(p + "=="))
    forged["repository_id"] = "1"
    attack(f"{h}.{b64url(json.dumps(forged).encode())}.{s}", "bad signature")


def test_a_padded_signature_is_refused(sandbox, attack):
    token = sandbox.github_token()
    h, p, s = token.split(".")
    attack(f"{h}.{p}.{s}=", "signature is not unpadded base64url")


def test_a_standard_alphabet_signature_is_refused(sandbox, attack):
    for _ in range(50):  # find a signature whose base64url spelling has - or _ in it
        token = sandbox.github_token()
        h, p, s = token.split(".")
        if "-" in s or "_" in s:
            break
    else:
        pytest.fail("no signature with - or _ in 50 tries")
    attack(f"{h}.{p}.{s.replace('-', '+').replace('_', '/')}", "signature is not unpadded base64url")


def test_non_canonical_trailing_bits_are_refused(sandbox, attack):
    h, p, s = sandbox.github_token().split(".")
    # RS256 signatures are 256 bytes: 342 base64 characters whose last one carries 4 unused bits.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(s[-1])
    s2 = s[:-1] + alphabet[last ^ 1]
    attack(f"{h}.{p}.{s2}", "signature is not canonical base64url")


@pytest.mark.parametrize(
    "make_iss",
    [
        lambda u: u + "/",
        lambda u: u + ".evil.example",
        lambda u: u[:-1],
        lambda u: u.upper(),
        lambda u: "https://token.actions.githubusercontent.com",
    ],
)
def test_an_issuer_that_is_not_exactly_configured_is_refused(sandbox, attack, make_iss):
    token = sandbox.github.mint(claims(sandbox, iss=make_iss(sandbox.github.url)))
    attack(token, "unknown issuer")


def test_a_token_for_another_audience_is_refused(sandbox, attack):
    attack(sandbox.github_token(aud="https://github.com/octo-org"), "lacks")


def test_an_audience_list_without_ours_is_refused(sandbox, attack):
    attack(sandbox.github_token(aud=["sts.amazonaws.com", sandbox.broker_url + "/"]), "lacks")


def test_an_audience_list_with_ours_is_granted(sandbox, broker):
    assert sandbox.exchange(sandbox.github_token(aud=["other", sandbox.broker_url])).status_code == 200


def test_a_token_without_audience_is_refused(sandbox, attack):
    c = claims(sandbox)
    del c["aud"]
    attack(sandbox.github.mint(c), "missing claim 'aud'")


@pytest.mark.parametrize(
    "name", ["iss", "sub", "exp", "iat", "jti", "repository_id", "repository_owner_id", "ref"]
)
def test_a_token_missing_a_required_claim_is_refused(sandbox, attack, name):
    c = claims(sandbox)
    del c[name]
    attack(
        sandbox.github.sign_raw(header(sandbox), c),
        "unknown issuer" if name == "iss" else f"missing claim {name!r}",
    )


def test_an_expired_token_is_refused(sandbox, attack):
    now = int(time.time())
    attack(sandbox.github_token(iat=now - 600, nbf=now - 600, exp=now - 120), "is past")


def test_an_expired_token_within_leeway_is_granted(sandbox, broker):
    now = int(time.time())
    assert sandbox.exchange(sandbox.github_token(iat=now - 300, exp=now - 30)).status_code == 200


def test_a_token_not_yet_valid_is_refused(sandbox, attack):
    now = int(time.time())
    attack(sandbox.github_token(nbf=now + 600, exp=now + 900), "nbf")


def test_a_token_issued_in_the_future_is_refused(sandbox, attack):
    now = int(time.time())
    attack(sandbox.github_token(iat=now + 600, nbf=now, exp=now + 900), "iat")


def test_a_token_older_than_token_max_age_is_refused(sandbox, attack):
    now = int(time.time())
    attack(sandbox.github_token(iat=now - 2000, nbf=now - 2000, exp=now + 600), "limit 900s")


@pytest.mark.parametrize(
    "name,value", [("exp", "9999999999"), ("exp", 9999999999.5), ("iat", True), ("nbf", "0"), ("iat", None)]
)
def test_a_time_claim_that_is_not_an_integer_is_refused(sandbox, attack, name, value):
    attack(sandbox.github_token(**{name: value}), f"{name} is not an integer")


def test_duplicate_json_keys_are_refused(sandbox, attack):
    c = claims(sandbox)
    body = json.dumps(c)[:-1] + ', "repository_id": "1"}'
    attack(sandbox.github.sign_raw(header(sandbox), body.encode()), "duplicate key 'repository_id'")


def test_duplicate_header_keys_are_refused(sandbox, attack):
    h = json.dumps(header(sandbox))[:-1] + ', "alg": "none"}'
    attack(sandbox.github.sign_raw(h.encode(), claims(sandbox)), "duplicate key 'alg'")


def test_a_replayed_token_is_refused(sandbox, broker, attack):
    token = sandbox.github_token()
    assert sandbox.exchange(token).status_code == 200
    attack(token, "replayed")


def test_the_same_jti_from_another_issuer_is_not_a_replay(sandbox, broker):
    jti = str(uuid.uuid4())
    assert sandbox.exchange(sandbox.github_token(jti=jti)).status_code == 200
    assert sandbox.exchange(sandbox.gitlab_token(jti=jti), role="gitlab-deploy").status_code == 200


@pytest.mark.parametrize(
    "token,reason",
    [
        ("garbage", "expected 3 dot-separated segments"),
        ("a.b.c.d", "expected 3 dot-separated segments"),
        ("....", "expected 3"),
        ("e30.e30.e30", "header has no alg"),
        ("bm90IGpzb24.e30.AA", "header is not valid JSON"),
        ("W10.e30.AA", "header is not a JSON object"),
    ],
)
def test_garbage_tokens_are_refused(sandbox, attack, token, reason):
    attack(token, reason)


def test_a_non_ascii_token_is_refused(sandbox, attack):
    attack("é.é.é", "not ASCII")


def test_an_unknown_kid_flood_causes_bounded_refetches(sandbox, broker, audit_events):
    broker.extensions["broker"].caches["github"].refresh()
    before = sandbox.github.jwks_requests
    evil = IssuerKeyPair()  # one attacker key, 25 kids the issuer never published
    for n in range(25):
        token = sandbox.github.sign_raw(header(sandbox, kid=f"{evil.kid}-{n}"), claims(sandbox), evil)
        assert_refused(sandbox.exchange(token), 401, "invalid_token")
        # The refusals also raise a denied_burst alert on the same log, whenever its thread runs.
        refusal = [e for e in audit_events if e["type"] == "exchange"][-1]
        assert "not in the issuer's JWKS" in refusal["reason"]
    # One refetch per cooldown (30 s) at most, however many unknown kids arrive.
    assert sandbox.github.jwks_requests - before <= 1


def test_a_token_over_the_size_limit_is_refused_before_any_crypto(sandbox, broker, audit_events):
    token = sandbox.github.mint(claims(sandbox, padding="x" * 20000))
    response = sandbox.exchange(token)
    assert_refused(response, 413, "payload_too_large")


def test_pyjwt_second_opinion_refuses_what_our_own_checks_would_miss(
    sandbox, broker, monkeypatch, audit_events
):
    from broker.verify import TokenVerifier

    monkeypatch.setattr(TokenVerifier, "_check_claims", lambda self, claims, provider: None)
    now = int(time.time())
    response = sandbox.exchange(sandbox.github_token(iat=now - 900, nbf=now - 900, exp=now - 300))
    assert_refused(response, 401, "invalid_token")
    assert "pyjwt: ExpiredSignatureError" in last_refusal(audit_events)["reason"]


@pytest.mark.parametrize("name,value", [("jti", 12345), ("jti", ""), ("sub", ["a"]), ("sub", "")])
def test_sub_and_jti_must_be_non_empty_strings(sandbox, attack, name, value):
    attack(sandbox.github_token(**{name: value}), f"{name} is not a non-empty string")
