"""`ci-broker revoke` (contract section 9): ends broker sessions in the shared store, prints each
cloud's step against credentials already issued, and with --apply performs the AWS step through
boto3 IAM (moto's IAM, served by the sandbox's STS endpoint) and the GCP step through google-auth
against the sandbox's IAM `:disable`, which checks the operator's token.

moto does not evaluate IAM policies: what is tested for AWS is the policy document's exact content,
that --apply writes exactly it under one name, and that repeating it never weakens it.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests

from broker.cli import main
from broker.config import load_config
from broker.revoke import GCP_SCOPE, POLICY_NAME, allowed_roles, deny_older_sessions_policy, policy_cutoff
from broker.sandbox.issuer import github_claims
from broker.sandbox.stack import DEPLOY_ROLE_ARN, GCP_SERVICE_ACCOUNT
from broker.sessions import OPERATOR, Session, Sessions, open_session_store
from tests.redis_support import RedisServer, redis_server_fixture

REPO_ID = "892734123"  # the sandbox policy's repository
OTHER_REPO_ID = "55555"
OPERATOR_EMAIL = "oncall@ci-broker-demo.iam.gserviceaccount.com"


def write_config(sandbox: Any, tmp_path: Path, store: str | None = None) -> tuple[dict[str, Any], Path]:
    """The sandbox's policy with sessions on deploy-prod, on `store` (default: sqlite in
    tmp_path), and its config file beside a copy of the signing key."""
    config = sandbox.config_dict()
    config["server"]["replay_store"] = store or f"sqlite:///{tmp_path / 'state.db'}"
    config["roles"]["deploy-prod"]["session_lifetime"] = 7200
    path = tmp_path / "broker.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    (tmp_path / sandbox.key_path.name).write_bytes(sandbox.key_path.read_bytes())
    return config, path


@pytest.fixture
def store_config(sandbox, tmp_path) -> tuple[dict[str, Any], Path]:
    return write_config(sandbox, tmp_path)


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def start_session(path: Path, role: str = "deploy-prod", *, ago: float = 0, **claims: Any) -> Session:
    """A one-hour session of `role` for a GitHub job with `claims`, started `ago` seconds ago."""
    config = load_config(str(path))
    store = open_session_store(config.server.replay_store)
    try:
        session, _ = Sessions(store, clock=lambda: time.time() - ago).start(
            role=role,
            lifetime=3600,
            provider="github",
            issuer="https://token.actions.githubusercontent.com",
            claims=github_claims(**claims),
            token_sha256="0" * 64,
        )
        return session
    finally:
        store.close()


def live_ids(path: Path) -> set[str]:
    config = load_config(str(path))
    store = open_session_store(config.server.replay_store)
    try:
        return {s.id for s in store.sessions(time.time())}
    finally:
        store.close()


def printed_policy(out: str) -> dict[str, Any]:
    (line,) = [line for line in out.splitlines() if "aws iam put-role-policy" in line]
    argv = shlex.split(line)
    return json.loads(argv[argv.index("--policy-document") + 1])


def apply_gcp(capsys: pytest.CaptureFixture[str], sandbox: Any, path: Path) -> tuple[int, str, str]:
    """`revoke --role gcp-deploy --apply` against the sandbox's IAM API."""
    return cli(
        capsys,
        "revoke",
        "--config",
        str(path),
        "--role",
        "gcp-deploy",
        "--apply",
        "--gcp-iam-url",
        sandbox.gcp.url,
    )


