"""Sessions over HTTP (contract section 8): `/v1/exchange` starts one for a role with
`session_lifetime`, `/v1/refresh` re-checks everything and rotates the refresh token, a spent
token ends the session and raises `refresh_reuse`, and `/v1/revoke` ends it (RFC 7009)."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import boto3
import jwt
import pytest
import requests

from broker import metrics
from broker.config import build_config
from broker.errors import Unavailable
from broker.service import build_broker
from broker.sessions import MemorySessionStore, Sessions, SqliteSessionStore, new_refresh_token
from tests.helpers import assert_refused, last_refusal
from tests.redis_support import RedisServer, redis_server_fixture
from tests.test_metrics import sample, scrape

LIFETIME = 7200


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    yield from redis_server_fixture(tmp_path_factory)


def with_sessions(sandbox: Any, store: str = "memory", **roles: Any) -> dict[str, Any]:
    """The sandbox's policy with sessions on every role (and any role changes given)."""
    config = sandbox.config_dict()
    config["server"]["replay_store"] = store
    for role in config["roles"].values():
        role["session_lifetime"] = LIFETIME
    config["roles"]["gcp-deploy"]["gcp"]["federated_token"] = True
    config["roles"]["azure-deploy"]["azure"]["federated_token"] = True
    for name, change in roles.items():
        if change is None:
            del config["roles"][name]
        else:
            config["roles"][name].update(change)
    return config


@pytest.fixture
def sessions_broker(sandbox, serve_config) -> Any:
    return serve_config(with_sessions(sandbox))


def refresh(sandbox: Any, token: str | None, body: Any = None, **headers: str) -> requests.Response:
    sent = {"Authorization": f"Bearer {token}"} if token is not None else {}
    sent.update(headers)
    return requests.post(
        f"{sandbox.broker_url}/v1/refresh", json={} if body is None else body, headers=sent, timeout=30
    )


def revoke(sandbox: Any, token: str | None) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return requests.post(f"{sandbox.broker_url}/v1/revoke", headers=headers, timeout=30)


def start_session(sandbox: Any, role: str = "deploy-prod") -> dict[str, Any]:
    token = sandbox.github_token() if role != "gitlab-deploy" else sandbox.gitlab_token()
    response = sandbox.exchange(token, role)
    assert response.status_code == 200, response.text
    return response.json()


def caller(creds: dict[str, str], sts_url: str) -> str:
    sts = boto3.client(
        "sts",
        endpoint_url=sts_url,
        region_name="eu-west-1",
        aws_access_key_id=creds["access_key_id"],
        aws_secret_access_key=creds["secret_access_key"],
        aws_session_token=creds["session_token"],
    )
    return str(sts.get_caller_identity()["Arn"])


