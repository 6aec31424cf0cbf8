"""An issuer's JWKS endpoint failing in every way we know of, seen through the HTTP API.

Cached keys keep serving; with nothing cached the answer is 503 `unavailable`; no request waits on a
slow fetch longer than a bound; rotation is picked up, and a removed key stops verifying once the
cache refreshes. Each case runs against its own issuer, so the shared sandbox is never disturbed.
"""

from __future__ import annotations

import copy
import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from werkzeug.wrappers import Request, Response

from broker.config import build_config
from broker.jwks import KeyCacheSettings, KeyRefresher
from broker.sandbox.issuer import LocalIssuer, github_claims
from broker.service import build_broker
from tests.helpers import assert_refused

CONNECT, READ = 0.5, 1.0
SETTINGS = KeyCacheSettings(
    refresh_interval=300, unknown_kid_cooldown=0.5, connect_timeout=CONNECT, read_timeout=READ
)
# One fetch's worth of timeouts plus the lock wait and slack for a loaded CI machine.
BOUND = 2 * (CONNECT + READ) + 1.5


@pytest.fixture
def flaky() -> Iterator[LocalIssuer]:
    with LocalIssuer() as issuer:
        yield issuer


@pytest.fixture
def serve_flaky(sandbox: Any, serve_config: Any, flaky: LocalIssuer) -> Callable[..., Any]:
    """A broker trusting `flaky` as a GitHub-type provider, with short fetch timeouts."""

    def serve(settings: KeyCacheSettings = SETTINGS) -> Any:
        config = sandbox.config_dict()
        config["providers"]["flaky"] = {"issuer": flaky.url, "type": "github"}
        config["roles"]["deploy-prod"]["allow"].append(
            {
                "provider": "flaky",
                "claims": {"repository_id": "892734123", "ref": "refs/heads/main", "event_name": "push"},
            }
        )
        loaded = build_config(copy.deepcopy(config), base_dir=sandbox.workdir)
        broker = build_broker(loaded, key_settings=settings, start_refresher=False)
        return serve_config(config, broker=broker)

    return serve


def token(sandbox: Any, issuer: LocalIssuer, key: Any = None) -> str:
    return issuer.mint(github_claims(aud=sandbox.broker_url), key=key)


def json_response(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json")


OUTAGES: dict[str, Callable[[LocalIssuer], Callable[[Request], Response]]] = {
    "500": lambda i: lambda r: Response("internal error", status=500),
    "503 html": lambda i: lambda r: Response("<html>maintenance</html>", status=503, mimetype="text/html"),
    "invalid json": lambda i: lambda r: Response('{"keys": [', mimetype="application/json"),
    "empty key set": lambda i: lambda r: json_response({"keys": []}),
    "not a key set": lambda i: lambda r: json_response(["keys"]),
    "only unusable keys": lambda i: (
        lambda r: json_response({"keys": [{"kty": "oct", "kid": "x", "k": "c2VjcmV0"}]})
    ),
    # A redirect to the very same, valid JWKS: still refused, redirects are never followed.
    "redirect": lambda i: (
        lambda r: Response("", status=302, headers={"Location": f"{i.url}/.well-known/jwks?again"})
    ),
    "slow": lambda i: (
        lambda r: (time.sleep(READ + 2), json_response({"keys": [k.public_jwk for k in i.keys]}))[1]
    ),
    # Headers at once, then the body stalls past the read timeout.
    "stalled body": lambda i: lambda r: Response(_stall(i), mimetype="application/json"),
    # Every byte inside the read timeout, the whole far beyond it.
    "trickled body": lambda i: lambda r: Response(_trickle(i), mimetype="application/json"),
}


def _keys_json(issuer: LocalIssuer) -> bytes:
    return json.dumps({"keys": [k.public_jwk for k in issuer.keys]}).encode()


def _stall(issuer: LocalIssuer) -> Iterator[bytes]:
    body = _keys_json(issuer)
    yield body[:10]
    time.sleep(READ + 2)
    yield body[10:]


def _trickle(issuer: LocalIssuer) -> Iterator[bytes]:
    for byte in _keys_json(issuer)[:60]:
        yield bytes([byte])
        time.sleep(READ / 4)


@pytest.mark.parametrize("outage", sorted(OUTAGES) + ["down"])
def test_with_nothing_cached_an_outage_is_503_within_the_bound(
    sandbox, serve_flaky, flaky, outage, audit_events
):
    t = token(sandbox, flaky)
    serve_flaky()
    if outage == "down":
        flaky.stop()
    else:
        flaky.jwks_hook = OUTAGES[outage](flaky)
    calls = len(sandbox.sts.calls)
    start = time.monotonic()
    response = sandbox.exchange(t)
    elapsed = time.monotonic() - start
    assert_refused(response, 503, "unavailable")
    assert elapsed < BOUND, f"{outage}: waited {elapsed:.1f}s"
    assert "no keys cached" in audit_events[-1]["reason"]
    assert len(sandbox.sts.calls) == calls


@pytest.mark.parametrize("outage", sorted(OUTAGES) + ["down"])
def test_cached_keys_keep_serving_through_an_outage(sandbox, serve_flaky, flaky, outage):
    app = serve_flaky()
    cache = app.extensions["broker"].caches["flaky"]
    assert cache.refresh()
    t = token(sandbox, flaky)
    if outage == "down":
        flaky.stop()
    else:
        flaky.jwks_hook = OUTAGES[outage](flaky)
    assert not cache.refresh(), "the background refresh fails..."
    response = sandbox.exchange(t)
    assert response.status_code == 200, response.text  # ...and the cached key still verifies


def test_an_unknown_kid_during_an_outage_is_401_after_a_bounded_wait(sandbox, serve_flaky, flaky):
    from broker.sandbox.issuer import IssuerKeyPair

    app = serve_flaky()
    assert app.extensions["broker"].caches["flaky"].refresh()
    time.sleep(SETTINGS.unknown_kid_cooldown)
    flaky.jwks_hook = OUTAGES["slow"](flaky)
    start = time.monotonic()
    response = sandbox.exchange(token(sandbox, flaky, key=IssuerKeyPair()))
    assert_refused(response, 401, "invalid_token")
    assert time.monotonic() - start < BOUND


def test_a_burst_during_a_slow_outage_waits_boundedly_and_fetches_little(sandbox, serve_flaky, flaky):
    flaky.jwks_hook = OUTAGES["slow"](flaky)
    serve_flaky()
    t = token(sandbox, flaky)
    barrier = threading.Barrier(16)

    def one(_: int) -> tuple[int, float]:
        barrier.wait()
        start = time.monotonic()
        status = sandbox.exchange(t).status_code
        return status, time.monotonic() - start

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(16)))
    assert {status for status, _ in results} == {503}
    slowest = max(elapsed for _, elapsed in results)
    assert slowest < BOUND, f"slowest request waited {slowest:.1f}s"
    assert flaky.jwks_requests <= 2, (
        f"{flaky.jwks_requests} fetches for one burst"
    )  # 1 unless CI stalls a thread past the cooldown


