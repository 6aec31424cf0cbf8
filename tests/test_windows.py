"""The alert counters' store operations, alike on memory, sqlite and a real redis-server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from broker.windows import Count, MemoryWindows, RedisWindows, Remember, SqliteWindows, WindowStore
from tests.redis_support import redis_server_fixture


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    yield from redis_server_fixture(tmp_path_factory)


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store(request, tmp_path) -> Iterator[WindowStore]:
    if request.param == "memory":
        made: WindowStore = MemoryWindows()
    elif request.param == "sqlite":
        made = SqliteWindows(str(tmp_path / "state.db"))
    else:
        server = request.getfixturevalue("redis_server")
        server.flush()
        made = RedisWindows(server.url)
    yield made
    made.close()


def test_a_window_counts_members_within_its_last_seconds(store):
    t = 1_700_000_000.0
    assert store.run([Count("w", "a", 10, t), Count("w", "b", 10, t + 1)]) == [1, 2]
    assert store.run([Count("w", "c", 10, t + 9)]) == [3]
    assert store.run([Count("w", "d", 10, t + 10.5)]) == [3], "a, recorded 10.5 s ago, left the window"
    assert store.run([Count("other", "a", 10, t + 10.5)]) == [1], "windows are per key"


def test_a_member_counted_again_counts_once(store):
    t = 1_700_000_000.0
    assert store.run([Count("roles", "deploy", 60, t), Count("roles", "deploy", 60, t + 1)]) == [1, 1]
    assert store.run([Count("roles", "read", 60, t + 2)]) == [2]


def test_remember_answers_whether_the_key_was_absent(store):
    import time

    now = time.time()
    assert store.run([Remember("k", 60, now), Remember("k", 60, now)]) == [True, False]
    assert store.run([Remember("once", 60, now, refresh=False)]) == [True]
    assert store.run([Remember("once", 60, now, refresh=False)]) == [False]


@pytest.mark.waits
def test_a_remembered_key_is_forgotten_after_its_time(store):
    import time

    now = time.time()
    assert store.run([Remember("short", 1, now)]) == [True]
    if isinstance(store, RedisWindows):
        time.sleep(1.2)  # redis keeps the key for its own clock's second (EX)
    later = max(time.time(), now + 1.2)  # memory and sqlite go by the time each operation carries
    assert store.run([Remember("short", 1, later)]) == [True]
