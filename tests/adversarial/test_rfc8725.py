"""RFC 8725 (JWT Best Current Practices), section by section: the cases the core's attack tests
(tests/test_verify_attacks.py) do not already cover. Every case goes through the HTTP API and
asserts status, error code, no cloud call and nothing secret in any log (the `attack` fixture)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from werkzeug.wrappers import Response

from broker.sandbox.issuer import IssuerKeyPair, b64url
from broker.sandbox.wsgi import LocalServer
from tests.adversarial.forge import compact, gh_claims, gh_header, gl_claims


def rsa_sign(sandbox: Any, data: bytes, alg: str) -> bytes:
    key = sandbox.github.key.private_key
    digest = {"256": hashes.SHA256(), "384": hashes.SHA384(), "512": hashes.SHA512()}[alg[2:]]
    pad = (
        padding.PKCS1v15() if alg.startswith("RS") else padding.PSS(padding.MGF1(digest), digest.digest_size)
    )
    return key.sign(data, pad, digest)


# -- 3.1 Perform algorithm verification ------------------------------------------------------------


@pytest.mark.parametrize("alg", ["RS384", "RS512", "PS256", "PS512"])
def test_3_1_the_real_key_under_an_algorithm_the_provider_does_not_pin_is_refused(
    sandbox, broker, attack, alg
):
    header = json.dumps(gh_header(sandbox, alg=alg)).encode()
    payload = json.dumps(gh_claims(sandbox)).encode()
    signing_input = f"{b64url(header)}.{b64url(payload)}".encode()
    token = f"{signing_input.decode()}.{b64url(rsa_sign(sandbox, signing_input, alg))}"
    attack(token, reason=f"alg '{alg}' not in ['RS256']")


# -- 3.2 Use appropriate algorithms ----------------------------------------------------------------


def test_3_2_an_ec_algorithm_naming_an_rsa_key_is_refused(sandbox, second_issuer, attack):
    issuer = second_issuer("RS256", algorithms=["RS256", "ES256"])
    evil = IssuerKeyPair("ES256")
    token = issuer.sign_raw(
        {"alg": "ES256", "kid": issuer.key.kid, "typ": "JWT"}, gh_claims(sandbox, iss=issuer.url), evil
    )
    attack(token, reason="not usable with key")


@pytest.mark.parametrize("alg", ["HS256", "HS512", "EdDSA", "ES256K", "RSA-OAEP", "dir", ""])
def test_3_2_algorithms_outside_the_asymmetric_allow_list_are_refused(sandbox, broker, attack, alg):
    token = compact(gh_header(sandbox, alg=alg), gh_claims(sandbox), b"\x00" * 32)
    attack(token)


# -- 3.4 Validate cryptographic inputs -------------------------------------------------------------


def test_3_4_a_weak_rsa_key_in_the_issuers_jwks_is_never_used(sandbox, second_issuer, attack):
    from cryptography.hazmat.primitives.asymmetric import rsa
    from jwt.algorithms import RSAAlgorithm

    issuer = second_issuer("RS256")
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    jwk = {
        **RSAAlgorithm.to_jwk(weak.public_key(), as_dict=True),
        "kid": "weak",
        "alg": "RS256",
        "use": "sig",
    }
    issuer.jwks_hook = lambda r: Response(
        json.dumps({"keys": [k.public_jwk for k in issuer.keys] + [jwk]}), mimetype="application/json"
    )
    header = json.dumps({"alg": "RS256", "kid": "weak", "typ": "JWT"}).encode()
    payload = json.dumps(gh_claims(sandbox, iss=issuer.url)).encode()
    signing_input = f"{b64url(header)}.{b64url(payload)}".encode()
    signature = weak.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    attack(f"{signing_input.decode()}.{b64url(signature)}", reason="not in the issuer's JWKS")


def test_3_4_an_ec_point_not_on_the_curve_is_never_a_key(sandbox, second_issuer, attack):
    """Invalid-curve attacks need the verifier to accept an off-curve public key; the JWKS parser
    refuses one, so no token can name it."""
    issuer = second_issuer("ES256")
    bogus = {
        "kty": "EC",
        "crv": "P-256",
        "kid": "off-curve",
        "use": "sig",
        "alg": "ES256",
        "x": b64url((1).to_bytes(32, "big")),
        "y": b64url((1).to_bytes(32, "big")),
    }
    issuer.jwks_hook = lambda r: Response(
        json.dumps({"keys": [k.public_jwk for k in issuer.keys] + [bogus]}), mimetype="application/json"
    )
    evil = IssuerKeyPair("ES256")
    token = issuer.sign_raw(
        {"alg": "ES256", "kid": "off-curve", "typ": "JWT"}, gh_claims(sandbox, iss=issuer.url), evil
    )
    attack(token, reason="not in the issuer's JWKS")


# -- 3.7 Use UTF-8 ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "encode",
    [
        lambda text: text.encode("utf-16"),
        lambda text: text.encode("utf-16-le"),
        lambda text: b"\xef\xbb\xbf" + text.encode(),  # UTF-8 with a byte order mark
        lambda text: text.replace('"push"', '"p\xfcsh"').encode("latin-1"),
    ],
)
def test_3_7_a_validly_signed_payload_that_is_not_plain_utf8_json_is_refused(sandbox, broker, attack, encode):
    payload = encode(json.dumps(gh_claims(sandbox)))
    attack(sandbox.github.sign_raw(gh_header(sandbox), payload), reason="payload is not valid JSON")


def test_3_7_a_lone_surrogate_in_the_jti_is_a_clean_single_use(sandbox, broker, attack):
    """JSON can spell \\ud800, UTF-8 cannot: it must neither crash the replay store nor bypass it."""
    token = sandbox.github.mint(gh_claims(sandbox, jti="\ud800" + str(time.time_ns())))
    assert sandbox.exchange(token).status_code == 200
    attack(token, reason="replayed")


# -- 3.8 Validate issuer and subject ---------------------------------------------------------------


@pytest.mark.parametrize(
    "make_iss",
    [
        lambda url: None,
        lambda url: 42,
        lambda url: [url],
        lambda url: {"url": url},
        lambda url: "",
    ],
)
def test_3_8_an_issuer_that_is_not_a_string_is_unknown(sandbox, broker, attack, make_iss):
    attack(sandbox.github.mint(gh_claims(sandbox, iss=make_iss(sandbox.github.url))), reason="unknown issuer")


@pytest.mark.parametrize("sub", ["", None, 7, ["repo:octo-org/octo-repo"]])
def test_3_8_a_subject_that_is_not_a_non_empty_string_is_refused(sandbox, broker, attack, sub):
    attack(sandbox.github.mint(gh_claims(sandbox, sub=sub)), reason="sub is not a non-empty string")


# -- 3.9 Use and validate audience -----------------------------------------------------------------


@pytest.mark.parametrize(
    "make_aud",
    [
        lambda url: [],
        lambda url: {"aud": url},
        lambda url: [[url]],
        lambda url: url.upper(),
        lambda url: 1,
        lambda url: None,
        lambda url: True,
        lambda url: url + "\x00",
    ],
)
def test_3_9_audience_type_and_case_confusion_is_refused(sandbox, broker, attack, make_aud):
    attack(sandbox.github.mint(gh_claims(sandbox, aud=make_aud(sandbox.broker_url))))


def test_3_9_githubs_default_audience_for_aws_is_not_ours(sandbox, broker, attack):
    """A token minted for configure-aws-credentials (aud sts.amazonaws.com) cannot be replayed here."""
    attack(sandbox.github_token(aud="sts.amazonaws.com"), reason="lacks")


# -- 3.10 Do not trust received claims -------------------------------------------------------------


@pytest.mark.parametrize(
    "kid",
    [
        "../../../../../../dev/null",
        "' OR '1'='1' --",
        "$(id)",
        "|cat /etc/passwd",
        "k" * 256,
        "\x00",
        "%00",
        "https://attacker.example/key.pem",
    ],
)
def test_3_10_kid_injection_only_ever_looks_the_kid_up(sandbox, broker, attack, kid):
    token = sandbox.github.sign_raw(gh_header(sandbox, kid=kid), gh_claims(sandbox), IssuerKeyPair())
    attack(token, reason="not in the issuer's JWKS")


@pytest.mark.parametrize("kid", [None, 7, ["a"], {"kid": "x"}, "", "k" * 257])
def test_3_10_a_kid_that_is_not_a_short_string_is_refused(sandbox, broker, attack, kid):
    attack(sandbox.github.sign_raw(gh_header(sandbox, kid=kid), gh_claims(sandbox)), reason="no usable kid")


@pytest.mark.parametrize("param", ["jku", "x5u"])
def test_3_10_a_key_url_in_the_header_is_never_fetched(sandbox, broker, attack, param):
    hits: list[str] = []

    def attacker(environ: dict[str, Any], start_response: Any) -> Any:
        hits.append(environ.get("PATH_INFO", ""))
        return Response(json.dumps({"keys": [evil.public_jwk]}), mimetype="application/json")(
            environ, start_response
        )

    evil = IssuerKeyPair()
    with LocalServer(attacker) as server:
        token = sandbox.github.sign_raw(
            gh_header(sandbox, kid=evil.kid, **{param: f"{server.url}/jwks"}), gh_claims(sandbox), evil
        )
        attack(token, reason=f"header carries {param}")
        assert requests.get(f"{server.url}/probe", timeout=5).ok  # the attacker's server was up
    assert hits == ["/probe"], "the broker fetched a URL the token named"


# -- 3.11 Use explicit typing ----------------------------------------------------------------------


@pytest.mark.parametrize("typ", ["secevent+jwt", "JOSE", "JWS", "", 7, ["JWT"], "JWT\x00"])
def test_3_11_a_type_other_than_jwt_is_refused(sandbox, broker, attack, typ):
    attack(sandbox.github.sign_raw(gh_header(sandbox, typ=typ), gh_claims(sandbox)), reason="typ")


# -- 3.12 Mutually exclusive validation rules / 2.8 cross-JWT confusion ----------------------------


@pytest.mark.parametrize("audience", ["BROKER", "sts.amazonaws.com"])
def test_3_12_the_brokers_own_assertion_is_not_a_ci_token(sandbox, broker, attack, audience):
    signer = broker.extensions["broker"].signer
    aud = sandbox.broker_url if audience == "BROKER" else audience
    assertion = signer.mint(
        "deploy-prod", aud, {"provider": "github", "repository_id": "892734123", "ref": "refs/heads/main"}
    )
    attack(assertion, reason="unknown issuer")


def test_3_12_a_github_token_shaped_like_a_gitlab_one_gets_no_gitlab_role(sandbox, broker, attack):
    """Claims are read under the schema of the provider that signed them, never of their shape."""
    forged = gl_claims(
        sandbox,
        iss=sandbox.github.url,
        repository="g/p",
        repository_id="20",
        repository_owner="g",
        repository_owner_id="72",
        run_id="1",
    )
    attack(
        sandbox.github.mint(forged),
        403,
        "access_denied",
        role="gitlab-deploy",
        reason="rule is for provider 'gitlab', token is from 'github'",
    )


# -- 2.6 Multiplicity of JSON encodings ------------------------------------------------------------


@pytest.mark.parametrize(
    "value", [892734123.0, 8.92734123e8, "892734123.0", " 892734123", "0892734123", True]
)
def test_2_6_another_spelling_of_the_pinned_id_does_not_match(sandbox, broker, attack, value):
    attack(sandbox.github.mint(gh_claims(sandbox, repository_id=value)), 403, "access_denied")


@pytest.mark.parametrize(
    "text",
    [
        '{"a": 1,}',
        "{'a': 1}",
        '{"a": 1} // comment',
        '{"a": NaN}',
        '{"a": 01}',
        '{"a": 1}{"b": 2}',
    ],
)
def test_2_6_lenient_json_spellings_are_refused(sandbox, broker, attack, text):
    attack(sandbox.github.sign_raw(gh_header(sandbox), text.encode()), reason="payload is not valid JSON")


def test_2_6_an_astronomical_exp_is_refused(sandbox, broker, attack):
    attack(sandbox.github.mint(gh_claims(sandbox, exp=10**40)), reason="is not a sane time")


def test_2_6_an_exp_centuries_after_iat_is_refused_even_within_year_9999(sandbox, broker, attack):
    attack(sandbox.github.mint(gh_claims(sandbox, exp=253402300799)), reason="after iat, outside")


def test_2_6_an_exp_before_iat_is_refused(sandbox, broker, attack):
    claims = gh_claims(sandbox)
    attack(sandbox.github.mint({**claims, "iat": claims["exp"]}), reason="after iat, outside")


@pytest.mark.parametrize("name", ["iat", "nbf"])
def test_2_6_a_time_claim_past_year_9999_is_refused(sandbox, broker, attack, name):
    attack(sandbox.github.mint(gh_claims(sandbox, **{name: 253402300800})), reason="is not a sane time")


def test_2_6_a_gitlab_token_living_as_long_as_a_long_job_is_accepted(sandbox, broker):
    # GitLab sets exp to the job's timeout: a three-hour job's token is a real token.
    import time

    now = int(time.time())
    token = sandbox.gitlab_token(iat=now, nbf=now, exp=now + 3 * 3600)
    assert sandbox.exchange(token, role="gitlab-deploy").status_code == 200
