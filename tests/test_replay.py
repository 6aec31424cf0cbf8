"""The replay stores: single use holds for each store, under concurrency, and a store that cannot
answer refuses (503) rather than grants."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from broker.errors import Unavailable
from broker.replay import (
    MemoryReplayStore,
    RedisReplayStore,
    SqliteReplayStore,
    describe_store,
    open_store,
    replay_key,
    store_url_problem,
)
from tests.redis_support import RedisServer, redis_server_fixture


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    yield from redis_server_fixture(tmp_path_factory)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "sqlite", "redis"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[..., object]:
    """A factory, so a test can open several handles on one shared store (as workers do)."""
    if request.param == "memory":
        shared = MemoryReplayStore()
        return lambda **kw: shared if not kw else MemoryReplayStore(**kw)
    if request.param == "sqlite":
        return lambda **kw: SqliteReplayStore(tmp_path / "replay.db", **kw)
    server: RedisServer = request.getfixturevalue("redis_server")
    server.flush()
    return lambda **kw: RedisReplayStore(server.url, **kw)


def test_a_key_is_accepted_once(make_store):
    store = make_store()
    expires = time.time() + 300
    assert store.first_use("k1", expires) is True
    assert store.first_use("k1", expires) is False
    assert store.first_use("k2", expires) is True


@pytest.mark.waits
def test_a_key_is_free_again_once_its_token_has_expired(make_store):
    clock = Clock()
    store = make_store(clock=clock)
    key = replay_key("https://issuer", f"jti-{time.monotonic_ns()}")
    assert store.first_use(key, clock.now + 2)
    assert not store.first_use(key, clock.now + 2)
    if isinstance(store, RedisReplayStore):
        time.sleep(2.2)  # redis expires on its own clock
    else:
        clock.now += 3
    assert store.first_use(key, clock.now + 2)


def test_concurrent_first_uses_of_one_key_admit_exactly_one(make_store):
    stores = [make_store() for _ in range(4)]  # separate handles, like separate workers
    key = replay_key("https://issuer", f"race-{time.monotonic_ns()}")
    barrier = threading.Barrier(32)

    def attempt(i: int) -> bool:
        barrier.wait()
        return stores[i % len(stores)].first_use(key, time.time() + 300)

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(attempt, range(32)))
    assert results.count(True) == 1


def _sqlite_worker(path: str, keys: list[str], out: multiprocessing.Queue[list[str]]) -> None:
    store = SqliteReplayStore(path)
    out.put([k for k in keys if store.first_use(k, time.time() + 300)])


@pytest.mark.process
def test_sqlite_single_use_holds_across_processes(tmp_path):
    path = str(tmp_path / "shared.db")
    SqliteReplayStore(path).close()
    keys = [f"key-{i}" for i in range(300)]
    ctx = multiprocessing.get_context("spawn")
    out: multiprocessing.Queue[list[str]] = ctx.Queue()
    procs = [ctx.Process(target=_sqlite_worker, args=(path, keys, out)) for _ in range(4)]
    for p in procs:
        p.start()
    won = [k for _ in procs for k in out.get(timeout=60)]
    for p in procs:
        p.join(30)
    assert sorted(won) == sorted(keys), "every key once, none twice"


def test_sqlite_purges_expired_records(tmp_path, monkeypatch):
    monkeypatch.setattr("broker.replay.SQLITE_PURGE_EVERY", 10)
    clock = Clock()
    store = SqliteReplayStore(tmp_path / "r.db", clock=clock)
    for i in range(9):
        store.first_use(f"old-{i}", clock.now + 1)
    clock.now += 10
    store.first_use("new", clock.now + 1)
    rows = sqlite3.connect(tmp_path / "r.db").execute("SELECT key FROM used_tokens").fetchall()
    assert rows == [("new",)]


def test_a_failed_purge_does_not_turn_a_recorded_first_use_into_a_refusal(tmp_path, monkeypatch):
    monkeypatch.setattr("broker.replay.SQLITE_PURGE_EVERY", 1)
    store = SqliteReplayStore(tmp_path / "r.db")

    class BusyOnDelete:
        def __init__(self, conn):
            self.conn = conn

        def execute(self, sql, *args):
            if sql.startswith("DELETE"):
                raise sqlite3.OperationalError("database is locked")
            return self.conn.execute(sql, *args)

    store._conn = BusyOnDelete(store._conn)
    assert store.first_use("k", time.time() + 60) is True
    assert store.first_use("k", time.time() + 60) is False


def test_an_unusable_sqlite_file_is_unavailable_not_a_grant(tmp_path):
    with pytest.raises(Unavailable):
        SqliteReplayStore(tmp_path / "missing-dir" / "r.db")
    store = SqliteReplayStore(tmp_path / "r.db")
    store.close()  # a closed connection stands in for any sqlite failure mid-flight
    with pytest.raises(Unavailable):
        store.first_use("k", time.time() + 60)


def test_redis_down_is_unavailable_and_recovers_by_itself(tmp_path):
    server = RedisServer(tmp_path).start()
    store = RedisReplayStore(server.url)
    try:
        assert store.first_use("before", time.time() + 60)
        server.stop()
        with pytest.raises(Unavailable) as refused:
            store.first_use("during", time.time() + 60)
        assert "redis replay store redis://127.0.0.1" in refused.value.reason
        server.start()  # same port, no restart of the store
        assert store.first_use("after", time.time() + 60)
    finally:
        server.stop()


@pytest.mark.faults
def test_a_frozen_redis_costs_a_request_a_bounded_wait(tmp_path):
    server = RedisServer(tmp_path).start()
    store = RedisReplayStore(server.url, timeout=0.5)
    try:
        assert store.first_use("warm", time.time() + 60)
        server.pause()
        start = time.monotonic()
        with pytest.raises(Unavailable):
            store.first_use("frozen", time.time() + 60)
        assert time.monotonic() - start < 2.5
        server.resume()
        assert store.first_use("thawed", time.time() + 60)
    finally:
        server.resume()
        server.stop()


def test_a_lost_reply_to_our_own_write_is_still_a_first_use(redis_server):
    """The retry after a dropped connection finds the key it wrote itself, and says so."""
    import redis

    store = RedisReplayStore(redis_server.url)
    real_set = store._client.set
    calls = {"n": 0}

    def set_then_lose_reply(*args, **kwargs):
        calls["n"] += 1
        result = real_set(*args, **kwargs)
        if calls["n"] == 1:
            raise redis.ConnectionError("reply lost")
        return result

    store._client.set = set_then_lose_reply  # type: ignore[method-assign]
    key = f"lost-{time.monotonic_ns()}"
    assert store.first_use(key, time.time() + 60) is True
    assert store.first_use(key, time.time() + 60) is False


def test_the_redis_record_lives_until_exp_plus_leeway(redis_server):
    import redis

    store = RedisReplayStore(redis_server.url)
    key = f"ttl-{time.monotonic_ns()}"
    store.first_use(key, time.time() + 400)
    ttl = redis.Redis.from_url(redis_server.url).ttl(f"ci-broker:jti:{key}")
    assert 395 <= ttl <= 401


def test_a_redis_password_may_come_from_the_environment(tmp_path, monkeypatch):
    import redis

    server = RedisServer(tmp_path)
    server.start()
    try:
        redis.Redis.from_url(server.url).config_set("requirepass", "s3cret-pw")
        monkeypatch.setenv("CI_BROKER_REDIS_PASSWORD", "s3cret-pw")
        assert RedisReplayStore(server.url).first_use("k", time.time() + 60)
        monkeypatch.delenv("CI_BROKER_REDIS_PASSWORD")
        with pytest.raises(Unavailable) as refused:
            RedisReplayStore(server.url).first_use("k2", time.time() + 60)
        assert "s3cret" not in refused.value.reason
    finally:
        server.stop()


@pytest.mark.parametrize(
    "url",
    [
        "memory",
        "redis://127.0.0.1:6379/0",
        "rediss://cache.internal:6380/2",
        "redis://h",
        "redis://:pw@h:1/0",
        "sqlite:///replay.db",
        "sqlite:////var/lib/ci-broker/replay.db",
    ],
)
def test_store_urls_that_are_accepted(url):
    assert store_url_problem(url) is None


@pytest.mark.parametrize(
    "url",
    [
        "postgres://x",
        "redis://",
        "redis://h:port/0",
        "redis://h:1/db",
        "sqlite:///",
        "sqlite:///:memory:",
        "sqlite://relative.db",
        "Memory",
        "",
    ],
)
def test_store_urls_that_are_refused(url):
    assert store_url_problem(url)
    with pytest.raises(ValueError):
        open_store(url)


def test_a_store_url_password_never_appears_in_descriptions_or_errors():
    assert "hunter2" not in describe_store("redis://:hunter2@cache:6379/0")
    assert "hunter2" not in (store_url_problem("redis://:hunter2@cache:x/0") or "")


def test_an_absurd_expiry_is_recorded_for_a_bounded_time(make_store):
    store = make_store()
    key = f"far-{time.monotonic_ns()}"
    assert store.first_use(key, 10**400) is True  # a signed exp may be any JSON integer
    assert store.first_use(key, 10**400) is False


def test_a_jti_with_a_lone_surrogate_has_a_key(make_store):
    key = replay_key("https://issuer", "\ud800-jti")  # JSON can spell it; UTF-8 cannot
    assert key != replay_key("https://issuer", "\ud801-jti")
    store = make_store()
    assert store.first_use(key, time.time() + 60) and not store.first_use(key, time.time() + 60)


def test_a_redis_url_without_the_redis_package_is_a_clear_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "redis", None)  # what an install without the extra looks like
    with pytest.raises(ValueError, match="ci-broker\\[redis\\]"):
        open_store("redis://127.0.0.1:6379/0")