def rfc3339(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


# -- the session an exchange starts ---------------------------------------------------------------


def test_an_exchange_for_a_session_role_returns_a_session(sandbox, sessions_broker):
    before = time.time()
    body = start_session(sandbox)
    session = body["session"]
    assert set(session) == {"id", "refresh_token", "expires_at"}
    assert session["refresh_token"].startswith("cibrt_") and len(session["refresh_token"]) == 49
    assert int(before) <= rfc3339(session["expires_at"]) - LIFETIME <= time.time() + 1


def test_a_role_without_session_lifetime_returns_no_session(sandbox, broker):
    body = start_session(sandbox)
    assert "session" not in body


# -- refresh ---------------------------------------------------------------------------------------


def test_a_refresh_returns_fresh_working_credentials_and_rotates_the_token(sandbox, sessions_broker):
    first = start_session(sandbox)
    token = first["session"]["refresh_token"]
    response = refresh(sandbox, token)
    assert response.status_code == 200, response.text
    second = response.json()
    assert set(second) == {"role", "cloud", "expires_at", "credentials", "session"}
    assert second["role"] == "deploy-prod" and second["cloud"] == "aws"
    assert second["credentials"]["access_key_id"] != first["credentials"]["access_key_id"]
    assert caller(second["credentials"], sandbox.sts.url).startswith(
        "arn:aws:sts::123456789012:assumed-role/deploy-prod/"
    )
    # Same session, same end; a new refresh token, and the old one is spent.
    assert second["session"]["id"] == first["session"]["id"]
    assert second["session"]["expires_at"] == first["session"]["expires_at"]
    assert second["session"]["refresh_token"] != token
    third = refresh(sandbox, second["session"]["refresh_token"])
    assert third.status_code == 200, third.text


def test_a_refresh_signs_a_new_assertion_for_the_same_job(sandbox, sessions_broker):
    start_session(sandbox)
    exchanged = sandbox.sts.accepted[-1]
    body = start_session(sandbox)
    assert refresh(sandbox, body["session"]["refresh_token"]).status_code == 200
    refreshed = sandbox.sts.accepted[-1]
    assert refreshed["sub"] == "role:deploy-prod" and refreshed["jti"] != exchanged["jti"]
    assert refreshed["run_id"] == exchanged["run_id"] and refreshed["repository"] == exchanged["repository"]


def test_reusing_a_spent_token_ends_the_session_and_raises_the_alert(sandbox, sessions_broker, audit_events):
    body = start_session(sandbox)
    spent = body["session"]["refresh_token"]
    current = refresh(sandbox, spent).json()["session"]["refresh_token"]
    accepted = len(sandbox.sts.accepted)

    reused = refresh(sandbox, spent)
    assert_refused(reused, 401, "invalid_token")
    assert "already used" in reused.json()["message"]
    alerts = [e for e in audit_events if e.get("type") == "alert"]
    assert len(alerts) == 1
    alert = alerts[0]
    assert alert["alert"] == "refresh_reuse" and alert["severity"] == "critical"
    assert alert["request_id"] == reused.headers["X-Request-Id"]
    assert alert["details"]["session_id"] == body["session"]["id"] and alert["role"] == "deploy-prod"
    assert (
        alert["provider"] == "github" and alert["subject"] == "repo:octo-org/octo-repo:environment:production"
    )
    assert alert["claims"]["repository_id"] == "892734123"
    # The whole session is dead: the current token (the thief's or the job's) is refused too.
    assert_refused(refresh(sandbox, current), 401, "invalid_token")
    assert len(sandbox.sts.accepted) == accepted, "nothing was issued after the reuse"
    event = last_refusal(audit_events)
    assert event["type"] == "refresh" and "ended" in event["reason"]


def test_a_spent_token_after_the_session_ended_raises_no_alert(sandbox, sessions_broker, audit_events):
    body = start_session(sandbox)
    spent = body["session"]["refresh_token"]
    current = refresh(sandbox, spent).json()["session"]["refresh_token"]
    assert revoke(sandbox, current).status_code == 200  # the job ended
    response = refresh(sandbox, spent)
    assert_refused(response, 401, "invalid_token")
    assert "has ended" in response.json()["message"]
    assert not [e for e in audit_events if e.get("type") == "alert"], "nothing left to protect"


def test_a_policy_change_between_exchange_and_refresh_is_refused(
    sandbox, serve_config, tmp_path, audit_events
):
    store = f"sqlite:///{tmp_path}/state.db"
    serve_config(with_sessions(sandbox, store))
    body = start_session(sandbox)
    # The config is reloaded (a new deployment on the same store): main is no longer enough.
    changed = with_sessions(sandbox, store)
    changed["roles"]["deploy-prod"]["allow"][0]["claims"]["ref"] = "refs/heads/release"
    serve_config(changed)
    accepted = len(sandbox.sts.accepted)
    response = refresh(sandbox, body["session"]["refresh_token"])
    assert_refused(response, 403, "access_denied")
    event = last_refusal(audit_events)
    assert event["type"] == "refresh" and event["session_id"] == body["session"]["id"]
    assert "ref" in event["reason"] and event["role"] == "deploy-prod"
    assert len(sandbox.sts.accepted) == accepted
    # The policy as it was still grants the same recorded claims: the refusal came from the change.
    serve_config(with_sessions(sandbox, store))
    assert refresh(sandbox, body["session"]["refresh_token"]).status_code == 200


def test_a_deny_rule_added_after_the_exchange_refuses_the_refresh(sandbox, serve_config, tmp_path):
    store = f"sqlite:///{tmp_path}/state.db"
    serve_config(with_sessions(sandbox, store))
    body = start_session(sandbox)
    changed = with_sessions(sandbox, store)
    changed["deny"] = [{"provider": "github", "claims": {"repository_id": "892734123"}, "reason": "incident"}]
    serve_config(changed)
    assert_refused(refresh(sandbox, body["session"]["refresh_token"]), 403, "access_denied")


def test_a_role_removed_after_the_exchange_refuses_the_refresh(sandbox, serve_config, tmp_path):
    store = f"sqlite:///{tmp_path}/state.db"
    serve_config(with_sessions(sandbox, store))
    body = start_session(sandbox)
    serve_config(with_sessions(sandbox, store, **{"deploy-prod": None}))
    assert_refused(refresh(sandbox, body["session"]["refresh_token"]), 403, "access_denied")


def test_a_provider_removed_after_the_exchange_refuses_the_refresh(sandbox, serve_config, tmp_path):
    store = f"sqlite:///{tmp_path}/state.db"
    serve_config(with_sessions(sandbox, store))
    body = start_session(sandbox, "gitlab-deploy")
    changed = with_sessions(sandbox, store)
    changed["providers"]["gitlab"]["issuer"] = "https://gitlab.example.com"
    serve_config(changed)
    assert_refused(refresh(sandbox, body["session"]["refresh_token"]), 403, "access_denied")


def serve_with_clock(sandbox: Any, serve_config: Any) -> list[float]:
    """A broker whose sessions read a clock the test moves: `now[0] += seconds`."""
    now = [time.time()]
    config = with_sessions(sandbox)
    loaded = build_config(copy.deepcopy(config), base_dir=sandbox.workdir)
    clocked = build_broker(loaded, sessions=Sessions(MemorySessionStore(), clock=lambda: now[0]))
    serve_config(config, broker=clocked)
    return now


def test_an_expired_session_is_refused(sandbox, serve_config):
    now = serve_with_clock(sandbox, serve_config)
    body = start_session(sandbox)
    now[0] += LIFETIME - 5
    last = refresh(sandbox, body["session"]["refresh_token"])
    assert last.status_code == 200, "five seconds before its end the session still refreshes"
    now[0] += 10
    response = refresh(sandbox, last.json()["session"]["refresh_token"])
    assert_refused(response, 401, "invalid_token")
    assert "expired" in response.json()["message"]


def test_refreshed_credentials_never_outlive_the_session_by_more_than_the_clouds_minimum(
    sandbox, serve_config
):
    now = serve_with_clock(sandbox, serve_config)
    body = start_session(sandbox)
    now[0] += LIFETIME - 1200  # 20 minutes left: AWS credentials for 20 minutes, not the role's hour
    refreshed = refresh(sandbox, body["session"]["refresh_token"]).json()
    assert 1100 <= rfc3339(refreshed["expires_at"]) - time.time() <= 1201
    now[0] += 900  # 5 minutes left: AWS's minimum of 15 minutes still holds
    last = refresh(sandbox, refreshed["session"]["refresh_token"]).json()
    assert 800 <= rfc3339(last["expires_at"]) - time.time() <= 901


def test_a_refresh_may_ask_for_a_shorter_duration_within_the_roles_bounds(sandbox, sessions_broker):
    token = start_session(sandbox)["session"]["refresh_token"]
    assert_refused(refresh(sandbox, token, {"duration": 600}), 400, "invalid_request")
    assert_refused(refresh(sandbox, token, {"duration": 7200}), 400, "invalid_request")
    response = refresh(sandbox, token, {"duration": 1000})  # the refusals above spent nothing
    assert response.status_code == 200, response.text
    assert 900 <= rfc3339(response.json()["expires_at"]) - time.time() <= 1001


def test_a_refresh_is_audited_with_the_first_exchanges_identity(sandbox, sessions_broker, audit_events):
    body = start_session(sandbox)
    exchanged = audit_events[-1]
    assert exchanged["type"] == "exchange" and exchanged["session_id"] == body["session"]["id"]
    response = refresh(sandbox, body["session"]["refresh_token"])
    event = audit_events[-1]
    assert event["type"] == "refresh" and event["outcome"] == "granted"
    assert event["request_id"] == response.headers["X-Request-Id"]
    assert event["session_id"] == body["session"]["id"]
    for name in ("role", "cloud", "provider", "issuer", "subject", "jti", "token_sha256", "claims"):
        assert event[name] == exchanged[name], name
    assert event["expires_at"] == response.json()["expires_at"]


def test_refreshes_are_counted(sandbox, sessions_broker):
    labels = dict(provider="github", cloud="aws", role="deploy-prod")
    before = scrape(sandbox.broker_url)
    body = start_session(sandbox)
    token = refresh(sandbox, body["session"]["refresh_token"]).json()["session"]["refresh_token"]
    refresh(sandbox, body["session"]["refresh_token"])  # reused
    after = scrape(sandbox.broker_url)

    def delta(name: str, **extra: str) -> float:
        return sample(after, name, **extra) - sample(before, name, **extra)

    assert delta("ci_broker_refreshes_total", outcome="granted", error="", **labels) == 1
    # Refused before the policy is asked: the role is the session's, the cloud not looked up.
    refused = dict(outcome="refused", error="invalid_token", provider="github", role="deploy-prod")
    assert delta("ci_broker_refreshes_total", **refused) == 1
    assert delta("ci_broker_sessions_ended_total", reason="refresh_reuse") == 1
    assert delta("ci_broker_request_duration_seconds_count", endpoint="refresh") == 2
    revoke(sandbox, token)
    assert delta("ci_broker_sessions_ended_total", reason="revoked") == 0  # the session had ended


def test_the_per_session_limit_answers_429_without_spending_the_token(sandbox, serve_config, audit_events):
    config = with_sessions(sandbox)
    config["server"]["rate_limits"] = {"per_session": "2/minute"}
    app = serve_config(config)
    body = start_session(sandbox)
    token = refresh(sandbox, body["session"]["refresh_token"]).json()["session"]["refresh_token"]
    token = refresh(sandbox, token).json()["session"]["refresh_token"]
    response = refresh(sandbox, token)
    assert_refused(response, 429, "rate_limited")
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    assert "per-session limit 2/minute" in last_refusal(audit_events)["reason"]
    found = app.extensions["broker"].sessions.find(token)
    assert found is not None and not found.spent, "a refused refresh leaves the token usable"
    # Another session of the same repository has its own budget.
    assert refresh(sandbox, start_session(sandbox)["session"]["refresh_token"]).status_code == 200


def test_refreshes_count_against_the_identitys_limit_like_exchanges(sandbox, serve_config):
    config = with_sessions(sandbox)
    config["server"]["rate_limits"] = {"per_identity": "2/minute"}
    serve_config(config)
    body = start_session(sandbox)
    token = refresh(sandbox, body["session"]["refresh_token"]).json()["session"]["refresh_token"]
    assert_refused(refresh(sandbox, token), 429, "rate_limited")
    assert_refused(sandbox.exchange(sandbox.github_token()), 429, "rate_limited")


def test_a_cloud_failure_after_the_checks_leaves_the_token_usable(sandbox, sessions_broker):
    body = start_session(sandbox, "gcp-deploy")
    token = body["session"]["refresh_token"]
    sandbox.gcp.faults.status(400, path="/v1/token")
    try:
        assert_refused(refresh(sandbox, token), 502, "upstream_error")
    finally:
        sandbox.gcp.faults.clear()
    # The rotation was undone: the same token works, and it was not taken for a reuse.
    response = refresh(sandbox, token)
    assert response.status_code == 200, response.text
    assert refresh(sandbox, response.json()["session"]["refresh_token"]).status_code == 200


# -- the store --------------------------------------------------------------------------------------


def test_store_down_is_503_and_nothing_is_issued(sandbox, serve_config, tmp_path):
    server = RedisServer(tmp_path).start()
    try:
        serve_config(with_sessions(sandbox, server.url))
        body = start_session(sandbox)
        accepted = len(sandbox.sts.accepted)
        server.stop()
        response = refresh(sandbox, body["session"]["refresh_token"])
        assert_refused(response, 503, "unavailable")
        assert len(sandbox.sts.accepted) == accepted
        assert_refused(revoke(sandbox, body["session"]["refresh_token"]), 503, "unavailable")
    finally:
        server.stop()


def test_a_rotation_the_store_cannot_record_issues_nothing(sandbox, serve_config, tmp_path):
    class RotationFails(SqliteSessionStore):
        def rotate(self, presented: Any, token_hash: str) -> bool:
            raise Unavailable("the session store is unavailable", reason="sqlite: disk I/O error")

    config = with_sessions(sandbox)
    loaded = build_config(copy.deepcopy(config), base_dir=sandbox.workdir)
    failing = build_broker(loaded, sessions=Sessions(RotationFails(tmp_path / "s.db")))
    serve_config(config, broker=failing)
    body = start_session(sandbox)
    accepted = len(sandbox.sts.accepted)
    assert_refused(refresh(sandbox, body["session"]["refresh_token"]), 503, "unavailable")
    assert len(sandbox.sts.accepted) == accepted


def test_any_replica_on_a_shared_store_refreshes_any_session(sandbox, serve_config, redis_server):
    redis_server.flush()
    serve_config(with_sessions(sandbox, redis_server.url))
    body = start_session(sandbox)
    serve_config(with_sessions(sandbox, redis_server.url))  # another process, the same store
    response = refresh(sandbox, body["session"]["refresh_token"])
    assert response.status_code == 200, response.text


# -- revoke -----------------------------------------------------------------------------------------


def test_revoke_ends_the_session_and_is_idempotent(sandbox, sessions_broker, audit_events):
    body = start_session(sandbox)
    token = body["session"]["refresh_token"]
    for _ in range(2):
        response = revoke(sandbox, token)
        assert response.status_code == 200 and response.json() == {}
    revoked = [e for e in audit_events if e["type"] == "revoke"]
    assert [e["outcome"] for e in revoked] == ["revoked", "unchanged"]
    assert revoked[0]["session_id"] == body["session"]["id"]
    response = refresh(sandbox, token)
    assert_refused(response, 401, "invalid_token")
    assert "ended" in response.json()["message"]
    assert not [e for e in audit_events if e.get("type") == "alert"], "a revoke is not a theft"


def test_revoke_with_a_spent_token_ends_the_session_too(sandbox, sessions_broker):
    body = start_session(sandbox)
    spent = body["session"]["refresh_token"]
    current = refresh(sandbox, spent).json()["session"]["refresh_token"]
    assert revoke(sandbox, spent).status_code == 200
    assert_refused(refresh(sandbox, current), 401, "invalid_token")


@pytest.mark.parametrize("token", ["cibrt_" + "A" * 43, "garbage", "eyJhbGciOiJub25lIn0.e30."])
def test_revoke_of_anything_else_is_200_and_changes_nothing(sandbox, sessions_broker, token):
    response = revoke(sandbox, token)
    assert response.status_code == 200 and response.json() == {}


def test_revoke_without_a_bearer_token_is_401(sandbox, sessions_broker):
    assert_refused(revoke(sandbox, None), 401, "invalid_token")


# -- bad input ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "token",
    [
        "cibrt_short",
        "cibrt_" + "A" * 42 + "!",
        "cibrt_" + "A" * 44,
        "x" * 20000,
        "cibrt_" + "A" * 43 + " extra",
        "\u00e9" * 43,
    ],
    ids=["short", "bad-char", "long", "oversized", "two-words", "non-ascii"],
)
def test_a_malformed_or_oversized_refresh_token_is_401(sandbox, sessions_broker, token):
    response = requests.post(
        f"{sandbox.broker_url}/v1/refresh",
        json={},
        headers={"Authorization": f"Bearer {token}".encode()},
        timeout=30,
    )
    assert_refused(response, 401, "invalid_token")