@pytest.fixture
def aws_operator(sandbox, monkeypatch) -> Iterator[Any]:
    """The operator's AWS credentials (boto3's default chain) against moto's IAM, which holds the
    sandbox's deploy-prod role; the revoke policy is removed afterwards (the sandbox is shared)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_IAM", sandbox.sts.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAOPERATOR000000000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "operator-secret-key-not-printed-0000000000")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    iam = boto3.client("iam", region_name="us-east-1")
    name = DEPLOY_ROLE_ARN.rsplit("/", 1)[1]
    try:
        iam.create_role(
            RoleName=name, AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": []})
        )
    except iam.exceptions.EntityAlreadyExistsException:
        pass
    yield iam
    for policy in iam.list_role_policies(RoleName=name)["PolicyNames"]:
        iam.delete_role_policy(RoleName=name, PolicyName=policy)


@pytest.fixture
def gcp_operator(sandbox, tmp_path, monkeypatch) -> Iterator[dict[str, str]]:
    """The operator's Google application default credentials: a service account key whose token
    endpoint is the sandbox's; the disabled account is enabled again afterwards."""
    key = sandbox.gcp.add_operator(OPERATOR_EMAIL)
    key_file = tmp_path / "operator.json"
    key_file.write_text(json.dumps(key))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
    yield key
    sandbox.gcp.disabled.discard(GCP_SERVICE_ACCOUNT)
    sandbox.gcp.operators.pop(OPERATOR_EMAIL, None)


# -- ending sessions --------------------------------------------------------------------------------


def revoke_repository(capsys: pytest.CaptureFixture[str], path: Path) -> tuple[int, str, str]:
    """`revoke` of the sandbox policy's repository, for INC-4711."""
    return cli(
        capsys, "revoke", "--config", str(path), "--provider", "github",
        "--claim", f"repository_id={REPO_ID}", "--reason", "INC-4711",
    )  # fmt: skip


def test_revoke_by_identity_ends_only_its_sessions(capsys, store_config):
    _, path = store_config
    mine = [start_session(path, repository_id=REPO_ID), start_session(path, repository_id=REPO_ID)]
    other = start_session(path, repository_id=OTHER_REPO_ID)
    code, out, err = revoke_repository(capsys, path)
    assert code == 0, out + err
    assert "ended 2 broker sessions (reason: INC-4711)" in out
    assert all(s.id in out for s in mine)
    assert live_ids(path) == {other.id}
    config = load_config(str(path))
    store = open_session_store(config.server.replay_store)
    try:
        ended = store.get(mine[0].id)
    finally:
        store.close()
    assert ended is not None and ended.end_reason == OPERATOR


def test_revoke_writes_one_audit_event_naming_what_it_ended(capsys, store_config, tmp_path):
    _, path = store_config
    config = json.loads(path.read_text())
    config["server"]["audit"] = {"sink": "file:audit.log"}
    path.write_text(json.dumps(config))
    mine = start_session(path, repository_id=REPO_ID)
    code, out, err = revoke_repository(capsys, path)
    assert code == 0, out + err
    (event,) = [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]
    assert event["type"] == "revoke" and event["outcome"] == "applied" and event["reason"] == "INC-4711"
    assert event["provider"] == "github" and event["claims"] == {"repository_id": REPO_ID}
    assert event["sessions_ended"] == [mine.id] and "deploy-prod" in event["roles"]
    assert event["cloud_steps"] and {step["result"] for step in event["cloud_steps"]} == {
        "printed"
    }  # no --apply
    assert event["operator"]


def test_revoke_by_role_and_by_session(capsys, store_config):
    _, path = store_config
    first, second = start_session(path), start_session(path)
    code, out, err = cli(capsys, "revoke", "--config", str(path), "--session", first.id)
    assert code == 0, out + err
    assert live_ids(path) == {second.id}
    assert "Credentials the clouds already issued for deploy-prod:" in out
    code, out, err = cli(capsys, "revoke", "--config", str(path), "--role", "deploy-prod")
    assert code == 0, out + err
    assert "ended 1 broker session" in out and live_ids(path) == set()
    code, out, err = cli(capsys, "revoke", "--config", str(path), "--session", first.id)
    assert code == 0, err  # the cloud side may still need cutting for an ended session's role
    assert f"session {first.id} had already ended" in out and "ended 0 broker sessions" in out


def test_an_expired_session_is_not_counted_as_ended(capsys, store_config):
    _, path = store_config
    old = start_session(path, ago=7200)
    code, out, err = cli(capsys, "revoke", "--config", str(path), "--session", old.id)
    assert code == 0, out + err
    assert f"session {old.id} had already expired" in out and "ended 0 broker sessions" in out


