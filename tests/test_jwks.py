"""The issuers' key cache: fetched off the request path, refreshed with care, failing closed."""

from __future__ import annotations

import json
import threading
import time

import pytest
from werkzeug.wrappers import Response

from broker.errors import InvalidToken, Unavailable
from broker.jwks import FetchError, KeyCache, KeyCacheSettings, parse_jwks
from broker.sandbox.issuer import LocalIssuer

FAST = KeyCacheSettings(refresh_interval=300, unknown_kid_cooldown=30, connect_timeout=1, read_timeout=1)


@pytest.fixture
def issuer():
    with LocalIssuer() as i:
        yield i


def test_keys_come_from_discovery(issuer):
    cache = KeyCache(issuer.url, settings=FAST)
    assert cache.refresh()
    assert cache.get(issuer.key.kid, "RS256").kid == issuer.key.kid
    assert issuer.discovery_requests == 1 and issuer.jwks_requests == 1


def test_a_discovery_document_for_another_issuer_is_refused(issuer):
    cache = KeyCache(issuer.url.replace("127.0.0.1", "localhost"), settings=FAST)
    assert not cache.refresh()
    assert "issuer does not equal" in cache.last_error


def test_a_configured_jwks_uri_skips_discovery(issuer):
    cache = KeyCache(issuer.url, jwks_uri=f"{issuer.url}/.well-known/jwks", settings=FAST)
    assert cache.refresh() and issuer.discovery_requests == 0


def test_no_keys_and_no_fetch_is_503(issuer):
    issuer.jwks_hook = lambda request: Response("down", status=500)
    cache = KeyCache(issuer.url, settings=FAST)
    with pytest.raises(Unavailable):
        cache.get(issuer.key.kid, "RS256")


@pytest.mark.parametrize(
    "bad",
    [
        lambda r: Response("down", status=500),
        lambda r: Response("not json", mimetype="application/json"),
        lambda r: Response(json.dumps({"keys": []}), mimetype="application/json"),
        lambda r: Response(json.dumps({"nokeys": 1}), mimetype="application/json"),
        lambda r: Response("", status=302, headers={"Location": "http://127.0.0.1:9/evil"}),
        "oversized",
    ],
)
def test_a_failing_refresh_keeps_the_cached_keys(issuer, bad):
    if bad == "oversized":  # valid JSON with a usable key, but past the size cap
        keys = {"keys": [k.public_jwk for k in issuer.keys], "pad": "x" * 300_000}
        bad = lambda r: Response(json.dumps(keys), mimetype="application/json")  # noqa: E731
    cache = KeyCache(issuer.url, settings=FAST)
    assert cache.refresh()
    issuer.jwks_hook = bad
    assert not cache.refresh()
    assert cache.get(issuer.key.kid, "RS256").kid == issuer.key.kid


def test_redirects_are_not_followed(issuer):
    with LocalIssuer() as other:
        issuer.jwks_hook = lambda r: Response(
            "", status=302, headers={"Location": f"{other.url}/.well-known/jwks"}
        )
        cache = KeyCache(issuer.url, settings=FAST)
        assert not cache.refresh()
        assert other.jwks_requests == 0


def test_a_new_kid_is_picked_up_after_one_refetch(issuer):
    cache = KeyCache(issuer.url, settings=KeyCacheSettings(unknown_kid_cooldown=0))
    cache.refresh()
    new = issuer.rotate()
    assert cache.get(new.kid, "RS256").kid == new.kid


def test_unknown_kids_refetch_at_most_once_per_cooldown(issuer):
    now = [1000.0]
    cache = KeyCache(issuer.url, settings=FAST, clock=lambda: now[0])
    cache.refresh()
    fetches = cache.fetch_count
    for i in range(20):
        with pytest.raises(InvalidToken):
            cache.get(f"unknown-{i}", "RS256")
    assert cache.fetch_count == fetches  # inside the cooldown since the last fetch
    now[0] += 31
    for i in range(20):
        with pytest.raises(InvalidToken):
            cache.get(f"again-{i}", "RS256")
    assert cache.fetch_count == fetches + 1