def test_an_unknown_refresh_token_is_401(sandbox, sessions_broker):
    response = refresh(sandbox, new_refresh_token())
    assert_refused(response, 401, "invalid_token")
    assert response.json()["message"] == "the refresh token is not valid"


def test_a_ci_token_sent_to_refresh_is_401(sandbox, sessions_broker):
    response = refresh(sandbox, sandbox.github_token())
    assert_refused(response, 401, "invalid_token")
    assert "/v1/exchange" in response.json()["message"]


def test_a_refresh_token_sent_to_exchange_is_401(sandbox, sessions_broker):
    token = start_session(sandbox)["session"]["refresh_token"]
    assert_refused(sandbox.exchange(token), 401, "invalid_token")
    assert refresh(sandbox, token).status_code == 200, "the mistake spent nothing"


def test_no_bearer_token_on_refresh_is_401(sandbox, sessions_broker):
    assert_refused(refresh(sandbox, None), 401, "invalid_token")


def test_a_refresh_body_is_checked_like_an_exchange_body(sandbox, sessions_broker):
    token = start_session(sandbox)["session"]["refresh_token"]
    headers = {"Authorization": f"Bearer {token}"}
    url = f"{sandbox.broker_url}/v1/refresh"
    assert_refused(requests.post(url, data="{}", headers=headers, timeout=30), 415, "unsupported_media_type")
    assert_refused(refresh(sandbox, token, {"role": "deploy-prod"}), 400, "invalid_request")
    assert_refused(refresh(sandbox, token, {"duration": "900"}), 400, "invalid_request")
    assert_refused(refresh(sandbox, token, []), 400, "invalid_request")
    assert refresh(sandbox, token).status_code == 200, "none of those spent the token"