def test_issued_before_spares_later_sessions(capsys, store_config):
    _, path = store_config
    early = start_session(path)
    cutoff = datetime.fromtimestamp(time.time(), UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    time.sleep(0.01)
    late = start_session(path)
    code, out, err = cli(
        capsys, "revoke", "--config", str(path), "--role", "deploy-prod", "--issued-before", cutoff
    )
    assert code == 0, out + err
    assert early.id in out and live_ids(path) == {late.id}


def test_a_revoked_session_cannot_refresh(sandbox, serve_config, store_config, capsys):
    config, path = store_config
    serve_config(config)
    response = sandbox.exchange(sandbox.github_token())
    assert response.status_code == 200, response.text
    refresh_token = response.json()["session"]["refresh_token"]
    code, out, err = cli(capsys, "revoke", "--config", str(path), "--role", "deploy-prod")
    assert code == 0, out + err
    answer = requests.post(
        f"{sandbox.broker_url}/v1/refresh",
        json={},
        headers={"Authorization": f"Bearer {refresh_token}"},
        timeout=30,
    )
    assert answer.status_code == 401 and "ended" in answer.json()["message"]
    assert refresh_token not in out + err


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    yield from redis_server_fixture(tmp_path_factory)


def test_revoke_ends_sessions_in_redis(capsys, sandbox, tmp_path, redis_server):
    _, path = write_config(sandbox, tmp_path, redis_server.url)
    mine, other = start_session(path, repository_id=REPO_ID), start_session(path, repository_id=OTHER_REPO_ID)
    code, out, err = cli(
        capsys, "revoke", "--config", str(path), "--provider", "github", "--claim", f"repository_id={REPO_ID}"
    )
    assert code == 0, out + err
    assert mine.id in out and live_ids(path) == {other.id}


# -- what the clouds are told -------------------------------------------------------------------


def test_without_apply_it_prints_each_clouds_exact_step_and_changes_nothing(
    capsys, sandbox, store_config, aws_operator
):
    _, path = store_config
    before = time.time()
    code, out, err = cli(
        capsys, "revoke", "--config", str(path), "--provider", "github", "--claim", f"repository_id={REPO_ID}"
    )
    assert code == 0, out + err
    # The identity's allowed roles, across the three clouds (not gitlab-deploy: a GitLab role).
    assert "for azure-deploy, deploy-prod, gcp-deploy:" in out
    policy = printed_policy(out)
    cutoff = policy_cutoff(policy)
    assert cutoff is not None and before <= cutoff <= time.time() + 1
    assert policy == deny_older_sessions_policy(cutoff)
    assert f"aws iam put-role-policy --role-name deploy-prod --policy-name {POLICY_NAME}" in out
    assert f"gcloud iam service-accounts disable {GCP_SERVICE_ACCOUNT} --project=ci-broker-demo" in out
    assert "az ad app federated-credential delete --id 0f1e2d3c-4b5a-4978-8a9b-acbdcedf0011 " in out
    assert "--federated-credential-id broker-role-azure-deploy" in out
    assert "at most 60 to 90 minutes" in out
    assert "Nothing outside the broker was changed" in out
    assert aws_operator.list_role_policies(RoleName="deploy-prod")["PolicyNames"] == []
    assert sandbox.gcp.disabled == set()


def test_the_deny_policy_is_exactly_iams_revoke_older_sessions_shape():
    cutoff = datetime(2026, 12, 3, 14, 20, 0, 250000, tzinfo=UTC).timestamp()
    assert deny_older_sessions_policy(cutoff) == {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "CiBrokerRevokeOlderSessions",
                "Effect": "Deny",
                "Action": "*",
                "Resource": "*",
                # Rounded up: a session issued in the revoke's own second is older than the cutoff.
                "Condition": {"DateLessThan": {"aws:TokenIssueTime": "2026-12-03T14:20:01Z"}},
            }
        ],
    }


