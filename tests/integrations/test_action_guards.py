"""The Action's guards and what it shows, run with node as the runner runs it (actionrun.py):
the job token goes only to the broker its audience names, the job's claims are shown before the
exchange, the AWS account is looked up and guarded, several AWS roles become named profiles, and
the post step clears what the step exported. test_github_action_roles.py runs the same under act
against a real `ci-broker serve`; the JavaScript units (tests/integrations/js) run here too.
"""

from __future__ import annotations

import json
import re
import stat
import subprocess
from pathlib import Path

import pytest
from actionrun import run_action, run_post
from endpoints import OIDCRequestEndpoint, ScriptedBroker, _Quiet, _Server
from support import ACTION_DIR, AWS, GCP, ROOT, assert_no_secret, require_tool
from test_action import CLAIMS_GROUP, SESSION, granted_with_session, job_token, oidc_env

from broker.sandbox.stack import free_port

ACCOUNT = "123456789012"
OTHER_ACCOUNT = "210987654321"
CALLER_XML = """<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <GetCallerIdentityResult>
    <Arn>arn:aws:sts::{account}:assumed-role/deploy-prod/ci-broker</Arn>
    <UserId>AROAEXAMPLE:ci-broker</UserId>
    <Account>{account}</Account>
  </GetCallerIdentityResult>
</GetCallerIdentityResponse>"""


@pytest.fixture
def oidc():
    with OIDCRequestEndpoint(job_token) as endpoint:
        yield endpoint


class CallerIdentity(_Server):
    """Answers sts:GetCallerIdentity for one account and records each request's headers. Used to
    drive the guard's decisions; the real STS (moto behind the sandbox) answers under act."""

    def __init__(self, account: str) -> None:
        self.account = account
        self.seen: list[dict[str, str]] = []
        super().__init__(_CallerIdentityHandler)


class _CallerIdentityHandler(_Quiet):
    def do_POST(self) -> None:
        owner: CallerIdentity = self.server.owner  # type: ignore[attr-defined]
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        owner.seen.append({**dict(self.headers.items()), "body": body.decode()})
        self._send(200, CALLER_XML.format(account=owner.account).encode(), {"Content-Type": "text/xml"})


def inputs(url: str, **extra: str) -> dict[str, str]:
    return {"broker-url": url, "role": "deploy", **extra}


# -- the job token goes only to the broker its audience names (issue 20, item 6) ----------------------


def test_a_token_for_one_broker_is_never_sent_to_another_url(tmp_path, oidc):
    # The workflow pins the real broker's audience; broker-url was changed (a variable, an input)
    # to point at a server someone else runs. That server must receive nothing.
    with ScriptedBroker(ScriptedBroker.granted("aws", AWS)) as other:
        result = run_action(
            tmp_path, inputs(other.url, audience="https://broker.example.com"), oidc_env(oidc)
        )
    assert result.returncode == 1
    assert other.seen == [], "the token reached a server its audience does not name"
    assert (
        f"::error title=ci-broker::refusing to send this job's OIDC token to {other.url}: "
        "the token is for https://broker.example.com."
    ) in result.stdout
    assert result.env == {} and result.outputs == {}
    (token,) = oidc.issued
    assert_no_secret(result.stdout.replace(f"::add-mask::{token}", "") + result.stderr, [token], "the log")


def test_a_token_whose_audience_is_not_a_url_is_sent_nowhere(tmp_path, oidc):
    with ScriptedBroker(ScriptedBroker.granted("aws", AWS)) as broker:
        result = run_action(tmp_path, inputs(broker.url, audience="ci-broker"), oidc_env(oidc))
    assert result.returncode == 1 and broker.seen == []
    assert "its audience 'ci-broker' is not a URL" in result.stdout


def test_the_token_the_endpoint_returns_is_checked_not_the_audience_asked_for(tmp_path):
    # Whatever was asked for, what counts is the aud of the token about to be sent.
    def mint(audience: str) -> str:
        return job_token("https://broker.example.com")

    with OIDCRequestEndpoint(mint) as oidc, ScriptedBroker(ScriptedBroker.granted("aws", AWS)) as other:
        result = run_action(tmp_path, inputs(other.url), oidc_env(oidc))
    assert oidc.audiences == [other.url]
    assert result.returncode == 1 and other.seen == []
    assert "the token is for https://broker.example.com" in result.stdout


