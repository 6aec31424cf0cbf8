"""Single use across replicas: three `ci-broker serve` processes (gunicorn, two workers each) on one
shared store receive the same token concurrently, hundreds of times; exactly one is granted.
With redis down every exchange is 503 `unavailable`, and service returns by itself with redis."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from broker.sandbox.stack import Sandbox, free_port
from tests.helpers import assert_refused
from tests.redis_support import RedisServer, require_redis_server
from tests.serving import ServedBroker

REPLICAS = 3
REQUESTS = 300
CLIENT_THREADS = 60


class Replicas:
    def __init__(self, box: Sandbox, workdir: Path, store_url: str) -> None:
        self.box = box
        self.workdir = workdir
        self.store_url = store_url
        self.servers: list[ServedBroker] = []
        self.redis: RedisServer | None = None
        # The first replica answers at the sandbox's broker URL: STS fetches the broker's JWKS there.
        self.binds = [f"127.0.0.1:{box.broker_port}"] + [
            f"127.0.0.1:{free_port()}" for _ in range(REPLICAS - 1)
        ]
        self.urls = [f"http://{bind}" for bind in self.binds]

    def start(self) -> Replicas:
        config = self.box.config_dict()
        config["server"]["replay_store"] = self.store_url
        path = self.box.write_config(config, name="replicas.yaml")
        self.servers = [
            ServedBroker(path, bind, self.workdir / f"replica-{i}.log", workers=2)
            for i, bind in enumerate(self.binds)
        ]
        for server in self.servers:
            server.wait_ready()
        return self

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def logs(self) -> str:
        return "".join(server.output() for server in self.servers)


def exchange(url: str, token: str) -> requests.Response:
    return requests.post(
        f"{url}/v1/exchange",
        json={"role": "deploy-prod"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    )


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    require_redis_server()
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module", params=["redis", "sqlite"])
def replicas(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    workdir = tmp_path_factory.mktemp(f"replicas-{request.param}")
    server: RedisServer | None = None
    if request.param == "redis":
        server = request.getfixturevalue("redis_server")
        store_url = server.url
    else:
        store_url = f"sqlite:///{workdir / 'replay.db'}"  # an absolute path: sqlite:////tmp/...
    with Sandbox(workdir) as box:
        group = Replicas(box, workdir, store_url)
        group.redis = server
        try:
            yield group.start()
        finally:
            group.stop()


def test_one_token_fired_at_every_replica_at_once_is_granted_exactly_once(replicas):
    box = replicas.box
    token = box.github_token()
    sts_before = sum(1 for c in box.sts.calls if c.get("Action") == "AssumeRoleWithWebIdentity")
    start = threading.Barrier(CLIENT_THREADS)

    def fire(i: int) -> tuple[int, str]:
        if i < CLIENT_THREADS:
            start.wait()
        response = exchange(replicas.urls[i % REPLICAS], token)
        return response.status_code, response.json().get("error", "")

    began = time.monotonic()
    with ThreadPoolExecutor(CLIENT_THREADS) as pool:
        outcomes = Counter(pool.map(fire, range(REQUESTS)))
    elapsed = time.monotonic() - began
    print(
        f"\n{replicas.store_url.split(':')[0]}: {REQUESTS} concurrent requests in {elapsed:.2f}s: {dict(outcomes)}"
    )
    assert outcomes[(200, "")] == 1, outcomes
    assert outcomes[(401, "invalid_token")] == REQUESTS - 1, outcomes
    sts_after = sum(1 for c in box.sts.calls if c.get("Action") == "AssumeRoleWithWebIdentity")
    assert sts_after - sts_before == 1
    assert token not in replicas.logs()


def test_a_token_used_on_one_replica_is_refused_by_the_others(replicas):
    token = replicas.box.github_token()
    assert exchange(replicas.urls[1], token).status_code == 200
    for url in (replicas.urls[0], replicas.urls[2]):
        assert_refused(exchange(url, token), 401, "invalid_token")


@pytest.mark.parametrize("replicas", ["redis"], indirect=True)
def test_redis_down_is_503_on_every_replica_then_service_returns_by_itself(replicas):
    server = replicas.redis
    assert server is not None
    box = replicas.box
    calls = len(box.sts.calls)
    server.stop()
    try:
        for url in replicas.urls:
            response = exchange(url, box.github_token())
            assert_refused(response, 503, "unavailable")
        assert len(box.sts.calls) == calls, "no cloud call without a single-use record"
    finally:
        server.start()
    for url in replicas.urls:
        assert exchange(url, box.github_token()).status_code == 200
