"""PyJWT's private `PyJWT._validate_claims`, which the broker calls for its second opinion on the
claims (exp, nbf, iat, aud, iss, required) of a token whose signature it already verified.

A private method can change in any PyJWT release. The lock file pins PyJWT, so an upgrade is a
reviewed change, and these tests are that review: they record how the broker really calls the
method (a spy around one real exchange) and fail loudly when its signature no longer takes those
arguments or when it stops refusing what the broker relies on it to refuse. When one fails, read
PyJWT's changelog for `_validate_claims`, then fix the broker's call or move it to `jwt.decode`.
"""

from __future__ import annotations

import copy
import inspect
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import jwt
import pytest

from broker.sandbox.stack import Sandbox

ORIGINAL = jwt.PyJWT._validate_claims
# The claims every CI token must carry, as the broker requires them of PyJWT too.
REQUIRED = ("iss", "aud", "sub", "exp", "iat", "jti")


@dataclass(frozen=True)
class BrokerCall:
    """One call the broker made: everything but the claims, to replay with other claim sets."""

    instance: jwt.PyJWT
    claims: dict[str, Any]
    options: dict[str, Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    def validate(self, claims: dict[str, Any]) -> None:
        ORIGINAL(self.instance, claims, self.options, *self.args, **self.kwargs)


@pytest.fixture(scope="module")
def broker_call(sandbox: Sandbox) -> Iterator[BrokerCall]:
    """The broker's own call, recorded during one granted exchange (the spy is in place before
    the broker is built, so a method bound at start-up is seen too)."""
    calls: list[BrokerCall] = []

    def spy(self: jwt.PyJWT, payload: dict[str, Any], options: Any, *args: Any, **kwargs: Any) -> None:
        calls.append(BrokerCall(self, copy.deepcopy(payload), dict(options), args, dict(kwargs)))
        return ORIGINAL(self, payload, options, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(jwt.PyJWT, "_validate_claims", spy)
        app = sandbox.serve_in_process()
        try:
            response = sandbox.exchange(sandbox.github_token())
        finally:
            app.extensions["broker"].close()
    assert response.status_code == 200, response.text
    # The sandbox's cloud stand-ins decode the broker's own assertion with PyJWT in this process
    # too; the broker's call is the one on the CI token's claims.
    ours = [c for c in calls if c.claims.get("iss") == sandbox.github.url]
    assert len(ours) == 1, (
        f"the broker called PyJWT._validate_claims {len(ours)} times on a CI token's claims, not once: "
        "if it no longer uses the private method, delete this file"
    )
    yield ours[0]


@pytest.fixture
def leeway(broker_call: BrokerCall) -> float:
    value = broker_call.kwargs["leeway"]
    assert isinstance(value, int | float) and 0 <= value < 600
    return float(value)


def valid_claims(broker_call: BrokerCall, *, without: str | None = None, **overrides: Any) -> dict[str, Any]:
    """The claims of the broker's call, fresh, with `overrides` and without the claim `without`."""
    now = int(time.time())
    claims = {
        **broker_call.claims,
        "iat": now - 5,
        "nbf": now - 5,
        "exp": now + 300,
        "jti": "a-fresh-jti",
    }
    claims.update(overrides)
    claims.pop(without or "", None)
    return claims


# -- the signature ---------------------------------------------------------------------------------


def test_the_signature_still_takes_the_arguments_the_broker_passes(broker_call):
    signature = inspect.signature(ORIGINAL)
    # Raises TypeError if a parameter the broker passes was renamed, removed or made positional.
    signature.bind(broker_call.instance, {}, broker_call.options, *broker_call.args, **broker_call.kwargs)


def test_the_signature_is_the_one_reviewed():
    """Names, kinds and defaults as of PyJWT 2.15 (annotations aside). A change here is PyJWT
    changing the method: review what it now does before updating this list."""
    P = inspect.Parameter
    parameters = [(p.name, p.kind, p.default) for p in inspect.signature(ORIGINAL).parameters.values()]
    assert parameters == [
        ("self", P.POSITIONAL_OR_KEYWORD, P.empty),
        ("payload", P.POSITIONAL_OR_KEYWORD, P.empty),
        ("options", P.POSITIONAL_OR_KEYWORD, P.empty),
        ("audience", P.POSITIONAL_OR_KEYWORD, None),
        ("issuer", P.POSITIONAL_OR_KEYWORD, None),
        ("subject", P.POSITIONAL_OR_KEYWORD, None),
        ("leeway", P.POSITIONAL_OR_KEYWORD, 0),
    ]


def test_the_broker_passes_pyjwt_full_options_with_every_check_on(broker_call):
    # `_validate_claims` reads the merged options (`PyJWT.options`), never the caller's partial
    # dict: a key PyJWT added and the broker's dict lacks would be a KeyError, a 500.
    assert set(jwt.PyJWT().options) <= set(broker_call.options)
    for check in ("verify_exp", "verify_nbf", "verify_iat", "verify_aud", "verify_iss"):
        assert broker_call.options[check] is True, check
    assert set(REQUIRED) <= set(broker_call.options["require"])
    assert broker_call.kwargs["audience"] == broker_call.claims["aud"]
    assert broker_call.kwargs["issuer"] == broker_call.claims["iss"]


# -- the behaviour -----------------------------------------------------------------------------


def test_a_valid_claim_set_passes_and_is_left_unchanged(broker_call):
    claims = valid_claims(broker_call)
    before = copy.deepcopy(claims)
    assert broker_call.validate(claims) is None
    assert claims == before
    # A list audience holding ours is accepted, as the broker's own check accepts it.
    broker_call.validate(valid_claims(broker_call, aud=["someone-else", broker_call.claims["aud"]]))


@pytest.mark.parametrize("claim", REQUIRED)
def test_a_missing_required_claim_is_refused(broker_call, claim):
    with pytest.raises(jwt.MissingRequiredClaimError):
        broker_call.validate(valid_claims(broker_call, without=claim))


def test_an_expired_token_is_refused_past_the_leeway_only(broker_call, leeway):
    now = int(time.time())
    with pytest.raises(jwt.ExpiredSignatureError):
        broker_call.validate(valid_claims(broker_call, exp=now - int(leeway) - 5))
    broker_call.validate(valid_claims(broker_call, exp=now - int(leeway) + 5))


def test_a_token_not_yet_valid_is_refused(broker_call, leeway):
    later = int(time.time() + leeway) + 60
    with pytest.raises(jwt.ImmatureSignatureError):
        broker_call.validate(valid_claims(broker_call, nbf=later))
    with pytest.raises(jwt.ImmatureSignatureError):
        broker_call.validate(valid_claims(broker_call, iat=later))


@pytest.mark.parametrize(
    ("claim", "value", "error"),
    [
        ("iat", "yesterday", jwt.InvalidIssuedAtError),
        ("exp", "soon", jwt.DecodeError),
        ("nbf", [1], jwt.DecodeError),
    ],
)
def test_a_malformed_time_claim_is_refused(broker_call, claim, value, error):
    with pytest.raises(error):
        broker_call.validate(valid_claims(broker_call, **{claim: value}))


@pytest.mark.parametrize("aud", ["someone-else", ["someone-else"], 42, {"aud": "x"}, [42]])
def test_a_wrong_or_malformed_audience_is_refused(broker_call, aud):
    with pytest.raises(jwt.InvalidAudienceError):
        broker_call.validate(valid_claims(broker_call, aud=aud))


def test_a_wrong_issuer_is_refused(broker_call):
    with pytest.raises(jwt.InvalidIssuerError):
        broker_call.validate(valid_claims(broker_call, iss="https://attacker.example"))