def test_the_check_holds_on_every_retry(tmp_path):
    # The first token is for the URL called (503, retried); the second is not: it is not sent.
    tokens = iter([None, "https://broker.example.com"])

    with ScriptedBroker(ScriptedBroker.error(503, "unavailable", "restarting")) as broker:

        def mint(audience: str) -> str:
            return job_token(next(tokens) or audience)

        with OIDCRequestEndpoint(mint) as oidc:
            result = run_action(
                tmp_path, inputs(broker.url), {**oidc_env(oidc), "CI_BROKER_MAX_ATTEMPTS": "3"}
            )
    assert result.returncode == 1 and len(broker.seen) == 1
    assert "the token is for https://broker.example.com" in result.stdout


# -- the job's claims, shown before the exchange (item 7) ------------------------------------------------


def test_the_jobs_claims_are_shown_in_a_collapsed_group_before_the_exchange(tmp_path):
    claims = {
        "repository": "octo-org/app",
        "repository_id": "892734123",
        "ref": "refs/heads/feature",
        "environment": "staging",
        "event_name": "pull_request",
        "workflow_ref": "octo-org/app/.github/workflows/deploy.yml@refs/heads/feature",
        "jti": "0b5e6c3e-not-shown",
    }
    with (
        OIDCRequestEndpoint(lambda audience: job_token(audience, **claims)) as oidc,
        ScriptedBroker(ScriptedBroker.error(403, "access_denied", "no rule grants this token")) as broker,
    ):
        result = run_action(tmp_path, inputs(broker.url), oidc_env(oidc))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    start, end = lines.index(CLAIMS_GROUP), lines.index("::endgroup::")
    shown = lines[start + 1 : end]
    assert shown == [
        f"aud: {broker.url}",
        "sub: repo:o/r:ref:refs/heads/main",
        "repository: octo-org/app",
        "repository_id: 892734123",
        "ref: refs/heads/feature",
        "environment: staging",
        "event_name: pull_request",
        "workflow_ref: octo-org/app/.github/workflows/deploy.yml@refs/heads/feature",
    ]
    error = next(i for i, line in enumerate(lines) if line.startswith("::error"))
    assert end < error, "the claims come before the broker's answer"
    assert "0b5e6c3e" not in result.log
    (token,) = oidc.issued
    assert_no_secret("\n".join(lines[start:]) + result.stderr, [token], "the log")
    assert "\"ci-broker: this job's claims (what the broker's policy sees)\" above" in result.stderr


# -- the AWS account: output and guard (item 9) ----------------------------------------------------------


def test_the_account_comes_from_get_caller_identity_signed_with_the_credentials(tmp_path, oidc):
    with ScriptedBroker(ScriptedBroker.granted("aws", AWS)) as broker, CallerIdentity(ACCOUNT) as sts:
        result = run_action(
            tmp_path,
            inputs(broker.url, **{"allowed-account-ids": f"{OTHER_ACCOUNT}, {ACCOUNT}"}),
            {**oidc_env(oidc), "AWS_ENDPOINT_URL_STS": sts.url},
        )
    assert result.returncode == 0, result.log
    assert result.outputs["aws-account-id"] == ACCOUNT
    assert result.outputs["authenticated-arn"] == f"arn:aws:sts::{ACCOUNT}:assumed-role/deploy-prod/ci-broker"
    (call,) = sts.seen
    assert call["body"] == "Action=GetCallerIdentity&Version=2011-06-15"
    assert re.fullmatch(
        rf"AWS4-HMAC-SHA256 Credential={AWS['access_key_id']}/[0-9]{{8}}/eu-west-1/sts/aws4_request, "
        r"SignedHeaders=content-type;host;x-amz-date;x-amz-security-token, Signature=[0-9a-f]{64}",
        call["Authorization"],
    )
    assert call["X-Amz-Security-Token"] == AWS["session_token"]
    assert AWS["secret_access_key"] not in json.dumps(call)
    assert "in AWS account 123456789012" in result.stderr


