"""Blocks across replicas: three `ci-broker serve` processes on one real redis.

`ci-broker block` returns, and within 2 seconds every replica refuses the identity; `unblock`
restores it everywhere; a `--for` block ends by itself; with redis down every replica refuses with
503 because its copy of the blocks went stale, never "not blocked". The propagation times measured
are printed (`pytest -s`); the 2 s bound is the contract's, and what the test asserts.

One gunicorn worker per replica: each worker keeps its own copy of the blocks (polled by a thread
it starts after the fork), so three single-worker replicas are three independent copies whose
every exchange can be attributed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from broker.blockstore import RedisBlockStore
from broker.sandbox.stack import Sandbox, free_port
from tests.redis_support import RedisServer, redis_server_fixture
from tests.serving import ServedBroker

REPLICAS = 3
BOUND = 2.0  # contract section 9


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    yield from redis_server_fixture(tmp_path_factory)


class Replicas:
    def __init__(self, box: Sandbox, workdir: Path, redis: RedisServer) -> None:
        self.box = box
        self.redis = redis
        self.binds = [f"127.0.0.1:{box.broker_port}"] + [
            f"127.0.0.1:{free_port()}" for _ in range(REPLICAS - 1)
        ]
        self.urls = [f"http://{bind}" for bind in self.binds]
        config = box.config_dict()
        config["server"]["replay_store"] = redis.url
        self.config = box.write_config(config, name="blocks-replicas.yaml")
        self.servers = [
            ServedBroker(self.config, bind, workdir / f"replica-{i}.log", workers=1)
            for i, bind in enumerate(self.binds)
        ]

    def start(self) -> Replicas:
        for server in self.servers:
            server.wait_ready()
        return self

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "broker", args[0], "--config", str(self.config), *args[1:]],
            capture_output=True,
            text=True,
            timeout=60,
        )

    def exchange(self, url: str) -> requests.Response:
        return requests.post(
            f"{url}/v1/exchange",
            json={"role": "deploy-prod"},
            headers={"Authorization": f"Bearer {self.box.github_token()}"},
            timeout=30,
        )

    def audit(self, *only: int) -> list[dict[str, object]]:
        events = []
        for i, server in enumerate(self.servers):
            if only and i not in only:
                continue
            for line in server.output().splitlines():
                if line.startswith('{"time"') and '"type":' in line:
                    events.append(json.loads(line))
        return events


@pytest.fixture(scope="module")
def replicas(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    workdir = tmp_path_factory.mktemp("blocks-replicas")
    with Sandbox(workdir) as box:
        group = Replicas(box, workdir, redis_server)
        try:
            yield group.start()
        finally:
            group.stop()


def until_every_replica(replicas: Replicas, status: int, since: float, limit: float) -> list[float]:
    """Seconds from `since` until each replica first answered `status`; fails past `limit`."""
    took: list[float | None] = [None] * REPLICAS
    deadline = since + limit + 1.0  # keep watching a moment past the bound, to report what happened
    while time.monotonic() < deadline and None in took:
        for i, url in enumerate(replicas.urls):
            if took[i] is None and (got := replicas.exchange(url)).status_code == status:
                took[i] = time.monotonic() - since
    assert None not in took, (
        f"replicas that never answered {status}: {took}; last {got.status_code} {got.text}"
    )
    return [t for t in took if t is not None]


def test_a_block_reaches_every_replica_within_two_seconds_and_an_unblock_too(replicas):
    for url in replicas.urls:
        assert replicas.exchange(url).status_code == 200
    result = replicas.cli(
        "block", "--provider", "github", "--claim", "repository_id=892734123", "--reason", "INC-4711"
    )
    returned = time.monotonic()
    assert result.returncode == 0, result.stderr
    block_id = result.stdout.splitlines()[0]
    took = until_every_replica(replicas, 403, returned, BOUND)
    print(
        f"\nblock in force on each replica {', '.join(f'{t * 1000:.0f} ms' for t in took)} after the command returned"
    )
    assert max(took) <= BOUND

    # Each replica's refusals name the block, and raised the alert.
    events = replicas.audit()
    refusals = [e for e in events if e["type"] == "exchange" and e.get("block_id") == block_id]
    assert len({e["request_id"] for e in refusals}) >= REPLICAS
    alerts = [e for e in events if e["type"] == "alert" and e["alert"] == "blocked_identity"]
    assert {a["request_id"] for a in alerts} == {e["request_id"] for e in refusals}

    result = replicas.cli("unblock", block_id)
    returned = time.monotonic()
    assert result.returncode == 0, result.stderr
    took = until_every_replica(replicas, 200, returned, BOUND)
    print(
        f"unblock in force on each replica {', '.join(f'{t * 1000:.0f} ms' for t in took)} after the command returned"
    )
    assert max(took) <= BOUND


def test_a_block_for_a_while_ends_by_itself_everywhere(replicas):
    result = replicas.cli(
        "block",
        "--provider",
        "github",
        "--claim",
        "repository_id=892734123",
        "--for",
        "5s",
        "--reason",
        "cool-off",
    )
    assert result.returncode == 0, result.stderr
    store = RedisBlockStore(replicas.redis.url)
    expires_at = json.loads(store.snapshot()[1][result.stdout.splitlines()[0]])["expires_at"]
    store.close()
    assert expires_at - time.time() > 1, "the command took too long to test the expiry"
    until_every_replica(replicas, 403, time.monotonic(), BOUND)
    # Refused up to the expiry, granted from then on, with no write in between.
    ended: list[float | None] = [None] * REPLICAS
    while None in ended and time.time() < expires_at + BOUND:
        for i, url in enumerate(replicas.urls):
            if ended[i] is None:
                sent = time.time()
                if replicas.exchange(url).status_code == 200:
                    assert sent >= expires_at - 0.05, "granted before the block's end"
                    ended[i] = time.time() - expires_at
    assert None not in ended
    print(
        f"\na 5 s block ended on each replica {', '.join(f'{t * 1000:.0f} ms' for t in ended)} after its expiry"
    )


@pytest.mark.parametrize("outage", ["stopped", "frozen"])
def test_with_redis_down_every_replica_fails_closed_then_recovers(replicas, outage):
    redis = replicas.redis
    for url in replicas.urls:
        assert replicas.exchange(url).status_code == 200
    # stopped: connections are refused at once; frozen: they hang until the client's timeout.
    redis.stop() if outage == "stopped" else redis.pause()
    try:
        time.sleep(BOUND + 0.5)
        for url in replicas.urls:
            response = replicas.exchange(url)
            assert response.status_code == 503, response.text
            assert response.json()["error"] == "unavailable"
        last = [[e for e in replicas.audit(i) if e["type"] == "exchange"][-1] for i in range(REPLICAS)]
        # The block check itself refused (it comes before the replay store is asked).
        assert all("blocks not synchronised" in str(e["reason"]) for e in last), last
    finally:
        redis.start() if outage == "stopped" else redis.resume()
    took = until_every_replica(replicas, 200, time.monotonic(), BOUND + 2.0)
    print(
        f"\nredis {outage}, then back: service returned after {', '.join(f'{t * 1000:.0f} ms' for t in took)}"
    )