def test_a_refresh_token_never_reaches_a_log_an_audit_event_or_an_error(
    sandbox, sessions_broker, audit_events, all_logs
):
    responses = []
    body = start_session(sandbox)
    tokens = [body["session"]["refresh_token"]]
    first = refresh(sandbox, tokens[0])
    tokens.append(first.json()["session"]["refresh_token"])
    responses += [refresh(sandbox, tokens[0]), refresh(sandbox, tokens[1]), revoke(sandbox, tokens[1])]
    responses += [refresh(sandbox, tokens[0] + "x"), refresh(sandbox, tokens[0], {"bad": 1})]
    text = "\n".join(
        [json.dumps(audit_events), all_logs.text, *(r.text for r in responses), *map(str, all_logs.records)]
    )
    for token in tokens:
        assert token not in text
        assert token[6:] not in text and token[6:30] not in text


# -- GCP and Azure -----------------------------------------------------------------------------------


def test_a_gcp_role_with_federated_token_returns_an_external_account_source(sandbox, sessions_broker):
    body = start_session(sandbox, "gcp-deploy")
    creds = body["credentials"]
    assert {"access_token", "token_type", "service_account"} <= set(creds)
    assert creds["audience"] == sandbox.gcp.audience and creds["token_url"] == sandbox.gcp.token_url
    assert creds["service_account_impersonation_url"].endswith(
        "/serviceAccounts/deployer@ci-broker-demo.iam.gserviceaccount.com:generateAccessToken"
    )
    claims = jwt.decode(creds["federated_token"], options={"verify_signature": False})
    assert claims["aud"] == sandbox.gcp.audience and claims["sub"] == "role:gcp-deploy"
    assert claims["exp"] - claims["iat"] <= 300
    refreshed = refresh(sandbox, body["session"]["refresh_token"]).json()["credentials"]
    assert refreshed["federated_token"] != creds["federated_token"]