def test_an_account_not_allowed_is_refused_and_nothing_is_exported(tmp_path, oidc):
    with (
        ScriptedBroker(granted_with_session("aws", AWS), ScriptedBroker.granted("aws", AWS)) as broker,
        CallerIdentity(OTHER_ACCOUNT) as sts,
    ):
        result = run_action(
            tmp_path,
            inputs(broker.url, **{"allowed-account-ids": ACCOUNT, "output-credentials": "true"}),
            {**oidc_env(oidc), "AWS_ENDPOINT_URL_STS": sts.url},
        )
    assert result.returncode == 1
    assert (
        f"role 'deploy' gave credentials for AWS account {OTHER_ACCOUNT}, which allowed-account-ids "
        "does not list; nothing was exported."
    ) in result.stdout
    assert result.env == {} and result.outputs == {} and result.state == {}
    # The session the exchange started is ended, not left for someone to refresh.
    assert broker.seen[-1].authorization == f"Bearer {SESSION['refresh_token']}"
    assert_no_secret(result.stderr, [AWS["secret_access_key"], AWS["session_token"]], "the log")


def test_the_guard_fails_closed_when_aws_cannot_be_asked(tmp_path, oidc):
    closed = f"http://127.0.0.1:{free_port()}"
    with ScriptedBroker(ScriptedBroker.granted("aws", AWS)) as broker:
        guarded = run_action(
            tmp_path / "a",
            inputs(broker.url, **{"allowed-account-ids": ACCOUNT}),
            {**oidc_env(oidc), "AWS_ENDPOINT_URL_STS": closed},
        )
        unguarded = run_action(
            tmp_path / "b", inputs(broker.url), {**oidc_env(oidc), "AWS_ENDPOINT_URL_STS": closed}
        )
    assert guarded.returncode == 1 and guarded.env == {} and guarded.outputs == {}
    assert "cannot check allowed-account-ids:" in guarded.stdout
    # Without a guard the credentials still work; the output is missing and the log says why.
    assert unguarded.returncode == 0, unguarded.log
    assert "aws-account-id" not in unguarded.outputs and unguarded.env["AWS_ACCESS_KEY_ID"]
    assert "::warning title=ci-broker::could not look up the AWS account of role 'deploy'" in unguarded.stdout


@pytest.mark.parametrize("ids", ["12345678901", "123456789012;210987654321", "x", "123456789012,"])
def test_allowed_account_ids_are_checked_before_anything_is_sent(tmp_path, oidc, ids):
    result = run_action(
        tmp_path, inputs("https://broker.example.com", **{"allowed-account-ids": ids}), oidc_env(oidc)
    )
    assert result.returncode == 1 and oidc.audiences == []
    assert "allowed-account-ids must be 12-digit AWS account ids" in result.stderr


def test_the_guard_and_profiles_refuse_other_clouds(tmp_path, oidc):
    with ScriptedBroker(ScriptedBroker.granted("gcp", GCP)) as broker:
        guarded = run_action(
            tmp_path / "a", inputs(broker.url, **{"allowed-account-ids": ACCOUNT}), oidc_env(oidc)
        )
        profiled = run_action(tmp_path / "b", inputs(broker.url, **{"aws-profile": "x"}), oidc_env(oidc))
    assert guarded.returncode == 1 and guarded.env == {}
    assert "allowed-account-ids applies to AWS roles; role 'deploy' is gcp" in guarded.stdout
    assert profiled.returncode == 1 and profiled.env == {}
    assert "aws-profile applies to AWS roles" in profiled.stdout


