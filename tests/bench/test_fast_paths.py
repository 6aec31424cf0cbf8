"""The two request-path shortcuts the benchmark led to keep their meaning.

- PyJWT's second opinion now runs on the claims our parser produced (no second parse of the token):
  it must still refuse what PyJWT would refuse.
- The STS client reads timestamps with `datetime.fromisoformat`: it must give the same instants as
  botocore's own parser, and hand anything else to it.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pytest
from botocore.utils import parse_timestamp

from broker.clouds.aws import _botocore_session
from broker.errors import InvalidToken
from broker.verify import _PYJWT_CLAIMS


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {
        "iss": "https://issuer.example",
        "aud": "https://broker.example",
        "sub": "repo:x",
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "jti": "j",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


# As the verifier builds them for a provider whose tokens always carry sub and jti (GitHub's).
OPTIONS = {**_PYJWT_CLAIMS.options, "require": ["iss", "aud", "exp", "iat", "sub", "jti"]}


def validate(c: dict[str, Any]) -> None:
    _PYJWT_CLAIMS.validate(
        c, OPTIONS, audience="https://broker.example", issuer="https://issuer.example", leeway=60
    )


def test_pyjwt_accepts_a_good_claims_set():
    validate(claims())


@pytest.mark.parametrize(
    "bad, error",
    [
        (dict(exp=int(time.time()) - 3600), "ExpiredSignatureError"),
        (dict(nbf=int(time.time()) + 3600), "ImmatureSignatureError"),
        (dict(aud="https://elsewhere.example"), "InvalidAudienceError"),
        (dict(iss="https://evil.example"), "InvalidIssuerError"),
        (dict(jti=None), "MissingRequiredClaimError"),
        (dict(iat="yesterday"), "InvalidIssuedAtError"),
    ],
)
def test_pyjwt_still_refuses_what_it_refused_when_it_decoded_the_token(bad, error):
    import jwt

    with pytest.raises(jwt.PyJWTError) as raised:
        validate(claims(**bad))
    assert type(raised.value).__name__ == error


def test_the_verifier_turns_a_pyjwt_refusal_into_invalid_token(sandbox, broker):
    verifier = broker.extensions["broker"].verifier
    provider = broker.extensions["broker"].config.providers["github"]
    with pytest.raises(InvalidToken) as raised:
        verifier._check_with_pyjwt(claims(iss=provider.issuer, exp=int(time.time()) - 3600), provider)
    assert raised.value.reason == "pyjwt: ExpiredSignatureError"


def timestamp_parser() -> Any:
    factory = _botocore_session().get_component("response_parser_factory")
    return factory._defaults["timestamp_parser"]


@pytest.mark.parametrize(
    "value", ["2026-11-28T06:32:51Z", "2026-11-28T06:32:51.123456Z", "2026-11-28T07:32:51+01:00"]
)
def test_iso_timestamps_parse_to_the_same_instant_as_botocores_parser(value):
    ours = timestamp_parser()(value)
    assert ours.tzinfo is not None
    assert ours == parse_timestamp(value)


@pytest.mark.parametrize("value", ["2026-11-28T06:32:51", "Sat, 28 Nov 2026 06:32:51 GMT", 1795847571])
def test_anything_else_goes_to_botocores_parser(value):
    ours = timestamp_parser()(value)
    assert ours == parse_timestamp(value)
    assert ours.astimezone(UTC) == parse_timestamp(value).astimezone(UTC)
    assert isinstance(ours, datetime)
