"""The session stores (memory, sqlite, redis) and the rules over them (broker/sessions.py): refresh
tokens rotate exactly once per generation, a spent token is still recognised as spent, a session
ends once, and the operators' query API finds and ends sessions by role, identity or age."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from broker.errors import Unavailable
from broker.sessions import (
    REFRESH_REUSE,
    REVOKED,
    MemorySessionStore,
    RedisSessionStore,
    Session,
    Sessions,
    SqliteSessionStore,
    end_session,
    is_refresh_token,
    new_refresh_token,
    open_session_store,
    refresh_token_hash,
)
from tests.redis_support import RedisServer, redis_server_fixture


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    yield from redis_server_fixture(tmp_path_factory)


@pytest.fixture(params=["memory", "sqlite", "redis"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], object]:
    """A factory, so a test can open several handles on one shared store (as replicas do)."""
    if request.param == "memory":
        shared = MemorySessionStore()
        return lambda: shared
    if request.param == "sqlite":
        return lambda: SqliteSessionStore(tmp_path / "state.db")
    server: RedisServer = request.getfixturevalue("redis_server")
    server.flush()
    return lambda: RedisSessionStore(server.url)


CLAIMS = {"iss": "https://issuer", "sub": "repo:o/r", "repository_id": "42", "run_id": 7, "ref": "main"}


def start(sessions: Sessions, role: str = "deploy", lifetime: int = 3600, **claims: object):
    return sessions.start(
        role=role,
        lifetime=lifetime,
        provider="github",
        issuer="https://issuer",
        claims={**CLAIMS, **claims},
        token_sha256="ab" * 32,
    )


def test_a_refresh_token_is_opaque_random_and_recognisable():
    tokens = {new_refresh_token() for _ in range(100)}
    assert len(tokens) == 100
    assert all(is_refresh_token(t) and t.startswith("cibrt_") and len(t) == 49 for t in tokens)
    assert not is_refresh_token("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln")
    assert not is_refresh_token(next(iter(tokens)) + "A")


def test_only_the_hash_of_a_refresh_token_is_stored(make_store, tmp_path):
    store = make_store()
    session, grant = start(Sessions(store))
    token = grant.refresh_token
    if isinstance(store, SqliteSessionStore):
        raw = (tmp_path / "state.db").read_bytes() + Path(f"{tmp_path}/state.db-wal").read_bytes()
        assert token.encode() not in raw and refresh_token_hash(token).encode() in raw
    elif isinstance(store, RedisSessionStore):
        client = store._client
        dump = b"".join(client.dump(k) or b"" for k in client.keys("*"))
        assert token.encode() not in dump and token.encode() not in b"".join(client.keys("*"))
    assert token not in repr(session) and token not in str(session.describe())


def test_a_token_rotates_once_and_stays_recognisable_as_spent(make_store):
    sessions = Sessions(make_store())
    session, first = start(sessions)
    presented = sessions.find(first.refresh_token)
    assert presented is not None and not presented.spent and presented.session.id == session.id
    second = sessions.rotate(presented)
    assert second is not None and second.refresh_token != first.refresh_token
    # The first token is now spent, but still maps to its session (reuse must be recognisable).
    again = sessions.find(first.refresh_token)
    assert again is not None and again.spent and again.session.generation == 1
    assert sessions.rotate(again) is None, "a spent generation cannot rotate again"
    current = sessions.find(second.refresh_token)
    assert current is not None and not current.spent and current.generation == 1


def test_an_undone_rotation_makes_the_presented_token_current_again(make_store):
    sessions = Sessions(make_store())
    _, first = start(sessions)
    presented = sessions.find(first.refresh_token)
    assert presented is not None
    second = sessions.rotate(presented)
    assert second is not None
    sessions.undo_rotation(presented, second)
    assert sessions.find(second.refresh_token) is None, "the token never handed out is forgotten"
    again = sessions.find(first.refresh_token)
    assert again is not None and not again.spent
    assert sessions.rotate(again) is not None


def test_a_rotation_is_not_undone_once_the_session_moved_on(make_store):
    store = make_store()
    sessions = Sessions(store)
    session, first = start(sessions)
    presented = sessions.find(first.refresh_token)
    assert presented is not None
    second = sessions.rotate(presented)
    assert second is not None
    third = sessions.rotate(sessions.find(second.refresh_token))  # type: ignore[arg-type]
    assert third is not None
    assert store.unrotate(presented, refresh_token_hash(second.refresh_token)) is False
    assert sessions.find(third.refresh_token).spent is False  # type: ignore[union-attr]


def test_an_unknown_token_finds_nothing(make_store):
    sessions = Sessions(make_store())
    start(sessions)
    assert sessions.find(new_refresh_token()) is None


def test_concurrent_rotations_of_one_token_admit_exactly_one(make_store):
    sessions = Sessions(make_store())
    _, grant = start(sessions)
    presented = sessions.find(grant.refresh_token)
    assert presented is not None
    handles = [Sessions(make_store()) for _ in range(8)]  # one handle per "replica"
    barrier = threading.Barrier(len(handles))
    results: list[object] = []

    def rotate(handle: Sessions) -> None:
        barrier.wait()
        results.append(handle.rotate(presented))

    threads = [threading.Thread(target=rotate, args=(h,)) for h in handles]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(r is not None for r in results) == 1


def test_an_ended_session_cannot_rotate_and_ends_once(make_store):
    store = make_store()
    sessions = Sessions(store)
    session, grant = start(sessions)
    assert sessions.end(session, REVOKED) is True
    assert sessions.end(session, REFRESH_REUSE) is False, "ending twice changes nothing"
    presented = sessions.find(grant.refresh_token)
    assert presented is not None
    assert presented.session.ended_at is not None and presented.session.end_reason == REVOKED
    assert sessions.rotate(presented) is None


def test_usable_means_neither_ended_nor_expired(make_store):
    from broker.errors import InvalidToken

    now = [time.time()]
    sessions = Sessions(make_store(), clock=lambda: now[0])
    session, _ = start(sessions, lifetime=60)
    sessions.check_usable(session)
    now[0] += 61
    with pytest.raises(InvalidToken, match="expired"):
        sessions.check_usable(session)
    now[0] -= 61
    sessions.end(session, REVOKED)
    with pytest.raises(InvalidToken, match="ended"):
        sessions.check_usable(Sessions(sessions.store).store.get(session.id))  # type: ignore[arg-type]


def test_a_session_lasts_at_most_its_lifetime_and_never_over_twelve_hours(make_store):
    sessions = Sessions(make_store(), clock=lambda: 1_000_000.0)
    session, grant = start(sessions, lifetime=10**6)
    assert session.expires_at == 1_000_000.0 + 43200
    assert grant.expires_at.timestamp() == session.expires_at


def test_the_recorded_claims_survive_the_store_exactly(make_store):
    sessions = Sessions(make_store())
    claims = {"nested": {"a": [1, True, None]}, "odd": "\ud800 lone surrogate", "n": 12345678901234567890}
    session, grant = start(sessions, **claims)
    found = sessions.find(grant.refresh_token)
    assert found is not None and found.session.claims == session.claims


def test_listing_shows_live_sessions_without_secrets(make_store):
    store = make_store()
    sessions = Sessions(store)
    first, grant = start(sessions, role="a")
    second, _ = start(sessions, role="b")
    sessions.end(second, REVOKED)
    listed = store.sessions(time.time())
    assert [s.id for s in listed] == [first.id]
    assert [s.id for s in store.sessions(time.time(), include_ended=True)] == [first.id, second.id]
    described = listed[0].describe()
    assert described["role"] == "a" and described["subject"] == "repo:o/r" and described["refreshes"] == 0
    assert grant.refresh_token not in str(described)


def test_end_one_session_by_id(make_store):
    store = make_store()
    session, _ = start(Sessions(store))
    assert end_session(store, session.id) is True
    assert end_session(store, session.id) is False
    assert end_session(store, "no-such-session") is False


def test_the_session_store_follows_the_store_url(tmp_path, redis_server):
    assert isinstance(open_session_store("memory"), MemorySessionStore)
    assert isinstance(open_session_store(f"sqlite:///{tmp_path}/s.db"), SqliteSessionStore)
    assert isinstance(open_session_store(redis_server.url), RedisSessionStore)
    with pytest.raises(ValueError, match="session store"):
        open_session_store("postgres://x")


def test_an_unusable_sqlite_file_is_unavailable(tmp_path):
    with pytest.raises(Unavailable):
        SqliteSessionStore(tmp_path / "missing-dir" / "s.db")
    store = SqliteSessionStore(tmp_path / "s.db")
    sessions = Sessions(store)
    _, grant = start(sessions)
    store.close()  # a closed connection stands in for any sqlite failure mid-flight
    with pytest.raises(Unavailable):
        sessions.find(grant.refresh_token)


def test_redis_down_is_unavailable_and_recovers(tmp_path):
    server = RedisServer(tmp_path).start()
    sessions = Sessions(RedisSessionStore(server.url))
    try:
        _, grant = start(sessions)
        server.stop()
        with pytest.raises(Unavailable) as refused:
            sessions.find(grant.refresh_token)
        assert "redis session store redis://127.0.0.1" in refused.value.reason
        server.start()  # an empty redis (no persistence): the session is gone, not granted
        assert sessions.find(grant.refresh_token) is None
    finally:
        server.stop()


def test_a_lost_reply_to_our_own_rotation_is_still_ours(redis_server):
    """The retry after a dropped connection finds the token record it wrote itself."""
    import redis

    store = RedisSessionStore(redis_server.url)
    sessions = Sessions(store)
    _, grant = start(sessions)
    presented = sessions.find(grant.refresh_token)
    assert presented is not None
    real = store._rotate
    calls = {"n": 0}

    def rotate_then_lose_reply(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        result = real(*args, **kwargs)
        if calls["n"] == 1:
            raise redis.ConnectionError("reply lost")
        return result

    store._rotate = rotate_then_lose_reply  # type: ignore[assignment]
    assert sessions.rotate(presented) is not None
    assert calls["n"] == 1, "the retry recognised its own write instead of rotating again"


def test_session_records_round_trip_their_fields():
    session = Session("id", "r", "p", "https://i", {"a": 1}, "00" * 32, 1.5, 2.5, 3, 4.5, REVOKED)
    assert Session.from_fields(session.fields()) == session