def test_apply_puts_exactly_the_printed_policy_on_the_role_through_boto3(capsys, store_config, aws_operator):
    _, path = store_config
    when = datetime.fromtimestamp(time.time() - 60, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    args = ["revoke", "--config", str(path), "--role", "deploy-prod", "--issued-before", when]
    code, out, err = cli(capsys, *args)
    assert code == 0, out + err
    printed = printed_policy(out)
    code, out, err = cli(capsys, *args, "--apply")
    assert code == 0, out + err
    assert aws_operator.list_role_policies(RoleName="deploy-prod")["PolicyNames"] == [POLICY_NAME]
    stored = aws_operator.get_role_policy(RoleName="deploy-prod", PolicyName=POLICY_NAME)["PolicyDocument"]
    assert stored == printed == deny_older_sessions_policy(datetime.fromisoformat(when).timestamp())
    assert (
        f"applied: put ci-broker-revoke on role deploy-prod: sessions issued before {when} are denied" in out
    )
    assert "AKIAOPERATOR" not in out + err and "operator-secret-key" not in out + err


@pytest.mark.waits
def test_apply_is_idempotent_and_never_moves_the_cutoff_back(capsys, store_config, aws_operator):
    _, path = store_config

    def stored_cutoff() -> float | None:
        doc = aws_operator.get_role_policy(RoleName="deploy-prod", PolicyName=POLICY_NAME)["PolicyDocument"]
        return policy_cutoff(doc)

    assert cli(capsys, "revoke", "--config", str(path), "--role", "deploy-prod", "--apply")[0] == 0
    first = stored_cutoff()
    assert first is not None
    earlier = datetime.fromtimestamp(first - 3600, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    code, out, _ = cli(
        capsys,
        "revoke",
        "--config",
        str(path),
        "--role",
        "deploy-prod",
        "--apply",
        "--issued-before",
        earlier,
    )
    assert code == 0 and "kept" in out
    assert stored_cutoff() == first  # an earlier cutoff would let sessions through again
    time.sleep(1.1)
    assert cli(capsys, "revoke", "--config", str(path), "--role", "deploy-prod", "--apply")[0] == 0
    later = stored_cutoff()
    assert later is not None and later > first
    assert aws_operator.list_role_policies(RoleName="deploy-prod")["PolicyNames"] == [POLICY_NAME]


def test_apply_without_the_role_in_iam_fails_clearly_and_still_ends_the_sessions(
    capsys, store_config, aws_operator
):
    config, path = store_config
    session = start_session(path)
    aws_operator.delete_role(RoleName="deploy-prod")
    try:
        code, out, err = cli(capsys, "revoke", "--config", str(path), "--role", "deploy-prod", "--apply")
    finally:
        aws_operator.create_role(
            RoleName="deploy-prod",
            AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": []}),
        )
    assert code == 2
    assert "FAILED: IAM refused: NoSuchEntity" in out and "aws iam put-role-policy" in out
    assert session.id in out and live_ids(path) == set()
    # The audit event (on stderr with the stdout sink) says the step failed, not that it was applied.
    (event,) = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert event["outcome"] == "failed" and event["sessions_ended"] == [session.id]
    assert {"cloud": "aws", "roles": ["deploy-prod"], "result": "failed"} in event["cloud_steps"]


def test_apply_disables_the_service_account_with_the_operators_own_token(
    capsys, sandbox, serve_config, store_config, gcp_operator
):
    config, path = store_config
    serve_config(config)
    granted = sandbox.exchange(sandbox.github_token(), "gcp-deploy")
    assert granted.status_code == 200, granted.text
    issued = granted.json()["credentials"]["access_token"]
    assert sandbox.gcp.describe(issued) is not None
    code, out, err = apply_gcp(capsys, sandbox, path)
    assert code == 0, out + err
    assert f"applied: disabled service account {GCP_SERVICE_ACCOUNT}" in out
    assert sandbox.gcp.disabled_by == [(GCP_SERVICE_ACCOUNT, OPERATOR_EMAIL)]
    assert sandbox.gcp.describe(issued) is None  # Google rejects the account's existing tokens
    assert sandbox.exchange(sandbox.github_token(), "gcp-deploy").status_code == 502  # and new ones
    assert not any(token in out + err for token in sandbox.gcp.issued)
    assert gcp_operator["private_key"] not in out + err


def test_apply_by_an_operator_without_the_permission_fails_clearly(
    capsys, sandbox, store_config, gcp_operator
):
    _, path = store_config
    sandbox.gcp.operators[OPERATOR_EMAIL] = (sandbox.gcp.operators[OPERATOR_EMAIL][0], False)
    code, out, _ = apply_gcp(capsys, sandbox, path)
    assert code == 2
    assert "FAILED: IAM refused: 403 PERMISSION_DENIED" in out
    assert "gcloud iam service-accounts disable" in out  # what to run by hand
    assert sandbox.gcp.disabled == set()


def test_apply_without_google_credentials_says_how_to_get_them(
    capsys, sandbox, store_config, monkeypatch, tmp_path
):
    _, path = store_config
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    code, out, _ = apply_gcp(capsys, sandbox, path)
    assert code == 2 and "no Google credentials" in out
    assert sandbox.gcp.disabled == set()


def test_azure_is_never_applied(capsys, store_config):
    _, path = store_config
    code, out, err = cli(capsys, "revoke", "--config", str(path), "--role", "azure-deploy", "--apply")
    assert code == 0, out + err
    assert "Entra ID cannot revoke access tokens" in out and "applied" not in out


def test_a_role_without_a_service_account_points_at_the_pool_and_is_not_applied(capsys, sandbox, tmp_path):
    config, path = write_config(sandbox, tmp_path)
    del config["roles"]["gcp-deploy"]["gcp"]["service_account"]
    config["roles"]["gcp-deploy"]["gcp"].pop("iam_credentials_url")
    path.write_text(json.dumps(config))
    code, out, err = cli(capsys, "revoke", "--config", str(path), "--role", "gcp-deploy", "--apply")
    assert code == 0, out + err
    assert (
        "gcloud iam workload-identity-pools update ci-broker --location=global --project=123456789012 --disabled"
        in out
    )
    assert "--apply does not do this" in out and "applied" not in out


# -- which roles an identity maps to ------------------------------------------------------------


def test_allowed_roles_keep_every_role_the_given_claims_do_not_contradict(sandbox, tmp_path):
    from broker.config import build_config
    from broker.policy import compile_condition

    config = build_config(sandbox.config_dict(), base_dir=sandbox.workdir)
    github = config.providers["github"]

    def roles(**claims: str) -> list[str]:
        conditions = tuple(compile_condition(k, v, github.schema) for k, v in claims.items())
        return sorted(allowed_roles(config, github, conditions))

    assert roles(repository_id=REPO_ID) == ["azure-deploy", "deploy-prod", "gcp-deploy"]
    assert roles(repository_id=REPO_ID, environment="staging") == ["azure-deploy", "gcp-deploy"]
    assert roles(repository_id=OTHER_REPO_ID) == []


# -- bad input: exit 2, nothing changed ---------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--provider", "gitlab-typo", "--claim", "project_id=1"], "not a configured provider"),
        (["--provider", "github", "--claim", "repositry_id=1"], "not a claim github tokens carry"),
        (["--provider", "github"], "at least one --claim"),
        (["--provider", "github", "--claim", "repository_id"], "NAME=VALUE"),
        (["--role", "deploy-prod", "--claim", "repository_id=1"], "only together with --provider"),
        (["--role", "deploy-prdo"], "not a configured role"),
        (["--session", "not-a-session"], "not a session id"),
        (["--session", "0" * 32], "no session"),
        (["--role", "deploy-prod", "--issued-before", "yesterday"], "not an RFC 3339 time"),
        (["--role", "deploy-prod", "--issued-before", "2026-01-01T00:00:00"], "needs a time zone"),
        (["--role", "deploy-prod", "--issued-before", "2999-01-01T00:00:00Z"], "in the future"),
        (["--provider", "github", "--claim", f"repository_id={OTHER_REPO_ID}"], "nothing to revoke"),
        (["--role", "gcp-deploy", "--gcp-iam-url", "http://iam.example.com"], "must be an https:// base URL"),
        (["--role", "deploy-prod", "--reason", "x" * 501], "longer than 500 characters"),
    ],
)
def test_bad_input_is_exit_2_and_changes_nothing(capsys, store_config, aws_operator, args, message):
    _, path = store_config
    session = start_session(path, repository_id=REPO_ID)
    code, out, err = cli(capsys, "revoke", "--config", str(path), "--apply", *args)
    assert code == 2
    assert message in err and "nothing was changed" in err
    assert out == ""
    assert live_ids(path) == {session.id}
    assert aws_operator.list_role_policies(RoleName="deploy-prod")["PolicyNames"] == []


