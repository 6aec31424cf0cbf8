"""The JavaScript Action (actions/credentials), run with node the way the runner runs it.

The broker is scripted here (endpoints.py) so every answer the contract allows, and some it does
not, can be given on demand; test_github_action.py runs the Action under act against a real
`ci-broker serve`, and test_refresh_hooks.py drives the refresh hooks with the clouds' own SDKs.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import stat
import time
from pathlib import Path

import pytest
from actionrun import run_action, run_post
from endpoints import OIDCRequestEndpoint, Reply, ScriptedBroker
from support import ACTION_DIR, AWS, AZURE, GCP, assert_no_secret
from test_client import BAD_ANSWERS, assert_masked_first, secrets_of

SESSION = {"id": "0" * 32, "refresh_token": "cibrt_" + "R" * 43, "expires_at": "2030-01-01T06:00:00Z"}


def job_token(audience: str, **claims: object) -> str:
    """A job token naming `audience`, in GitHub's shape (unsigned: the scripted broker verifies
    nothing; the Action reads the claims only to check the audience and show them)."""

    def part(doc: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()

    payload = {"aud": audience, "sub": "repo:o/r:ref:refs/heads/main", "repository": "o/r", **claims}
    return f"{part({'alg': 'RS256', 'kid': 'k1'})}.{part(payload)}.c2lnbmF0dXJlLV8"


@pytest.fixture
def oidc() -> OIDCRequestEndpoint:
    with OIDCRequestEndpoint(job_token) as endpoint:
        yield endpoint


CLAIMS_GROUP = "::group::ci-broker: this job's claims (what the broker's policy sees)"


def assert_masked_first_around_the_claims(result, secrets: list[str]) -> None:
    """assert_masked_first for the Action, which shows the job's claims before the exchange: only
    the job token's mask comes before that group, no secret is in it, and every secret is masked
    before anything after it."""
    lines = result.stdout.splitlines()
    start, end = lines.index(CLAIMS_GROUP), lines.index("::endgroup::")
    assert all(line.startswith("::add-mask::") for line in lines[:start])
    assert_no_secret("\n".join(lines[start : end + 1]), secrets, "the claims group")
    assert_masked_first(
        dataclasses.replace(result, stdout="\n".join(lines[:start] + lines[end + 1 :])), secrets
    )


def inputs(url: str, **extra: str) -> dict[str, str]:
    return {"broker-url": url, "role": "deploy", **extra}


def oidc_env(oidc: OIDCRequestEndpoint | None) -> dict[str, str]:
    if oidc is None:
        return {}
    return {
        "ACTIONS_ID_TOKEN_REQUEST_URL": oidc.request_url,
        "ACTIONS_ID_TOKEN_REQUEST_TOKEN": oidc.request_token,
    }


def granted_with_session(cloud: str, credentials: dict[str, str]) -> Reply:
    reply = ScriptedBroker.granted(cloud, credentials)
    body = json.loads(reply.body)
    body["session"] = SESSION
    return Reply(200, json.dumps(body).encode())


# -- success per cloud --------------------------------------------------------------------------------


def test_aws_exports_env_and_outputs_with_every_secret_masked_first(tmp_path, oidc):
    with ScriptedBroker(ScriptedBroker.granted("aws", AWS)) as broker:
        result = run_action(tmp_path, inputs(broker.url, **{"output-credentials": "true"}), oidc_env(oidc))
    assert result.returncode == 0, result.log
    assert_masked_first_around_the_claims(result, secrets_of(AWS) + oidc.issued)
    assert result.env == {
        "AWS_ACCESS_KEY_ID": AWS["access_key_id"],
        "AWS_SECRET_ACCESS_KEY": AWS["secret_access_key"],
        "AWS_SESSION_TOKEN": AWS["session_token"],
        "AWS_REGION": "eu-west-1",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "CI_BROKER_CLOUD": "aws",
        "CI_BROKER_EXPIRES_AT": "2030-01-01T00:00:00Z",
    }
    assert result.outputs == {
        "cloud": "aws",
        "expires-at": "2030-01-01T00:00:00Z",
        "access-key-id": AWS["access_key_id"],
        "secret-access-key": AWS["secret_access_key"],
        "session-token": AWS["session_token"],
        "region": "eu-west-1",
        # configure-aws-credentials' names for the same values
        "aws-access-key-id": AWS["access_key_id"],
        "aws-secret-access-key": AWS["secret_access_key"],
        "aws-session-token": AWS["session_token"],
        "aws-expiration": "2030-01-01T00:00:00Z",
    }
    (seen,) = broker.seen
    assert seen.authorization == f"Bearer {oidc.issued[0]}"
    assert seen.content_type == "application/json"
    assert json.loads(seen.body) == {"role": "deploy"}
    assert oidc.audiences == [broker.url]
    assert "credentials for role 'deploy' (aws) expire at 2030-01-01T00:00:00Z" in result.stderr


def test_outputs_hold_no_credentials_by_default_and_export_env_false_exports_nothing(tmp_path, oidc):
    with ScriptedBroker(ScriptedBroker.granted("aws", AWS)) as broker:
        result = run_action(tmp_path / "a", inputs(broker.url), oidc_env(oidc))
        quiet = run_action(tmp_path / "b", inputs(broker.url, **{"export-env": "false"}), oidc_env(oidc))
    assert result.returncode == 0 and quiet.returncode == 0, result.log + quiet.log
    assert result.outputs == {"cloud": "aws", "expires-at": "2030-01-01T00:00:00Z"}
    assert quiet.env == {}
    assert_masked_first_around_the_claims(quiet, secrets_of(AWS))


def test_audience_and_duration_are_sent(tmp_path, oidc):
    with ScriptedBroker(ScriptedBroker.granted("aws", AWS)) as broker:
        spaced = run_action(
            tmp_path / "a",
            inputs(broker.url, audience="https://b.example.com/a b", duration="900"),
            oidc_env(oidc),
        )
        assert spaced.returncode != 0, "an audience must be one printable word"
        result = run_action(
            tmp_path / "b", inputs(broker.url, audience=broker.url + "/", duration="900"), oidc_env(oidc)
        )
    assert result.returncode == 0, result.log
    assert oidc.audiences == [broker.url + "/"]
    assert json.loads(broker.seen[-1].body) == {"role": "deploy", "duration": 900}


def test_gcp_exports_gcloud_and_terraform_tokens(tmp_path, oidc):
    with ScriptedBroker(ScriptedBroker.granted("gcp", GCP)) as broker:
        result = run_action(tmp_path, inputs(broker.url, **{"output-credentials": "true"}), oidc_env(oidc))
    assert result.returncode == 0, result.log
    assert_masked_first_around_the_claims(result, [GCP["access_token"]])
    assert result.env["CLOUDSDK_AUTH_ACCESS_TOKEN"] == GCP["access_token"]
    assert result.env["GOOGLE_OAUTH_ACCESS_TOKEN"] == GCP["access_token"]
    assert result.outputs["service-account"] == GCP["service_account"]
    assert result.outputs["token-type"] == "Bearer"


def test_azure_exports_ids_and_a_federated_token_file_the_post_step_removes(tmp_path, oidc):
    with ScriptedBroker(ScriptedBroker.granted("azure", AZURE)) as broker:
        result = run_action(tmp_path, inputs(broker.url), oidc_env(oidc))
    assert result.returncode == 0, result.log
    assert_masked_first_around_the_claims(result, [AZURE["access_token"], AZURE["federated_token"]])
    for prefix in ("ARM", "AZURE"):
        assert result.env[f"{prefix}_TENANT_ID"] == AZURE["tenant_id"]
        assert result.env[f"{prefix}_CLIENT_ID"] == AZURE["client_id"]
        assert result.env[f"{prefix}_SUBSCRIPTION_ID"] == AZURE["subscription_id"]
    assert result.env["AZURE_ACCESS_TOKEN"] == AZURE["access_token"]
    token_file = Path(result.env["AZURE_FEDERATED_TOKEN_FILE"])
    assert result.env["ARM_OIDC_TOKEN_FILE_PATH"] == str(token_file) and result.env["ARM_USE_OIDC"] == "true"
    assert token_file.parent == tmp_path / "runner" / "temp"
    assert token_file.read_text() == AZURE["federated_token"]
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert result.state["federated_token_file"] == str(token_file)
    post = run_post(tmp_path, result.state)
    assert post.returncode == 0 and "removed the federated token file" in post.log
    assert not token_file.exists()


def test_azure_without_assertion_writes_no_file(tmp_path, oidc):
    credentials = {k: v for k, v in AZURE.items() if k not in ("federated_token", "subscription_id")}
    with ScriptedBroker(ScriptedBroker.granted("azure", credentials)) as broker:
        result = run_action(tmp_path, inputs(broker.url), oidc_env(oidc))
    assert result.returncode == 0, result.log
    assert "AZURE_FEDERATED_TOKEN_FILE" not in result.env and "AZURE_SUBSCRIPTION_ID" not in result.env
    assert set(result.state) == {"exported"}
    assert list((tmp_path / "runner" / "temp").iterdir()) == []


def test_every_value_in_the_env_file_has_its_own_random_delimiter(tmp_path, oidc):
    delimiters = []
    with ScriptedBroker(ScriptedBroker.granted("aws", AWS)) as broker:
        for attempt in range(2):
            result = run_action(tmp_path / str(attempt), inputs(broker.url), oidc_env(oidc))
            assert result.returncode == 0, result.log
            delimiters += [
                line.partition("<<")[2] for line in result.raw_env_file.splitlines() if "<<" in line
            ]
    assert len(delimiters) == 14 and len(set(delimiters)) == 14
    assert all(re.fullmatch(r"ghadelimiter_[0-9a-f-]{36}", d) for d in delimiters)


def test_a_session_the_job_does_not_refresh_is_revoked_at_once(tmp_path, oidc):
    with ScriptedBroker(granted_with_session("aws", AWS), Reply(200, b"{}")) as broker:
        result = run_action(tmp_path, inputs(broker.url), oidc_env(oidc))
    assert result.returncode == 0, result.log
    assert SESSION["refresh_token"] in result.masked()
    assert [s.authorization for s in broker.seen] == [
        f"Bearer {oidc.issued[0]}",
        f"Bearer {SESSION['refresh_token']}",
    ]
    assert "AWS_CONFIG_FILE" not in result.env and set(result.state) == {"exported"}


# -- failures, each with its message ---------------------------------------------------------------------


def test_missing_id_token_permission_says_how_to_fix(tmp_path):
    result = run_action(tmp_path, inputs("https://broker.example.com"), {})
    assert result.returncode == 1
    assert "::error title=ci-broker::this job cannot request an OIDC token" in result.stdout
    assert "permissions: { id-token: write, contents: read }" in result.stderr


def test_401_prints_error_message_and_request_id(tmp_path, oidc):
    reply = ScriptedBroker.error(401, "invalid_token", "the token's audience is not accepted", "req-7f3a")
    with ScriptedBroker(reply) as broker:
        result = run_action(tmp_path, inputs(broker.url), oidc_env(oidc))
    assert result.returncode == 1 and len(broker.seen) == 1, "a refusal must not be retried"
    assert (
        "::error title=ci-broker::the broker refused this job's token: HTTP 401 invalid_token: "
        "the token's audience is not accepted (request id req-7f3a)"
    ) in result.stdout
    assert "matches the broker's server.audience" in result.stderr
    (token,) = oidc.issued
    assert_no_secret(result.stdout.replace(f"::add-mask::{token}", "") + result.stderr, [token], "log")


def test_403_points_at_ci_broker_explain(tmp_path, oidc):
    reply = ScriptedBroker.error(403, "access_denied", "no rule of the role grants this token", "req-9b1c")
    with ScriptedBroker(reply) as broker:
        result = run_action(tmp_path, inputs(broker.url), oidc_env(oidc))
    assert result.returncode == 1
    assert (
        "the broker denied role 'deploy': HTTP 403 access_denied: no rule of the role grants "
        "this token (request id req-9b1c)"
    ) in result.stderr
    assert "ci-broker explain --config CONFIG --role deploy --claims CLAIMS.json" in result.stderr


def test_unreachable_broker_is_retried_with_backoff_and_a_fresh_token_each_time(tmp_path, oidc):
    from broker.sandbox.stack import free_port

    started = time.monotonic()
    result = run_action(
        tmp_path, inputs(f"http://127.0.0.1:{free_port()}"), {**oidc_env(oidc), "CI_BROKER_MAX_ATTEMPTS": "3"}
    )
    assert result.returncode == 1
    # Waits with jitter: half of 1 s, 2 s, ... fixed, half random (lib/retry.js).
    first = re.search(r"did not answer; trying again in ([0-9.]+)s \(attempt 1 of 3\)", result.stderr)
    second = re.search(r"did not answer; trying again in ([0-9.]+)s \(attempt 2 of 3\)", result.stderr)
    assert first and second, result.stderr
    assert 0.5 <= float(first.group(1)) <= 1.0 and 1.0 <= float(second.group(1)) <= 2.0
    assert "did not answer; gave up after 3 attempts." in result.stdout
    assert 1.5 <= time.monotonic() - started < 30
    assert len(oidc.audiences) == 3


def test_503_then_success_retries_with_a_fresh_token(tmp_path):
    tokens = iter(["first", "second"])
    with (
        OIDCRequestEndpoint(lambda audience: job_token(audience, jti=next(tokens))) as oidc,
        ScriptedBroker(
            ScriptedBroker.error(503, "unavailable", "replay store down"), ScriptedBroker.granted("aws", AWS)
        ) as broker,
    ):
        result = run_action(tmp_path, inputs(broker.url), oidc_env(oidc))
    assert result.returncode == 0, result.log
    assert "the broker answered HTTP 503 unavailable: replay store down" in result.stderr
    assert [s.authorization for s in broker.seen] == [f"Bearer {t}" for t in oidc.issued]
    assert len(set(oidc.issued)) == 2


def test_429_gives_up_after_the_attempt_limit_and_502_is_not_retried(tmp_path, oidc):
    with ScriptedBroker(ScriptedBroker.error(429, "rate_limited", "too many requests")) as broker:
        limited = run_action(
            tmp_path / "a", inputs(broker.url), {**oidc_env(oidc), "CI_BROKER_MAX_ATTEMPTS": "2"}
        )
    assert limited.returncode == 1 and len(broker.seen) == 2
    assert "HTTP 429 rate_limited: too many requests" in limited.stdout
    with ScriptedBroker(ScriptedBroker.error(502, "upstream_error", "STS refused")) as broker:
        failed = run_action(tmp_path / "b", inputs(broker.url), oidc_env(oidc))
    assert failed.returncode == 1 and len(broker.seen) == 1
    assert "the cloud refused or failed the exchange: HTTP 502 upstream_error: STS refused" in failed.stderr


def test_not_a_broker_and_an_oidc_refusal_are_reported(tmp_path, oidc):
    with ScriptedBroker(Reply(404, b"<html>Not Found</html>", {"Content-Type": "text/html"})) as broker:
        result = run_action(tmp_path / "a", inputs(broker.url), oidc_env(oidc))
    assert result.returncode == 1 and "rejected the request: HTTP 404" in result.stderr
    env = {**oidc_env(oidc), "ACTIONS_ID_TOKEN_REQUEST_TOKEN": "wrong-request-token"}
    refused = run_action(tmp_path / "b", inputs("https://broker.example.com"), env)
    assert refused.returncode == 1
    assert "GitHub refused the OIDC token request with HTTP 401" in refused.stderr


@pytest.mark.parametrize("body", BAD_ANSWERS.values(), ids=BAD_ANSWERS.keys())
def test_a_malformed_answer_is_refused_and_nothing_exported(tmp_path, oidc, body):
    with ScriptedBroker(Reply(200, body)) as broker:
        result = run_action(tmp_path, inputs(broker.url), oidc_env(oidc))
    assert result.returncode == 1, result.log
    assert "::error title=ci-broker::the broker's answer" in result.stdout
    assert result.env == {} and result.outputs == {}


def test_the_brokers_message_cannot_forge_workflow_commands(tmp_path, oidc):
    forged = "denied\n::set-env name=NODE_OPTIONS::--require=/tmp/x\r\n::add-mask::\u2028%0A::endgroup::"
    with ScriptedBroker(ScriptedBroker.error(403, "access_denied", forged)) as broker:
        result = run_action(tmp_path, inputs(broker.url), oidc_env(oidc))
    assert result.returncode == 1
    lines = (result.stdout + result.stderr).splitlines()
    start, end = lines.index(CLAIMS_GROUP), lines.index("::endgroup::")
    assert all(re.fullmatch(r"[a-z_]+: [ -~]*", line) for line in lines[start + 1 : end])
    for line in lines[:start] + lines[end + 1 :]:
        assert line.startswith(("::add-mask::", "::error title=ci-broker::", "ci-broker: ")), line
    assert "%250A::endgroup::" in result.stdout, "'%' in annotation data must be escaped"


@pytest.mark.parametrize(
    "url",
    [
        "http://broker.example.com",
        "http://127.0.0.1.nip.io:80",
        "http://10.0.0.1",
        "ftp://127.0.0.1",
        "broker.example.com",
        "http://user@127.0.0.1",
        'https://x"y',
        "http://localhost:80@evil.example.com",
        "http://[::1]:80@evil.example.com/v1",
        "http://127.0.0.1:80@evil.example.com",
        "https://broker.example.com@evil.example.com",
        "http://localhost.evil.example.com",
        "http://localhost:80x",
        "http://127.1.2",
    ],
)
def test_plain_http_only_to_loopback(tmp_path, oidc, url):
    result = run_action(tmp_path, inputs(url), oidc_env(oidc))
    assert result.returncode == 1
    assert "broker-url must" in result.stderr
    assert oidc.audiences == [], "no token may be requested for a URL that will be refused"


@pytest.mark.parametrize("role", ["", "-x", "a b", "a/b", "x" * 65, 'r"}', "ré"])
def test_role_names_are_checked_before_anything_is_sent(tmp_path, oidc, role):
    result = run_action(tmp_path, {"broker-url": "https://broker.example.com", "role": role}, oidc_env(oidc))
    assert result.returncode == 1
    assert "role must be a role name" in result.stderr
    assert oidc.audiences == []


@pytest.mark.parametrize("name", ["export-env", "output-credentials", "refresh"])
def test_switches_take_true_or_false(tmp_path, oidc, name):
    result = run_action(tmp_path, inputs("https://broker.example.com", **{name: "yes"}), oidc_env(oidc))
    assert result.returncode == 1 and f"{name} takes true or false" in result.stderr


# -- refresh: what the step sets up (the hooks themselves: test_refresh_hooks.py) -------------------------


def test_refresh_without_a_session_says_what_the_role_needs(tmp_path, oidc):
    with ScriptedBroker(ScriptedBroker.granted("aws", AWS)) as broker:
        result = run_action(tmp_path, inputs(broker.url, refresh="true"), oidc_env(oidc))
    assert result.returncode == 1
    assert "role 'deploy' gives no session" in result.stdout
    assert "set session_lifetime on the role" in result.stderr
    assert result.env == {}


@pytest.mark.parametrize("cloud,credentials", [("gcp", GCP), ("azure", {**AZURE, "federated_token": None})])
def test_refresh_on_gcp_and_azure_needs_federated_token(tmp_path, oidc, cloud, credentials):
    credentials = {k: v for k, v in credentials.items() if v is not None}
    with ScriptedBroker(granted_with_session(cloud, credentials)) as broker:
        result = run_action(tmp_path, inputs(broker.url, refresh="true"), oidc_env(oidc))
    assert result.returncode == 1
    assert "needs the role to set 'federated_token: true'" in result.stdout


def test_refresh_exports_the_aws_hook_instead_of_static_keys(tmp_path, oidc):
    with ScriptedBroker(granted_with_session("aws", AWS)) as broker:
        result = run_action(tmp_path, inputs(broker.url, refresh="true"), oidc_env(oidc))
    assert result.returncode == 0, result.log
    assert_masked_first_around_the_claims(result, [*secrets_of(AWS), SESSION["refresh_token"]])
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"} & set(result.env)
    assert result.env["AWS_PROFILE"] == "ci-broker"
    assert result.env["CI_BROKER_SESSION_EXPIRES_AT"] == SESSION["expires_at"]
    config = Path(result.env["AWS_CONFIG_FILE"])
    session_dir = config.parent
    assert session_dir.parent == tmp_path / "runner" / "temp"
    assert result.state["session_dir"] == str(session_dir)
    assert stat.S_IMODE(session_dir.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in session_dir.iterdir())
    text = config.read_text()
    assert text.startswith("[profile ci-broker]\ncredential_process = ")
    assert re.search(
        rf"credential_process = \S+node\S* --no-warnings {ACTION_DIR}/session.js aws {session_dir}\n", text
    )
    assert "region = eu-west-1" in text
    assert_no_secret(text, [*secrets_of(AWS), SESSION["refresh_token"]], "the AWS config file")


def test_the_post_step_revokes_the_session_and_removes_every_file(tmp_path, oidc):
    with ScriptedBroker(granted_with_session("aws", AWS), Reply(200, b"{}")) as broker:
        result = run_action(tmp_path, inputs(broker.url, refresh="true"), oidc_env(oidc))
        assert result.returncode == 0, result.log
        post = run_post(tmp_path, result.state)
    assert post.returncode == 0, post.log
    assert "session revoked" in post.stderr and "removed the session files" in post.stderr
    assert broker.seen[-1].authorization == f"Bearer {SESSION['refresh_token']}"
    assert not Path(result.state["session_dir"]).exists()
    assert list((tmp_path / "runner" / "temp").iterdir()) == []
    assert SESSION["refresh_token"] not in post.log
