"""Strict token parsing, on its own: canonical base64url, strict JSON, no dangerous headers."""

from __future__ import annotations

import pytest

from broker import jose
from broker.errors import InvalidToken
from broker.sandbox.issuer import b64url


def token(header: bytes, payload: bytes = b"{}", sig: bytes = b"sig") -> str:
    return f"{b64url(header)}.{b64url(payload)}.{b64url(sig)}"


def test_a_well_formed_token_parses():
    parsed = jose.parse(token(b'{"alg":"RS256","kid":"k","typ":"JWT"}', b'{"sub":"x"}'))
    assert parsed.header["kid"] == "k" and parsed.claims == {"sub": "x"} and parsed.signature == b"sig"


@pytest.mark.parametrize(
    "header,reason",
    [
        (b'{"alg":"RS256"}', "no usable kid"),
        (b'{"alg":"RS256","kid":""}', "no usable kid"),
        (b'{"alg":"RS256","kid":7}', "no usable kid"),
        (b'{"alg":"RS256","kid":"k","typ":"JWE"}', "typ"),
        (b'{"alg":"RS256","kid":"k","zip":"DEF"}', "header carries zip"),
        (b'{"alg":"RS256","kid":"k","x5c":["MII"]}', "header carries x5c"),
        (b'{"alg":1,"kid":"k"}', "no alg"),
    ],
)
def test_headers_we_do_not_accept(header, reason):
    with pytest.raises(InvalidToken) as info:
        jose.parse(token(header))
    assert reason in info.value.reason


def test_infinity_and_nan_are_not_json():
    with pytest.raises(InvalidToken, match="malformed"):
        jose.parse(token(b'{"alg":"RS256","kid":"k"}', b'{"exp": Infinity}'))


def test_a_number_too_large_for_a_float_is_refused_not_turned_into_infinity():
    for number in (b"1e400", b"-1e400", b"1" + b"0" * 400 + b".0"):
        with pytest.raises(InvalidToken, match="malformed"):
            jose.parse(token(b'{"alg":"RS256","kid":"k"}', b'{"run_id": ' + number + b"}"))
    assert jose.parse(token(b'{"alg":"RS256","kid":"k"}', b'{"n": 1.5e300}')).claims["n"] == 1.5e300


def test_invalid_utf8_is_refused():
    with pytest.raises(InvalidToken):
        jose.parse(token(b'{"alg":"RS256","kid":"k"}', b'{"sub": "\xff"}'))


def test_a_segment_of_impossible_length_is_refused():
    good = token(b'{"alg":"RS256","kid":"k"}')
    h, p, s = good.split(".")
    with pytest.raises(InvalidToken):
        jose.parse(f"{h}.{p}.{s}AAAAA"[: len(f"{h}.{p}.") + 5])  # 5 chars: 4n+1 is never valid
