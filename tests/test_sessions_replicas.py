"""Sessions across replicas: two `ci-broker serve` processes (gunicorn, two workers each) on one
real redis. Any replica refreshes any session; one refresh token fired at both replicas at once is
honoured exactly once, and the losers count as reuse (the session ends, the alert is written)."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from broker.sandbox.stack import Sandbox, free_port
from tests.redis_support import RedisServer, require_redis_server
from tests.serving import ServedBroker

ROUNDS = 10
PER_ROUND = 8


class TwoReplicas:
    def __init__(self, box: Sandbox, servers: list[ServedBroker]) -> None:
        self.box = box
        self.servers = servers
        self.urls = [s.url for s in servers]

    def logs(self) -> str:
        return "".join(s.output() for s in self.servers)

    def audit(self) -> list[dict[str, object]]:
        events = []
        for line in self.logs().splitlines():
            if line.startswith("{"):
                try:
                    events.append(json.loads(line))
                except ValueError:
                    pass
        return events


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoReplicas]:
    require_redis_server()
    workdir = tmp_path_factory.mktemp("session-replicas")
    server = RedisServer(workdir).start()
    try:
        with Sandbox(workdir) as box:
            config = box.config_dict()
            config["server"]["replay_store"] = server.url
            config["roles"]["deploy-prod"]["session_lifetime"] = 3600
            path = box.write_config(config, name="replicas.yaml")
            # The first replica answers at the sandbox's broker URL: STS fetches the JWKS there.
            binds = [f"127.0.0.1:{box.broker_port}", f"127.0.0.1:{free_port()}"]
            servers = [
                ServedBroker(path, bind, workdir / f"replica-{i}.log", workers=2)
                for i, bind in enumerate(binds)
            ]
            try:
                for served in servers:
                    served.wait_ready()
                yield TwoReplicas(box, servers)
            finally:
                for served in servers:
                    served.stop()
    finally:
        server.stop()


def post(url: str, path: str, token: str, body: dict[str, object] | None = None) -> requests.Response:
    return requests.post(
        f"{url}{path}",
        json=body if body is not None else {},
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    )


def start(replicas: TwoReplicas) -> dict[str, object]:
    response = post(replicas.urls[0], "/v1/exchange", replicas.box.github_token(), {"role": "deploy-prod"})
    assert response.status_code == 200, response.text
    return response.json()


def test_any_replica_refreshes_a_session_another_started(replicas):
    token = start(replicas)["session"]["refresh_token"]  # type: ignore[index]
    for url in (replicas.urls[1], replicas.urls[0], replicas.urls[1]):
        response = post(url, "/v1/refresh", token)
        assert response.status_code == 200, response.text
        token = response.json()["session"]["refresh_token"]
    assert post(replicas.urls[0], "/v1/revoke", token).status_code == 200
    assert post(replicas.urls[1], "/v1/refresh", token).status_code == 401


def test_one_refresh_token_fired_at_both_replicas_at_once_wins_exactly_once(replicas):
    box = replicas.box
    for _ in range(ROUNDS):
        body = start(replicas)
        session = body["session"]
        token = session["refresh_token"]  # type: ignore[index]
        calls = len(box.sts.accepted)
        barrier = threading.Barrier(PER_ROUND)

        def fire(i: int, token: str = token, barrier: threading.Barrier = barrier) -> requests.Response:
            barrier.wait()
            return post(replicas.urls[i % 2], "/v1/refresh", token)

        with ThreadPoolExecutor(PER_ROUND) as pool:
            responses = list(pool.map(fire, range(PER_ROUND)))
        outcomes = Counter((r.status_code, r.json().get("error", "")) for r in responses)
        assert outcomes == {(200, ""): 1, (401, "invalid_token"): PER_ROUND - 1}, outcomes
        assert len(box.sts.accepted) == calls + 1, "exactly one set of credentials was issued"
        # The losers presented a token that another request had spent: the session is over, even
        # for the winner's new token.
        winner = next(r for r in responses if r.status_code == 200).json()
        assert post(replicas.urls[0], "/v1/refresh", winner["session"]["refresh_token"]).status_code == 401
        alerts = [
            e
            for e in replicas.audit()
            if e.get("alert") == "refresh_reuse" and e.get("details", {}).get("session_id") == session["id"]  # type: ignore[index]
        ]
        assert alerts, "the reuse alert was written"
    logs = replicas.logs()
    assert "cibrt_" not in logs, "no refresh token in any replica's log or audit event"
