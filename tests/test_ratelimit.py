"""Rate limits: per client address before any verification, per identity (provider + repository
or project id) after it, 429 `rate_limited` with Retry-After, shared through redis."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from broker.config import RateLimits
from broker.errors import RateLimited, Unavailable
from broker.ratelimit import RateLimiter
from broker.sandbox.stack import free_port
from tests.helpers import assert_refused, last_refusal
from tests.redis_support import RedisServer, redis_server_fixture


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    yield from redis_server_fixture(tmp_path_factory)


def limited(
    sandbox: Any,
    per_identity: str = "1000/minute",
    per_client: str = "1000/minute",
    replay_store: str = "memory",
) -> dict[str, Any]:
    config = sandbox.config_dict()
    config["server"]["rate_limits"] = {"per_identity": per_identity, "per_client": per_client}
    config["server"]["replay_store"] = replay_store
    return config


def test_the_per_client_limit_answers_429_with_retry_after_before_any_verification(
    sandbox, serve_config, audit_events
):
    app = serve_config(limited(sandbox, per_client="5/minute"))
    cache = app.extensions["broker"].caches["github"]
    fetches = cache.fetch_count
    for _ in range(5):
        assert_refused(sandbox.exchange("not-a-token"), 401, "invalid_token")
    response = sandbox.exchange(sandbox.github_token())
    assert_refused(response, 429, "rate_limited")
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    assert "per-client limit 5/minute" in last_refusal(audit_events)["reason"]
    assert cache.fetch_count == fetches, "a rate-limited request must not reach the key cache"


def test_the_per_identity_limit_counts_one_repository_and_does_not_spend_the_token(
    sandbox, serve_config, audit_events
):
    from broker.replay import replay_key
    from tests.adversarial.forge import b64url_decode

    app = serve_config(limited(sandbox, per_identity="2/minute"))
    calls = len(sandbox.sts.calls)
    assert sandbox.exchange(sandbox.github_token()).status_code == 200
    assert sandbox.exchange(sandbox.github_token()).status_code == 200
    token = sandbox.github_token()
    response = sandbox.exchange(token)
    assert_refused(response, 429, "rate_limited")
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    assert (
        "per-identity limit 2/minute reached for 'github:892734123'" in last_refusal(audit_events)["reason"]
    )
    assert len(sandbox.sts.calls) == calls + 2
    # Another repository's jobs are not held back by this one's.
    assert sandbox.exchange(sandbox.gitlab_token(), role="gitlab-deploy").status_code == 200
    # The refused token was not recorded as used, so the job may retry it after Retry-After.
    jti = json.loads(b64url_decode(token.split(".")[1]))["jti"]
    store = app.extensions["broker"].replay
    assert store.first_use(replay_key(sandbox.github.url, jti), time.time() + 60) is True


def test_forged_tokens_do_not_spend_a_repositorys_budget(sandbox, serve_config):
    from broker.sandbox.issuer import IssuerKeyPair, github_claims

    serve_config(limited(sandbox, per_identity="2/minute"))
    evil = IssuerKeyPair()
    for _ in range(10):
        forged = sandbox.github.mint(
            github_claims(aud=sandbox.broker_url), header={"kid": sandbox.github.key.kid}, key=evil
        )
        assert_refused(sandbox.exchange(forged), 401, "invalid_token")
    assert sandbox.exchange(sandbox.github_token()).status_code == 200
    assert sandbox.exchange(sandbox.github_token()).status_code == 200


def test_rate_limits_off_counts_nothing():
    limiter = RateLimiter(None)
    for _ in range(1000):
        limiter.check_client("198.51.100.7")
    assert not limiter.enabled


def test_clients_are_counted_separately():
    limiter = RateLimiter(RateLimits(per_identity=None, per_client="2/minute"))
    for address in ("192.0.2.1", "192.0.2.1", "192.0.2.2", "2001:db8::1"):
        limiter.check_client(address)
    with pytest.raises(RateLimited) as refused:
        limiter.check_client("192.0.2.1")
    assert refused.value.status == 429 and refused.value.retry_after >= 1


def test_limits_on_redis_are_shared_by_every_replica(redis_server):
    redis_server.flush()
    limits = RateLimits(per_identity=None, per_client="3/minute")
    replicas = [RateLimiter(limits, redis_server.url) for _ in range(3)]
    for replica in replicas:
        replica.check_client("203.0.113.9")
    for replica in replicas:
        with pytest.raises(RateLimited):
            replica.check_client("203.0.113.9")


def test_a_broker_on_redis_keeps_its_rate_limits_there(sandbox, serve_config, redis_server):
    import redis

    redis_server.flush()
    serve_config(limited(sandbox, per_client="2/minute", replay_store=redis_server.url))
    for _ in range(2):
        sandbox.exchange("x")
    assert_refused(sandbox.exchange("x"), 429, "rate_limited")
    assert any(b"ci-broker" in key for key in redis.Redis.from_url(redis_server.url).keys("*"))


def test_an_unreachable_limiter_store_lets_requests_through_quickly(caplog):
    limiter = RateLimiter(
        RateLimits(per_identity=None, per_client="1/minute"),
        f"redis://:pw-not-logged@127.0.0.1:{free_port()}/0",
    )
    start = time.monotonic()
    for _ in range(3):
        limiter.check_client("192.0.2.1")  # not counted, not refused
    assert time.monotonic() - start < 3
    assert "request not counted" in caplog.text and "pw-not-logged" not in caplog.text


def test_each_refusal_is_counted_by_kind():
    from broker import metrics

    def count(kind: str) -> float:
        return metrics.get().rate_limited.labels(kind)._value.get()

    limiter = RateLimiter(RateLimits(per_identity=None, per_client="1/minute"))
    before = count("per_client")
    limiter.check_client("192.0.2.50")
    with pytest.raises(RateLimited):
        limiter.check_client("192.0.2.50")
    assert count("per_client") == before + 1


def test_a_limiter_store_error_that_is_not_an_outage_refuses_with_503(monkeypatch):
    """Lua scripts forbidden by an ACL must not switch rate limiting off while exchanges succeed."""
    from limits.errors import StorageError

    limiter = RateLimiter(RateLimits(per_identity=None, per_client="1/minute"), None)

    def forbidden(*args: Any) -> bool:
        raise StorageError(ValueError("NOPERM no permission to run scripts"))

    monkeypatch.setattr(limiter._strategy, "hit", forbidden)
    with pytest.raises(Unavailable):
        limiter.check_client("192.0.2.1")


def test_over_the_limit_stays_refused_when_the_window_stats_fail(monkeypatch):
    from limits.errors import StorageError

    limiter = RateLimiter(RateLimits(per_identity=None, per_client="1/minute"), None)
    limiter.check_client("192.0.2.9")

    def broken(*args: Any) -> Any:
        raise StorageError(ConnectionError("gone"))

    monkeypatch.setattr(limiter._strategy, "get_window_stats", broken)
    with pytest.raises(RateLimited) as refused:
        limiter.check_client("192.0.2.9")
    assert refused.value.retry_after == 60
