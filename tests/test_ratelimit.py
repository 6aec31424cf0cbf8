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
from broker.replay import RedisReplayStore
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


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_the_per_identity_limit_counts_one_repository_and_does_not_spend_the_token(
    sandbox, serve_config, audit_events, store, request
):
    from broker.replay import replay_key
    from tests.adversarial.forge import b64url_decode

    if store == "redis":  # the limit and the record go in one script there
        server = request.getfixturevalue("redis_server")
        server.flush()
        store = server.url
    app = serve_config(limited(sandbox, per_identity="2/minute", replay_store=store))
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


# -- on redis: the identity limit and the token's record in one round trip ------------------------


class Provider:
    """The one thing the limiter asks of a provider: the identity a token's claims count against."""

    def identity(self, claims: dict[str, Any]) -> str:
        return f"github:{claims['repository_id']}"


CLAIMS = {"repository_id": "42"}


def counted_pair(redis_server: RedisServer, per_identity: str) -> tuple[RateLimiter, RedisReplayStore]:
    redis_server.flush()
    limits = RateLimits(per_identity=per_identity, per_client=None)
    return RateLimiter(limits, redis_server.url), RedisReplayStore(redis_server.url)


def spend(limiter: RateLimiter, store: RedisReplayStore, key: str) -> bool:
    return limiter.admit_and_spend(Provider(), CLAIMS, store, key, time.time() + 60)  # type: ignore[arg-type]


def commands_sent(monkeypatch: pytest.MonkeyPatch, *clients: Any) -> list[str]:
    sent: list[str] = []
    for client in clients:
        real = client.execute_command

        def counting(*args: Any, real: Any = real, **kwargs: Any) -> Any:
            sent.append(str(args[0]))
            return real(*args, **kwargs)

        monkeypatch.setattr(client, "execute_command", counting)
    return sent


def test_on_redis_an_identity_hit_and_the_tokens_record_are_one_round_trip(redis_server, monkeypatch):
    limiter, store = counted_pair(redis_server, "5/minute")
    assert spend(limiter, store, "warm-up")  # redis-py loads the script on its first NOSCRIPT
    sent = commands_sent(monkeypatch, store._client, limiter._strategy.storage.storage)
    assert spend(limiter, store, "one") is True
    assert sent == ["EVALSHA"]
    assert spend(limiter, store, "one") is False, "a replay"
    assert sent == ["EVALSHA", "EVALSHA"]


def test_counts_made_by_the_script_are_the_ones_limits_reads_and_writes(redis_server):
    """The refresh path counts the same identity through limits itself; both must see one budget."""
    limiter, store = counted_pair(redis_server, "3/minute")
    assert spend(limiter, store, "a") and spend(limiter, store, "b")
    limiter.admit(Provider(), CLAIMS)  # limits' own script: the third hit of three
    with pytest.raises(RateLimited):
        limiter.admit(Provider(), CLAIMS)
    with pytest.raises(RateLimited) as refused:
        spend(limiter, store, "c")
    assert 1 <= refused.value.retry_after <= 60
    assert "per-identity limit 3/minute reached for 'github:42'" in refused.value.reason


def test_over_the_identity_limit_on_redis_the_token_is_not_recorded(redis_server):
    limiter, store = counted_pair(redis_server, "1/minute")
    assert spend(limiter, store, "first")
    with pytest.raises(RateLimited):
        spend(limiter, store, "retried-later")
    # The job may retry the same token once the window allows: it was not spent.
    assert store.first_use("retried-later", time.time() + 60) is True


def test_a_replayed_token_on_redis_still_counts_against_its_identity(redis_server):
    """The limit comes before the record, as it does without redis: a replay costs budget too."""
    limiter, store = counted_pair(redis_server, "2/minute")
    assert spend(limiter, store, "once") is True
    assert spend(limiter, store, "once") is False
    with pytest.raises(RateLimited):
        spend(limiter, store, "fresh")


def test_the_script_is_loaded_again_after_redis_forgets_it(redis_server):
    import redis

    limiter, store = counted_pair(redis_server, "5/minute")
    assert spend(limiter, store, "before")
    redis.Redis.from_url(redis_server.url).script_flush()  # what a redis restart does
    assert spend(limiter, store, "after") is True
    assert spend(limiter, store, "after") is False


def test_a_lost_reply_to_the_script_is_a_first_use_counted_once(redis_server):
    import redis

    limiter, store = counted_pair(redis_server, "2/minute")
    script = store._counted_first_use
    calls = {"n": 0}

    def run_then_lose_reply(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        result = script(*args, **kwargs)
        if calls["n"] == 1:
            raise redis.ConnectionError("reply lost")
        return result

    store._counted_first_use = run_then_lose_reply  # type: ignore[method-assign]
    assert spend(limiter, store, "lost") is True
    assert calls["n"] == 2
    assert spend(limiter, store, "lost") is False
    # Two hits counted (the lost attempt's and the replay's), not three: the retry recognised its
    # own write before counting again, so a third token is over the limit of two only now.
    with pytest.raises(RateLimited):
        spend(limiter, store, "third")


def test_redis_down_refuses_the_counted_record_with_503(tmp_path):
    url = f"redis://:pw-not-shown@127.0.0.1:{free_port()}/0"
    limiter = RateLimiter(RateLimits(per_identity="5/minute", per_client=None), url)
    store = RedisReplayStore(url, timeout=0.2)
    with pytest.raises(Unavailable) as refused:
        spend(limiter, store, "no-store")
    assert refused.value.status == 503 and "pw-not-shown" not in refused.value.reason


def test_without_an_identity_limit_redis_gets_a_plain_set_and_no_script(redis_server, monkeypatch):
    """A store whose ACL forbids scripts still serves a broker whose limits are off."""
    redis_server.flush()
    limiter = RateLimiter(None, redis_server.url)
    store = RedisReplayStore(redis_server.url)
    sent = commands_sent(monkeypatch, store._client)
    assert spend(limiter, store, "plain") is True
    assert sent == ["SET"]


@pytest.mark.waits
def test_in_memory_counts_survive_many_threads_hitting_at_once(monkeypatch):
    """gunicorn's threads share one limiter. limits' MemoryStorage restarts its expiry timer
    without a lock: two threads may start the same timer (RuntimeError, seen as a 500 in the HTTP
    fuzz run, or a KeyError in the timer's own thread). The broker serialises its memory counts."""
    import sys
    import threading

    limiter = RateLimiter(RateLimits(per_client="1000000/minute", per_identity=None))
    errors: list[object] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda failure: errors.append(failure.exc_value))
    monkeypatch.setattr(threading, "excepthook", lambda failure: errors.append(failure.exc_value))
    threads = 16
    together = threading.Barrier(threads)

    def hit_together(n: int) -> None:
        for _ in range(100):
            time.sleep(0.011)  # the 10 ms expiry timer has run out: the next hits restart it
            together.wait()
            try:
                limiter.check_client(f"192.0.2.{n}")
            except Exception as exc:  # the failure this test looks for
                errors.append(exc)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: the race is a few bytecodes wide
    try:
        workers = [threading.Thread(target=hit_together, args=(n,)) for n in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    finally:
        sys.setswitchinterval(interval)
    assert errors == []
