"""A granted exchange for an AWS role: what the caller gets, and proof that AWS would accept what
the broker sent (the local STS verified the assertion against the broker's published JWKS)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import boto3
import jwt
import pytest
import requests

from broker.sandbox.stack import DEPLOY_ROLE_ARN
from tests.helpers import assert_refused, last_refusal


def test_a_granted_exchange_returns_working_aws_credentials(sandbox, broker, audit_events):
    response = sandbox.exchange(sandbox.github_token())
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["role"] == "deploy-prod" and body["cloud"] == "aws"
    creds = body["credentials"]
    assert set(creds) == {"access_key_id", "secret_access_key", "session_token", "region"}
    assert creds["region"] == "eu-west-1"
    expires = datetime.strptime(body["expires_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert 3500 < (expires - datetime.now(UTC)).total_seconds() <= 3600

    sts = boto3.client(
        "sts",
        endpoint_url=sandbox.sts.url,
        region_name="eu-west-1",
        aws_access_key_id=creds["access_key_id"],
        aws_secret_access_key=creds["secret_access_key"],
        aws_session_token=creds["session_token"],
    )
    identity = sts.get_caller_identity()
    assert identity["Arn"].startswith("arn:aws:sts::123456789012:assumed-role/deploy-prod/")


def test_the_assertion_would_satisfy_an_aws_trust_policy(sandbox, broker):
    accepted_before = len(sandbox.sts.accepted)
    assert sandbox.exchange(sandbox.github_token()).status_code == 200
    assert len(sandbox.sts.accepted) == accepted_before + 1
    claims = sandbox.sts.accepted[-1]
    assert claims["iss"] == sandbox.broker_url
    assert claims["aud"] == "sts.amazonaws.com"
    assert claims["sub"] == "role:deploy-prod"
    assert claims["exp"] - claims["iat"] <= 300
    assert claims["nbf"] <= claims["iat"] + 1
    assert claims["https://aws.amazon.com/tags"] == {
        "principal_tags": {"repository": ["octo-org/octo-repo"], "ref": ["refs/heads/main"]}
    }
    assert claims["provider"] == "github" and claims["repository_id"] == "892734123"


def test_the_assertion_verifies_against_the_published_jwks(sandbox, broker):
    sandbox.exchange(sandbox.github_token())
    web_identity = [c for c in sandbox.sts.calls if c.get("Action") == "AssumeRoleWithWebIdentity"][-1]
    assertion = web_identity["WebIdentityToken"]
    discovery = requests.get(f"{sandbox.broker_url}/.well-known/openid-configuration", timeout=5).json()
    assert discovery["issuer"] == sandbox.broker_url
    jwks = jwt.PyJWKSet.from_dict(requests.get(discovery["jwks_uri"], timeout=5).json())
    kid = jwt.get_unverified_header(assertion)["kid"]
    key = next(k for k in jwks.keys if k.key_id == kid)
    claims = jwt.decode(
        assertion, key.key, algorithms=["ES256"], audience="sts.amazonaws.com", issuer=sandbox.broker_url
    )
    assert claims["sub"] == "role:deploy-prod"
    assert web_identity["RoleArn"] == DEPLOY_ROLE_ARN
    assert web_identity["RoleSessionName"] == "github-7123456789-octo-org-octo-repo"


def test_the_sts_stand_in_refuses_an_assertion_it_should(sandbox, broker):
    """Proof the stand-in is not a fake that accepts anything: a role it does not trust fails."""
    config = sandbox.config_dict()
    config["roles"]["deploy-prod"]["aws"]["role_arn"] = "arn:aws:iam::123456789012:role/not-trusted"
    app = sandbox.serve_in_process(config)
    try:
        response = sandbox.exchange(sandbox.github_token())
        body = assert_refused(response, 502, "upstream_error")
        assert "AccessDenied" in body["message"]
    finally:
        app.extensions["broker"].close()


def test_an_sts_refusal_is_a_502_naming_the_aws_error_code(sandbox, serve_config, audit_events):
    config = sandbox.config_dict()
    config["server"]["issuer"] = sandbox.broker_url.replace("127.0.0.1", "localhost")
    config["server"]["audience"] = sandbox.broker_url
    serve_config(config)
    response = sandbox.exchange(sandbox.github_token())
    body = assert_refused(response, 502, "upstream_error")
    assert "InvalidIdentityToken" in body["message"]
    assert "eyJ" not in body["message"]
    assert last_refusal(audit_events)["error"] == "upstream_error"


def test_sts_unreachable_is_a_502(sandbox, serve_config):
    config = sandbox.config_dict()
    config["roles"]["deploy-prod"]["aws"]["sts_endpoint"] = "http://127.0.0.1:9"
    serve_config(config)
    body = assert_refused(sandbox.exchange(sandbox.github_token()), 502, "upstream_error")
    assert "could not be reached" in body["message"]


def test_a_requested_duration_is_passed_to_sts(sandbox, broker):
    response = sandbox.exchange(sandbox.github_token(), duration=1200)
    assert response.status_code == 200
    assert sandbox.sts.calls[-1]["DurationSeconds"] == "1200"


def test_a_duration_below_the_aws_minimum_is_refused_not_silently_raised(sandbox, broker):
    calls = len(sandbox.sts.calls)
    body = assert_refused(sandbox.exchange(sandbox.github_token(), duration=60), 400, "invalid_request")
    assert "at least 900" in body["message"]
    assert len(sandbox.sts.calls) == calls  # AWS was never asked


def test_a_duration_above_the_roles_maximum_is_refused(sandbox, broker):
    body = assert_refused(sandbox.exchange(sandbox.github_token(), duration=7200), 400, "invalid_request")
    assert "3600" in body["message"]


@pytest.mark.parametrize("duration", [3601, 899])
def test_a_refused_duration_does_not_spend_the_token(sandbox, broker, duration):
    # A GitLab job has one ID token: a retry with a corrected body must still work.
    token = sandbox.github_token()
    assert_refused(sandbox.exchange(token, duration=duration), 400, "invalid_request")
    assert sandbox.exchange(token, duration=3600).status_code == 200


def test_a_duration_refusal_is_only_shown_to_a_token_the_role_grants(sandbox, broker):
    # The role's bounds are not told to a caller the role would refuse anyway.
    denied = sandbox.github_token(repository_id="1")
    assert_refused(sandbox.exchange(denied, duration=7200), 403, "access_denied")
    assert_refused(
        sandbox.exchange(sandbox.github_token(), role="no-such-role", duration=7200), 403, "access_denied"
    )


def test_a_gitlab_token_gets_its_role(sandbox, broker):
    response = sandbox.exchange(sandbox.gitlab_token(), role="gitlab-deploy")
    assert response.status_code == 200, response.text
    assert "region" not in response.json()["credentials"]
    assert sandbox.sts.accepted[-1]["repository"] == "my-group/my-project"
    assert sandbox.sts.calls[-1]["RoleSessionName"] == "gitlab-574-my-group-my-project"


def test_a_token_no_rule_grants_is_403(sandbox, broker, audit_events):
    response = sandbox.exchange(sandbox.github_token(repository_id="1"))
    assert_refused(response, 403, "access_denied")
    event = last_refusal(audit_events)
    assert "repository_id: '1' does not match == '892734123'" in event["reason"]


def test_an_unknown_role_looks_like_a_denied_one(sandbox, broker, audit_events):
    unknown = sandbox.exchange(sandbox.github_token(), role="no-such-role")
    denied = sandbox.exchange(sandbox.github_token(repository_id="1"))
    assert unknown.status_code == denied.status_code == 403
    assert {k: v for k, v in unknown.json().items() if k != "request_id"} == {
        k: v for k, v in denied.json().items() if k != "request_id"
    }
    assert audit_events[-2]["reason"] == "no such role"


def test_a_github_token_cannot_use_a_gitlab_role(sandbox, broker, audit_events):
    assert_refused(sandbox.exchange(sandbox.github_token(), role="gitlab-deploy"), 403, "access_denied")
    assert "rule is for provider 'gitlab'" in last_refusal(audit_events)["reason"]


def test_each_exchange_writes_one_audit_event_without_secrets(sandbox, broker, audit_events, all_logs):
    token = sandbox.github_token()
    response = sandbox.exchange(token)
    creds = response.json()["credentials"]
    assert len(audit_events) == 1
    event = audit_events[0]
    assert event["outcome"] == "granted" and event["role"] == "deploy-prod" and event["cloud"] == "aws"
    assert event["provider"] == "github" and event["matched_rule"] == 0
    assert event["subject"].startswith("repo:octo-org/octo-repo")
    assert event["claims"]["repository_id"] == "892734123"
    assert event["request_id"] == response.headers["X-Request-Id"]
    assert len(event["token_sha256"]) == 64 and event["expires_at"].endswith("Z")
    assert {"time", "client", "issuer", "jti", "reason"} <= set(event)
    everything = json.dumps(audit_events) + all_logs.text
    for secret in (token, creds["secret_access_key"], creds["session_token"], creds["access_key_id"]):
        assert secret not in everything


def test_nothing_secret_reaches_logs_or_responses_of_refused_requests(
    sandbox, broker, audit_events, all_logs
):
    tokens = [
        sandbox.github_token(repository_id="1"),
        sandbox.github_token(aud="x"),
        "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.c2lnbmF0dXJl",
        sandbox.github_token(),
    ]
    texts = []
    for token in tokens[:3]:
        texts.append(sandbox.exchange(token).text)
    texts.append(sandbox.exchange(tokens[3], role="nope").text)
    everything = json.dumps(audit_events) + all_logs.text + "".join(texts)
    for token in tokens:
        assert token not in everything
        assert token.split(".")[-1] not in everything  # not even the signature


def test_a_callers_request_id_is_recorded_beside_the_brokers_own(sandbox, broker, audit_events):
    headers = {"X-Request-Id": "ci-run-12345678"}
    first = sandbox.exchange(sandbox.github_token(), headers=headers)
    second = sandbox.exchange(sandbox.github_token(), headers=headers)
    ids = [first.headers["X-Request-Id"], second.headers["X-Request-Id"]]
    assert "ci-run-12345678" not in ids and ids[0] != ids[1]
    assert [e["request_id"] for e in audit_events] == ids  # no two events share an id
    assert [e["client_request_id"] for e in audit_events] == ["ci-run-12345678"] * 2


@pytest.mark.parametrize("incoming", ["x" * 129, "with space", "tab\there", "caf\u00e9"])
def test_a_callers_request_id_that_is_not_short_printable_ascii_is_not_recorded(
    sandbox, broker, audit_events, incoming
):
    sandbox.exchange(sandbox.github_token(), headers={"X-Request-Id": incoming.encode().decode("latin-1")})
    assert audit_events[-1]["client_request_id"] is None


@pytest.mark.parametrize("mode", ["assume_role"])
def test_assume_role_mode_uses_ambient_credentials_with_tags_and_source_identity(
    sandbox, serve_config, monkeypatch, mode
):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEBROKER000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "broker-ambient-secret")
    config = sandbox.config_dict()
    config["roles"]["deploy-prod"]["aws"]["mode"] = mode
    config["roles"]["deploy-prod"]["aws"]["session_policy"] = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}],
    }
    serve_config(config)
    response = sandbox.exchange(sandbox.github_token())
    assert response.status_code == 200, response.text
    call = sandbox.sts.calls[-1]
    assert call["Action"] == "AssumeRole"
    assert call["SourceIdentity"] == call["RoleSessionName"] == "github-7123456789-octo-org-octo-repo"
    assert call["Tags.member.1.Key"] == "repository" and call["Tags.member.1.Value"] == "octo-org/octo-repo"
    assert json.loads(call["Policy"])["Statement"][0]["Action"] == "s3:GetObject"


def test_tag_values_are_sanitized_to_what_aws_accepts(sandbox, broker):
    response = sandbox.exchange(sandbox.github_token(ref="refs/heads/main"))
    assert response.status_code == 200
    from broker.clouds import Grant
    from broker.clouds.aws import TagTemplate, render_tags

    grant = Grant(
        role="r",
        provider="github",
        claims={"ref": "refs/heads/feat#1<x>"},
        context={},
        duration=None,
        mint_assertion=lambda a, e: "",
    )
    assert render_tags((TagTemplate("ref", "{ref}", ("ref",)),), grant) == {"ref": "refs/heads/feat_1_x_"}


def test_a_tag_whose_claim_is_missing_refuses_the_exchange(sandbox, serve_config, audit_events):
    config = sandbox.config_dict()
    config["roles"]["deploy-prod"]["aws"]["session_tags"] = {"env": "{environment_url}"}
    serve_config(config)
    assert_refused(sandbox.exchange(sandbox.github_token()), 403, "access_denied")
    assert "needs claim 'environment_url'" in last_refusal(audit_events)["reason"]


@pytest.mark.parametrize("repository", [["octo-org/a", "octo-org/b"], {"name": "x"}])
def test_a_tag_claim_that_is_structured_gets_the_same_403_as_a_policy_denial(
    sandbox, broker, audit_events, repository
):
    # The demo role tags sessions with {repository}; its rules match on repository_id. A caller
    # must not learn from the answer that the role exists and its rules matched.
    refused = sandbox.exchange(sandbox.github_token(repository=repository))
    policy = sandbox.exchange(sandbox.github_token(repository_id="1"))
    assert refused.status_code == policy.status_code == 403
    strip = lambda r: {k: v for k, v in r.json().items() if k != "request_id"}  # noqa: E731
    assert strip(refused) == strip(policy)
    assert "needs claim 'repository'" in audit_events[-2]["reason"]


def test_a_tag_claim_that_is_null_is_a_required_claim_missing_whatever_the_role(
    sandbox, broker, audit_events
):
    # `repository` is one of the claims every GitHub token carries: null, the token is refused as
    # it is verified, before any role is looked at, so the answer says nothing about the role.
    token = sandbox.github_token(repository=None)
    assert_refused(sandbox.exchange(token), 401, "invalid_token")
    assert "claim 'repository' is null" in last_refusal(audit_events)["reason"]
    assert_refused(sandbox.exchange(token, "no-such-role"), 401, "invalid_token")


def test_an_sts_error_that_echoes_the_assertion_is_withheld(sandbox, broker, audit_events):
    sandbox.sts.echo_assertion = True
    try:
        response = sandbox.exchange(sandbox.github_token())
    finally:
        sandbox.sts.echo_assertion = False
    body = assert_refused(response, 502, "upstream_error")
    assertion = [c for c in sandbox.sts.calls if c.get("Action") == "AssumeRoleWithWebIdentity"][-1][
        "WebIdentityToken"
    ]
    header = assertion.split(".")[0]
    assert "withheld" in body["message"]
    assert header not in response.text and header not in json.dumps(audit_events)


def test_a_second_broker_in_the_process_reuses_the_unsigned_sts_clients(sandbox, broker, monkeypatch):
    """A reloaded config (or a test) builds brokers again: unsigned STS clients are kept per
    endpoint and region for the process, with the one botocore session they were built from."""
    import botocore.session

    built: list[object] = []
    original = botocore.session.Session.__init__

    def counting(self: object, *args: object, **kwargs: object) -> None:
        built.append(self)
        original(self, *args, **kwargs)

    monkeypatch.setattr(botocore.session.Session, "__init__", counting)
    again = sandbox.serve_in_process()
    try:
        assert sandbox.exchange(sandbox.github_token()).status_code == 200
        assert built == []
        first, second = (app.extensions["broker"].backends["deploy-prod"].sts for app in (broker, again))
        assert first is second
    finally:
        again.extensions["broker"].close()