def test_a_gcp_role_returns_no_assertion_unless_it_asks(sandbox, broker):
    creds = start_session(sandbox, "gcp-deploy")["credentials"]
    assert set(creds) == {"access_token", "token_type", "service_account"}


def test_an_azure_session_refreshes(sandbox, sessions_broker):
    body = start_session(sandbox, "azure-deploy")
    response = refresh(sandbox, body["session"]["refresh_token"])
    assert response.status_code == 200, response.text
    creds = response.json()["credentials"]
    assert creds["federated_token"] != body["credentials"]["federated_token"]
    assert sandbox.azure.describe(creds["access_token"]) is not None


def test_sessions_lifetime_is_bounded_in_the_config(sandbox):
    from broker.config import ConfigError

    config = sandbox.config_dict()
    config["roles"]["deploy-prod"]["session_lifetime"] = 43201
    with pytest.raises(ConfigError, match=r"roles\.deploy-prod\.session_lifetime: must be at most 43200"):
        build_config(config, base_dir=sandbox.workdir)
    config["roles"]["deploy-prod"]["session_lifetime"] = "1h"
    with pytest.raises(ConfigError, match="session_lifetime: must be an integer"):
        build_config(config, base_dir=sandbox.workdir)


def test_metrics_fold_unknown_end_reasons():
    metrics.session_ended("attacker-chosen")
    assert sample(metrics.render().decode(), "ci_broker_sessions_ended_total", reason="other") >= 1