def test_no_condition_at_all_is_exit_2(capsys, store_config):
    _, path = store_config
    with pytest.raises(SystemExit) as exc:
        main(["revoke", "--config", str(path)])
    assert exc.value.code == 2
    assert "one of the arguments --session --role --provider is required" in capsys.readouterr().err


def test_a_memory_store_with_sessions_is_refused(capsys, sandbox, tmp_path):
    _, path = write_config(sandbox, tmp_path, "memory")
    code, out, err = cli(capsys, "revoke", "--config", str(path), "--role", "deploy-prod")
    assert code == 2 and "server.store is memory" in err and out == ""


# -- the sandbox's IAM really checks who disables -------------------------------------------------


def test_the_local_disable_endpoint_refuses_anything_but_an_operators_token(
    sandbox, serve_config, store_config
):
    import jwt

    from broker.sandbox.gcp import OAUTH_AUDIENCE

    config, _ = store_config
    serve_config(config)
    url = f"{sandbox.gcp.url}/v1/projects/-/serviceAccounts/{GCP_SERVICE_ACCOUNT}:disable"
    federated = sandbox.exchange(sandbox.github_token(), "gcp-deploy").json()["credentials"]["access_token"]
    for bearer in ("ya29.made-up", federated):
        answer = requests.post(url, json={}, headers={"Authorization": f"Bearer {bearer}"}, timeout=10)
        assert answer.status_code == 401, answer.text
    key = sandbox.gcp.add_operator(OPERATOR_EMAIL)
    other = sandbox.gcp.add_operator("other@ci-broker-demo.iam.gserviceaccount.com")
    now = int(time.time())
    claims = {"iss": OPERATOR_EMAIL, "aud": OAUTH_AUDIENCE, "iat": now, "exp": now + 600, "scope": GCP_SCOPE}

    def token_for(private_key: str) -> requests.Response:
        assertion = jwt.encode(claims, private_key, algorithm="RS256")
        grant = {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion}
        return requests.post(key["token_uri"], data=grant, timeout=10)

    try:
        forged = token_for(other["private_key"])  # the operator's name, another account's key
        assert forged.status_code == 400 and forged.json()["error"] == "invalid_grant"
        assert token_for(key["private_key"]).status_code == 200  # the same claims, the right key
    finally:
        sandbox.gcp.operators.clear()
    assert sandbox.gcp.disabled == set()


def test_an_iam_error_quoting_the_operators_token_is_not_printed(capsys, sandbox, store_config, gcp_operator):
    _, path = store_config
    sandbox.gcp.echo_bearer = True
    try:
        code, out, err = apply_gcp(capsys, sandbox, path)
    finally:
        sandbox.gcp.echo_bearer = False
    assert code == 2 and "IAM refused: 401 UNAUTHENTICATED" in out
    operator_tokens = [t for t in sandbox.gcp.issued if t.startswith("ya29.local-operator-")]
    assert operator_tokens  # the refusal really quoted one
    assert not any(token in out + err for token in operator_tokens)


def test_a_store_that_is_down_is_exit_2_and_says_so(capsys, sandbox, tmp_path):
    from broker.sandbox.stack import free_port

    _, path = write_config(sandbox, tmp_path, f"redis://127.0.0.1:{free_port()}/0")
    code, out, err = cli(capsys, "revoke", "--config", str(path), "--role", "deploy-prod")
    assert code == 2 and "session store is unavailable" in err and "nothing was changed" in err
    assert out == ""