def test_a_gzip_encoded_jwks_is_read(sandbox, serve_flaky, flaky):
    import gzip

    flaky.jwks_hook = lambda r: Response(
        gzip.compress(_keys_json(flaky)), mimetype="application/json", headers={"Content-Encoding": "gzip"}
    )
    serve_flaky()
    assert sandbox.exchange(token(sandbox, flaky)).status_code == 200


def test_service_returns_when_the_issuer_recovers(sandbox, serve_flaky, flaky):
    flaky.jwks_hook = OUTAGES["500"](flaky)
    serve_flaky()
    assert_refused(sandbox.exchange(token(sandbox, flaky)), 503, "unavailable")
    flaky.jwks_hook = None
    deadline = time.monotonic() + 10
    while (
        response := sandbox.exchange(token(sandbox, flaky))
    ).status_code == 503 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert response.status_code == 200, response.text


def test_a_rotated_key_is_picked_up_on_the_first_token_that_names_it(sandbox, serve_flaky, flaky):
    app = serve_flaky()
    cache = app.extensions["broker"].caches["flaky"]
    assert cache.refresh()
    time.sleep(SETTINGS.unknown_kid_cooldown)
    before = flaky.jwks_requests
    new = flaky.rotate()
    assert sandbox.exchange(token(sandbox, flaky, key=new)).status_code == 200
    assert flaky.jwks_requests == before + 1
    assert sandbox.exchange(token(sandbox, flaky, key=flaky.keys[1])).status_code == 200  # old one too


def test_a_removed_key_stops_verifying_after_the_cache_refreshes(sandbox, serve_flaky, flaky):
    app = serve_flaky(
        KeyCacheSettings(
            refresh_interval=0.5, unknown_kid_cooldown=30, connect_timeout=CONNECT, read_timeout=READ
        )
    )
    cache = app.extensions["broker"].caches["flaky"]
    refresher = KeyRefresher([cache], interval=0.5)
    refresher.start()
    try:
        old = flaky.key
        deadline = time.monotonic() + 5
        while not cache.has_keys and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sandbox.exchange(token(sandbox, flaky, key=old)).status_code == 200
        new = flaky.rotate(keep_old=False)
        deadline = time.monotonic() + 5
        while (
            response := sandbox.exchange(token(sandbox, flaky, key=old))
        ).status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert_refused(response, 401, "invalid_token")
        assert sandbox.exchange(token(sandbox, flaky, key=new)).status_code == 200
    finally:
        refresher.stop()