def test_concurrent_misses_share_one_fetch(issuer):
    gate = threading.Event()

    def slow(request):
        gate.wait(2)
        return Response(
            json.dumps({"keys": [k.public_jwk for k in issuer.keys]}), mimetype="application/json"
        )

    cache = KeyCache(issuer.url, jwks_uri=f"{issuer.url}/.well-known/jwks", settings=FAST)
    issuer.jwks_hook = slow
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(cache.get(issuer.key.kid, "RS256").kid))
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    time.sleep(0.2)
    gate.set()
    for t in threads:
        t.join(5)
    assert results == [issuer.key.kid] * 8
    assert issuer.jwks_requests == 1


def test_a_removed_key_stops_verifying_after_the_next_refresh(issuer):
    cache = KeyCache(issuer.url, settings=FAST)
    cache.refresh()
    old = issuer.key
    issuer.rotate(keep_old=False)
    assert cache.get(old.kid, "RS256")  # still cached until the refresh
    cache.refresh()
    with pytest.raises(InvalidToken):
        cache.get(old.kid, "RS256")


@pytest.mark.faults
def test_a_slow_jwks_endpoint_is_bounded_by_the_timeout(issuer):
    issuer.jwks_hook = lambda r: (time.sleep(3), Response("{}"))[1]
    cache = KeyCache(issuer.url, settings=FAST)
    start = time.monotonic()
    with pytest.raises(Unavailable):
        cache.get(issuer.key.kid, "RS256")
    assert time.monotonic() - start < 2.9


def test_an_rsa_key_is_not_usable_for_an_ec_algorithm(issuer):
    cache = KeyCache(issuer.url, settings=FAST)
    cache.refresh()
    with pytest.raises(InvalidToken, match="does not match its key"):
        cache.get(issuer.key.kid, "ES256")


def test_unusable_keys_in_a_jwks_are_skipped():
    from broker.sandbox.issuer import IssuerKeyPair

    good = IssuerKeyPair().public_jwk
    keys = parse_jwks(
        {
            "keys": [
                {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
                {**good, "kid": "enc", "use": "enc"},
                {**good, "kid": None},
                {"kty": "RSA", "kid": "broken", "n": "AA", "e": "AQAB"},
                "not a dict",
                good,
            ]
        }
    )
    assert list(keys) == [good["kid"]]
    with pytest.raises(FetchError):
        parse_jwks({"keys": [{"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"}]})


def test_keys_no_fetch_has_confirmed_for_a_day_stop_verifying(issuer):
    now = [1000.0]
    cache = KeyCache(issuer.url, settings=KeyCacheSettings(max_key_age=86400), clock=lambda: now[0])
    assert cache.refresh()
    issuer.jwks_hook = lambda r: Response("down", status=500)
    now[0] += 86000
    assert cache.get(issuer.key.kid, "RS256")
    now[0] += 1000
    assert not cache.refresh()
    with pytest.raises(Unavailable):
        cache.get(issuer.key.kid, "RS256")
    issuer.jwks_hook = None
    assert cache.refresh()
    assert cache.get(issuer.key.kid, "RS256")


def test_a_key_whose_alg_differs_from_the_tokens_is_not_used():
    from broker.jwks import IssuerKey

    key = IssuerKey(kid="k", kty="RSA", alg="RS256", crv=None, key=object())
    assert key.usable_for("RS256")
    assert not key.usable_for("PS256")
    assert not key.usable_for("RS512")


def test_an_ec_key_is_used_only_for_its_own_curve():
    from broker.jwks import IssuerKey

    p384 = IssuerKey(kid="k", kty="EC", alg=None, crv="P-384", key=object())
    assert p384.usable_for("ES384")
    assert not p384.usable_for("ES256")


def test_a_jwks_entry_carrying_a_private_key_is_ignored():
    from jwt.algorithms import RSAAlgorithm

    from broker.sandbox.issuer import IssuerKeyPair

    pair = IssuerKeyPair()
    private = {**RSAAlgorithm.to_jwk(pair.private_key, as_dict=True), "kid": "leaked"}
    keys = parse_jwks({"keys": [private, pair.public_jwk]})
    assert list(keys) == [pair.kid]