def test_the_sigv4_signature_is_the_one_botocore_computes(tmp_path):
    """The signer against the AWS SDK's own, for the same request at the same instant."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    url = "https://sts.eu-west-1.amazonaws.com/"
    script = (
        "const a = require(process.argv[1]);"
        "const h = a.signedHeaders(process.argv[2], 'eu-west-1', JSON.parse(process.argv[3]), new Date('2026-12-03T14:05:09Z'));"
        "process.stdout.write(JSON.stringify(h));"
    )
    node = subprocess.run(
        [
            require_tool("node"),
            "-e",
            script,
            str(ACTION_DIR / "lib" / "awsidentity.js"),
            url,
            json.dumps(AWS),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    ours = json.loads(node.stdout)
    request = AWSRequest(
        method="POST",
        url=url,
        data="Action=GetCallerIdentity&Version=2011-06-15",
        headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
    )
    auth = SigV4Auth(
        Credentials(AWS["access_key_id"], AWS["secret_access_key"], AWS["session_token"]), "sts", "eu-west-1"
    )
    request.context["timestamp"] = "20261203T140509Z"
    request.headers["X-Amz-Date"] = "20261203T140509Z"
    request.headers["X-Amz-Security-Token"] = AWS["session_token"]
    canonical = auth.canonical_request(request)
    signature = auth.signature(auth.string_to_sign(request, canonical), request)
    assert ours["X-Amz-Date"] == "20261203T140509Z"
    assert ours["Authorization"] == (
        f"AWS4-HMAC-SHA256 Credential={AWS['access_key_id']}/20261203/eu-west-1/sts/aws4_request, "
        f"SignedHeaders={auth.signed_headers(auth.headers_to_sign(request))}, Signature={signature}"
    )


# -- several AWS roles in one job: named profiles (item 8) ----------------------------------------------

SECOND = {
    "access_key_id": "ASIAZZEXAMPLE7SECOND",
    "secret_access_key": "second/K7MDENG+bPxRfiCYzEXAMPLEKEY00000",
    "session_token": "IQoJb3JpZ2luX2VjEXAMPLE-second-session=",
}


def test_two_aws_roles_become_two_named_profiles(tmp_path, oidc):
    closed = {"AWS_ENDPOINT_URL_STS": f"http://127.0.0.1:{free_port()}"}
    with (
        ScriptedBroker(ScriptedBroker.granted("aws", AWS)) as prod,
        ScriptedBroker(ScriptedBroker.granted("aws", SECOND)) as audit,
    ):
        first = run_action(
            tmp_path, inputs(prod.url, **{"aws-profile": "prod"}), {**oidc_env(oidc), **closed}
        )
        second = run_action(
            tmp_path, inputs(audit.url, **{"aws-profile": "audit"}), {**oidc_env(oidc), **closed}
        )
    assert first.returncode == 0 and second.returncode == 0, first.log + second.log
    # Both steps export the same two files; neither exports keys or a region of its own.
    env = second.env
    assert set(env) == {
        "AWS_CONFIG_FILE",
        "AWS_SHARED_CREDENTIALS_FILE",
        "CI_BROKER_CLOUD",
        "CI_BROKER_EXPIRES_AT",
    }
    config, credentials = Path(env["AWS_CONFIG_FILE"]), Path(env["AWS_SHARED_CREDENTIALS_FILE"])
    assert config.parent == credentials.parent and config.parent.parent == tmp_path / "runner" / "temp"
    assert stat.S_IMODE(config.parent.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in config.parent.iterdir())
    # The AWS SDK reads each profile from them (no network: the credentials as resolved).
    import botocore.session

    for name, expected, region in (("prod", AWS, "eu-west-1"), ("audit", SECOND, None)):
        session = botocore.session.Session(profile=name)
        session.set_config_variable("config_file", str(config))
        session.set_config_variable("credentials_file", str(credentials))
        frozen = session.get_credentials().get_frozen_credentials()
        assert (frozen.access_key, frozen.secret_key, frozen.token) == (
            expected["access_key_id"],
            expected["secret_access_key"],
            expected["session_token"],
        )
        assert session.get_config_variable("region") == region
    # The post step removes the files and clears what was exported.
    post = run_post(tmp_path, second.state)
    assert post.returncode == 0, post.log
    assert not config.parent.exists()
    assert post.env == {name: "" for name in env}


def test_a_refreshing_role_joins_the_profiles_through_its_hook(tmp_path, oidc):
    closed = {"AWS_ENDPOINT_URL_STS": f"http://127.0.0.1:{free_port()}"}
    with ScriptedBroker(granted_with_session("aws", AWS), ScriptedBroker.granted("aws", AWS)) as broker:
        result = run_action(
            tmp_path,
            inputs(broker.url, refresh="true", **{"aws-profile": "deploy"}),
            {**oidc_env(oidc), **closed},
        )
    assert result.returncode == 0, result.log
    assert "AWS_PROFILE" not in result.env and "AWS_ACCESS_KEY_ID" not in result.env
    text = Path(result.env["AWS_CONFIG_FILE"]).read_text()
    session_dir = result.state["session_dir"]
    assert text.startswith("[profile deploy]\nregion = eu-west-1\ncredential_process = ")
    assert text.rstrip().endswith(f"session.js aws {session_dir}")
    assert Path(result.env["AWS_SHARED_CREDENTIALS_FILE"]).read_text() == ""
    assert_no_secret(text, [AWS["secret_access_key"], SESSION["refresh_token"]], "the AWS config file")


def test_a_profile_another_role_wrote_is_refused_before_the_exchange(tmp_path):
    closed = {"AWS_ENDPOINT_URL_STS": f"http://127.0.0.1:{free_port()}"}
    with (
        OIDCRequestEndpoint(job_token) as oidc,
        ScriptedBroker(ScriptedBroker.granted("aws", AWS)) as broker,
    ):
        first = run_action(
            tmp_path, inputs(broker.url, **{"aws-profile": "ci"}), {**oidc_env(oidc), **closed}
        )
        again = run_action(
            tmp_path, inputs(broker.url, **{"aws-profile": "ci"}), {**oidc_env(oidc), **closed}
        )
        other = run_action(
            tmp_path,
            {**inputs(broker.url, **{"aws-profile": "ci"}), "role": "audit"},
            {**oidc_env(oidc), **closed},
        )
    assert first.returncode == 0 and again.returncode == 0, first.log + again.log
    assert other.returncode == 1 and len(oidc.audiences) == 2, "no token for the refused step"
    assert "AWS profile 'ci' is already written by another role of this job ('deploy')" in other.stdout


@pytest.mark.parametrize("name", ["a b", "[x]", "x]y", "-x", "p" * 65, "ü"])
def test_profile_names_are_one_word(tmp_path, oidc, name):
    result = run_action(
        tmp_path, inputs("https://broker.example.com", **{"aws-profile": name}), oidc_env(oidc)
    )
    assert result.returncode == 1 and oidc.audiences == []
    assert "aws-profile must be a profile name" in result.stderr


# -- the post step clears what the step exported (item 9) ------------------------------------------------


def test_the_post_step_clears_every_exported_variable(tmp_path, oidc):
    closed = {"AWS_ENDPOINT_URL_STS": f"http://127.0.0.1:{free_port()}"}
    with ScriptedBroker(ScriptedBroker.granted("aws", AWS)) as broker:
        result = run_action(tmp_path, inputs(broker.url), {**oidc_env(oidc), **closed})
    assert result.returncode == 0, result.log
    post = run_post(tmp_path, result.state)
    assert post.returncode == 0, post.log
    assert post.env == {name: "" for name in result.env}
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"} <= set(post.env)
    assert "ci-broker: cleared AWS_ACCESS_KEY_ID" in post.stderr


# -- retries -----------------------------------------------------------------------------------------------


def test_a_429_is_retried_after_the_brokers_retry_after(tmp_path, oidc):
    limited = ScriptedBroker.error(429, "rate_limited", "too many requests")
    limited.headers["Retry-After"] = "3"
    closed = {"AWS_ENDPOINT_URL_STS": f"http://127.0.0.1:{free_port()}"}
    with ScriptedBroker(limited, ScriptedBroker.granted("aws", AWS)) as broker:
        result = run_action(tmp_path, inputs(broker.url), {**oidc_env(oidc), **closed})
    assert result.returncode == 0, result.log
    assert (
        "HTTP 429 rate_limited: too many requests (request id req-0123); trying again in 3.0s"
        in result.stderr
    )
    assert len(broker.seen) == 2 and len(oidc.issued) == 2, "a fresh job token for each attempt"


# -- the JavaScript units ---------------------------------------------------------------------------------


def test_the_javascript_units_pass():
    """tests/integrations/js: the backoff schedule and the audience rule, with node's test runner."""
    files = sorted(str(p) for p in (ROOT / "tests" / "integrations" / "js").glob("*.test.js"))
    assert files
    proc = subprocess.run(
        [require_tool("node"), "--test", *files], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "# fail 0" in proc.stdout
