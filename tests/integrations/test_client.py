"""The shared client, run directly the way the Action and the GitLab template run it.

The broker here is scripted (tests/integrations/endpoints.py) so that every answer the contract
allows, and a few it does not, can be given on demand; the end-to-end tests against a real
`ci-broker serve` are test_github_action.py and test_gitlab_template.py.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import time
from pathlib import Path

import pytest
from clientrun import FLAVORS, Flavor, Result, busybox_bin, run_github, run_gitlab, stub_tool
from endpoints import OIDCRequestEndpoint, Reply, ScriptedBroker
from support import AWS, AZURE, CLIENT, GCP, JWT, assert_no_secret, jwt_for

SECRET_FIELDS = ("access_key_id", "secret_access_key", "session_token", "access_token", "federated_token")

FLAVOR_IDS = [f.name for f in FLAVORS]
DASH_CURL = FLAVORS[0]


@pytest.fixture
def oidc() -> OIDCRequestEndpoint:
    with OIDCRequestEndpoint(jwt_for) as endpoint:
        yield endpoint


def github_env(broker: str, oidc: OIDCRequestEndpoint | None, **extra: str) -> dict[str, str]:
    env = {"CI_BROKER_URL": broker, "CI_BROKER_ROLE": "deploy", **extra}
    if oidc is not None:
        env.update(
            ACTIONS_ID_TOKEN_REQUEST_URL=oidc.request_url, ACTIONS_ID_TOKEN_REQUEST_TOKEN=oidc.request_token
        )
    return env


def secrets_of(credentials: dict[str, str]) -> list[str]:
    return [v for k, v in credentials.items() if k in SECRET_FIELDS]


def assert_masked_first(result: Result, secrets: list[str]) -> None:
    """Every secret is masked, the masks come before any other stdout, and no secret is shown."""
    masked = set(result.masked())
    for value in secrets:
        assert value in masked, "a secret was not masked"
    lines = result.stdout.splitlines()
    first_other = next((i for i, line in enumerate(lines) if not line.startswith("::add-mask::")), len(lines))
    assert all(not line.startswith("::add-mask::") for line in lines[first_other:])
    assert_no_secret("\n".join(lines[first_other:]) + result.stderr, secrets, "the step's log")


# -- GitHub: success per cloud ---------------------------------------------------------------------


@pytest.mark.parametrize("flavor", FLAVORS, ids=FLAVOR_IDS)
def test_github_aws_exports_env_and_outputs(tmp_path: Path, oidc, flavor: Flavor) -> None:
    with ScriptedBroker(ScriptedBroker.granted("aws", AWS)) as broker:
        result = run_github(
            tmp_path, flavor, github_env(broker.url, oidc, CI_BROKER_OUTPUT_CREDENTIALS="true")
        )
    assert result.returncode == 0, result.log
    assert_masked_first(result, secrets_of(AWS) + [jwt_for(broker.url)])
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
    }
    # What reached the broker: the job's token as a bearer, the role as a JSON object.
    (seen,) = broker.seen
    assert seen.authorization == f"Bearer {jwt_for(broker.url)}"
    assert seen.content_type == "application/json"
    assert json.loads(seen.body) == {"role": "deploy"}
    assert oidc.audiences == [broker.url]


def test_github_outputs_hold_no_credentials_by_default(tmp_path: Path, oidc) -> None:
    with ScriptedBroker(ScriptedBroker.granted("aws", AWS)) as broker:
        result = run_github(tmp_path, DASH_CURL, github_env(broker.url, oidc))
    assert result.returncode == 0, result.log
    assert result.outputs == {"cloud": "aws", "expires-at": "2030-01-01T00:00:00Z"}


def test_github_export_env_false_exports_nothing(tmp_path: Path, oidc) -> None:
    with ScriptedBroker(ScriptedBroker.granted("aws", AWS)) as broker:
        result = run_github(tmp_path, DASH_CURL, github_env(broker.url, oidc, CI_BROKER_EXPORT_ENV="false"))
    assert result.returncode == 0, result.log
    assert result.env == {}
    assert_masked_first(result, secrets_of(AWS))


def test_github_audience_and_duration_are_sent(tmp_path: Path, oidc) -> None:
    with ScriptedBroker(ScriptedBroker.granted("aws", AWS)) as broker:
        result = run_github(
            tmp_path,
            DASH_CURL,
            github_env(
                broker.url + "/",
                oidc,
                CI_BROKER_AUDIENCE="https://broker.example.com/a b",
                CI_BROKER_DURATION="900",
            ),
        )
        assert result.returncode != 0  # an audience must be one printable word
        result = run_github(
            tmp_path,
            DASH_CURL,
            github_env(
                broker.url + "/",
                oidc,
                CI_BROKER_AUDIENCE=broker.url + "/x?y=1&z",
                CI_BROKER_DURATION="900",
            ),
        )
    assert result.returncode == 0, result.log
    assert oidc.audiences == [broker.url + "/x?y=1&z"]
    assert json.loads(broker.seen[-1].body) == {"role": "deploy", "duration": 900}


def test_github_gcp_exports_gcloud_and_terraform_tokens(tmp_path: Path, oidc) -> None:
    with ScriptedBroker(ScriptedBroker.granted("gcp", GCP)) as broker:
        result = run_github(
            tmp_path, DASH_CURL, github_env(broker.url, oidc, CI_BROKER_OUTPUT_CREDENTIALS="true")
        )
    assert result.returncode == 0, result.log
    assert_masked_first(result, [GCP["access_token"]])
    assert result.env["CLOUDSDK_AUTH_ACCESS_TOKEN"] == GCP["access_token"]
    assert result.env["GOOGLE_OAUTH_ACCESS_TOKEN"] == GCP["access_token"]
    assert result.outputs["service-account"] == GCP["service_account"]
    assert result.outputs["token-type"] == "Bearer"


def test_github_azure_exports_ids_and_federated_token_file(tmp_path: Path, oidc) -> None:
    with ScriptedBroker(ScriptedBroker.granted("azure", AZURE)) as broker:
        result = run_github(tmp_path, DASH_CURL, github_env(broker.url, oidc))
    assert result.returncode == 0, result.log
    assert_masked_first(result, [AZURE["access_token"], AZURE["federated_token"]])
    for prefix in ("ARM", "AZURE"):
        assert result.env[f"{prefix}_TENANT_ID"] == AZURE["tenant_id"]
        assert result.env[f"{prefix}_CLIENT_ID"] == AZURE["client_id"]
        assert result.env[f"{prefix}_SUBSCRIPTION_ID"] == AZURE["subscription_id"]
    assert result.env["AZURE_ACCESS_TOKEN"] == AZURE["access_token"]
    token_file = Path(result.env["AZURE_FEDERATED_TOKEN_FILE"])
    assert result.env["ARM_OIDC_TOKEN_FILE_PATH"] == str(token_file)
    assert result.env["ARM_USE_OIDC"] == "true"
    # Under RUNNER_TEMP, readable by the job's user only, named for the post step to delete.
    assert token_file.parent == tmp_path / "runner" / "temp"
    assert token_file.read_text() == AZURE["federated_token"]
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert result.state == {"federated_token_file": str(token_file)}


def test_github_azure_without_assertion_writes_no_file(tmp_path: Path, oidc) -> None:
    credentials = {k: v for k, v in AZURE.items() if k not in ("federated_token", "subscription_id")}
    with ScriptedBroker(ScriptedBroker.granted("azure", credentials)) as broker:
        result = run_github(tmp_path, DASH_CURL, github_env(broker.url, oidc))
    assert result.returncode == 0, result.log
    assert "AZURE_FEDERATED_TOKEN_FILE" not in result.env
    assert "AZURE_SUBSCRIPTION_ID" not in result.env
    assert result.state == {}
    assert list((tmp_path / "runner" / "temp").iterdir()) == []


def test_github_env_delimiter_is_random_per_run(tmp_path: Path, oidc) -> None:
    delimiters = set()
    with ScriptedBroker(ScriptedBroker.granted("aws", AWS)) as broker:
        for attempt in range(2):
            result = run_github(tmp_path / str(attempt), DASH_CURL, github_env(broker.url, oidc))
            assert result.returncode == 0, result.log
            delimiters |= {
                line.partition("<<")[2] for line in result.raw_env_file.splitlines() if "<<" in line
            }
    assert len(delimiters) == 2 and all(len(d) == 45 for d in delimiters)


# -- GitHub: failures, each with its message ---------------------------------------------------------


def test_missing_id_token_permission_says_how_to_fix(tmp_path: Path) -> None:
    result = run_github(tmp_path, DASH_CURL, github_env("https://broker.example.com", None))
    assert result.returncode == 1
    assert "::error title=ci-broker::this job cannot request an OIDC token" in result.stdout
    assert "permissions: { id-token: write, contents: read }" in result.stderr


@pytest.mark.parametrize("flavor", FLAVORS, ids=FLAVOR_IDS)
def test_401_prints_error_message_and_request_id(tmp_path: Path, oidc, flavor: Flavor) -> None:
    reply = ScriptedBroker.error(401, "invalid_token", "the token's audience is not accepted", "req-7f3a")
    with ScriptedBroker(reply) as broker:
        result = run_github(tmp_path, flavor, github_env(broker.url, oidc))
    assert result.returncode == 1
    assert len(broker.seen) == 1, "a refusal must not be retried"
    if "wget" in flavor.name or flavor.shell == "busybox":  # wget drops some error bodies
        message = "HTTP 401"
        assert "(wget hid the broker's message; curl would show it)" in result.stdout
    else:
        message = "HTTP 401 invalid_token: the token's audience is not accepted (request id req-7f3a)"
    assert "::error title=ci-broker::the broker refused this job's token: " + message in result.stdout
    assert "matches the broker's server.audience" in result.stderr
    token = jwt_for(broker.url)
    assert_no_secret(result.stdout.replace(f"::add-mask::{token}", "") + result.stderr, [token], "log")


@pytest.mark.parametrize("flavor", FLAVORS, ids=FLAVOR_IDS)
def test_403_points_at_ci_broker_explain(tmp_path: Path, oidc, flavor: Flavor) -> None:
    reply = ScriptedBroker.error(403, "access_denied", "no rule of the role grants this token", "req-9b1c")
    with ScriptedBroker(reply) as broker:
        result = run_github(tmp_path, flavor, github_env(broker.url, oidc))
    assert result.returncode == 1
    if flavor.shell == "busybox":
        assert "the broker denied role 'deploy': HTTP 403 (wget hid the broker's message" in result.stderr
    else:
        assert (
            "the broker denied role 'deploy': HTTP 403 access_denied: no rule of the role grants "
            "this token (request id req-9b1c)"
        ) in result.stderr
    assert "ci-broker explain --config CONFIG --role deploy --claims CLAIMS.json" in result.stderr


def test_unreachable_broker_is_retried_with_backoff_then_fails(tmp_path: Path, oidc) -> None:
    from broker.sandbox.stack import free_port

    started = time.monotonic()
    result = run_github(
        tmp_path, DASH_CURL, github_env(f"http://127.0.0.1:{free_port()}", oidc, CI_BROKER_MAX_ATTEMPTS="3")
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert "did not answer; trying again in 1s (attempt 1 of 3)" in result.stderr
    assert "did not answer; trying again in 2s (attempt 2 of 3)" in result.stderr
    assert "did not answer; gave up after 3 attempts." in result.stdout
    assert 3 <= elapsed < 30
    # A fresh job token per attempt: a request that timed out may have spent the previous one.
    assert len(oidc.audiences) == 3


def test_503_then_success_retries_with_a_fresh_token(tmp_path: Path) -> None:
    signatures = iter(["c2lnbmF0dXJlLV8", "c2Vjb25kLXNpZw"])
    with (
        OIDCRequestEndpoint(
            lambda audience: jwt_for(audience).replace("c2lnbmF0dXJlLV8", next(signatures))
        ) as oidc,
        ScriptedBroker(
            ScriptedBroker.error(503, "unavailable", "replay store down"), ScriptedBroker.granted("aws", AWS)
        ) as broker,
    ):
        result = run_github(tmp_path, DASH_CURL, github_env(broker.url, oidc))
    assert result.returncode == 0, result.log
    assert "the broker answered HTTP 503 unavailable: replay store down" in result.stderr
    assert [s.authorization for s in broker.seen] == [f"Bearer {t}" for t in oidc.issued]
    assert len(set(oidc.issued)) == 2


def test_429_gives_up_after_the_attempt_limit(tmp_path: Path, oidc) -> None:
    reply = ScriptedBroker.error(429, "rate_limited", "too many requests for this identity")
    with ScriptedBroker(reply) as broker:
        result = run_github(tmp_path, DASH_CURL, github_env(broker.url, oidc, CI_BROKER_MAX_ATTEMPTS="2"))
    assert result.returncode == 1
    assert len(broker.seen) == 2
    assert "HTTP 429 rate_limited: too many requests for this identity" in result.stdout


def test_502_is_reported_without_retry(tmp_path: Path, oidc) -> None:
    with ScriptedBroker(ScriptedBroker.error(502, "upstream_error", "STS refused")) as broker:
        result = run_github(tmp_path, DASH_CURL, github_env(broker.url, oidc))
    assert result.returncode == 1 and len(broker.seen) == 1
    assert "the cloud refused or failed the exchange: HTTP 502 upstream_error: STS refused" in result.stderr


def test_not_a_broker_says_check_the_url(tmp_path: Path, oidc) -> None:
    with ScriptedBroker(Reply(404, b"<html>Not Found</html>", {"Content-Type": "text/html"})) as broker:
        result = run_github(tmp_path, DASH_CURL, github_env(broker.url, oidc))
    assert result.returncode == 1
    assert "rejected the request: HTTP 404" in result.stderr


def test_oidc_endpoint_refusal_is_reported(tmp_path: Path, oidc) -> None:
    env = github_env("https://broker.example.com", oidc)
    env["ACTIONS_ID_TOKEN_REQUEST_TOKEN"] = "wrong-request-token"
    result = run_github(tmp_path, DASH_CURL, env)
    assert result.returncode == 1
    assert "GitHub refused the OIDC token request with HTTP 401" in result.stderr


# -- answers that must be refused whole ---------------------------------------------------------------

BAD_ANSWERS = {
    "not-json": b"credentials: yes",
    "trailing-data": json.dumps(
        {"role": "d", "cloud": "aws", "expires_at": "2030-01-01T00:00:00Z", "credentials": AWS}
    ).encode()
    + b" {}",
    "duplicate-key": (
        b'{"role":"d","cloud":"aws","cloud":"gcp","expires_at":"2030-01-01T00:00:00Z",'
        b'"credentials":' + json.dumps(AWS).encode() + b"}"
    ),
    "newline-in-secret": json.dumps(
        {
            "role": "d",
            "cloud": "aws",
            "expires_at": "2030-01-01T00:00:00Z",
            "credentials": {**AWS, "secret_access_key": "abc\nAWS_PROFILE<<x"},
        }
    ).encode(),
    "space-in-secret": json.dumps(
        {
            "role": "d",
            "cloud": "aws",
            "expires_at": "2030-01-01T00:00:00Z",
            "credentials": {**AWS, "session_token": "a b"},
        }
    ).encode(),
    "number-for-secret": json.dumps(
        {
            "role": "d",
            "cloud": "aws",
            "expires_at": "2030-01-01T00:00:00Z",
            "credentials": {**AWS, "access_key_id": 12},
        }
    ).encode(),
    "missing-secret": json.dumps(
        {
            "role": "d",
            "cloud": "aws",
            "expires_at": "2030-01-01T00:00:00Z",
            "credentials": {"access_key_id": "A"},
        }
    ).encode(),
    "unknown-cloud": json.dumps(
        {"role": "d", "cloud": "oracle", "expires_at": "2030-01-01T00:00:00Z", "credentials": AWS}
    ).encode(),
    "expiry-injection": json.dumps(
        {"role": "d", "cloud": "aws", "expires_at": "2030$(id)", "credentials": AWS}
    ).encode(),
}


@pytest.mark.parametrize("body", BAD_ANSWERS.values(), ids=BAD_ANSWERS.keys())
def test_malformed_answer_is_refused_and_nothing_exported(tmp_path: Path, oidc, body: bytes) -> None:
    with ScriptedBroker(Reply(200, body)) as broker:
        result = run_github(tmp_path, DASH_CURL, github_env(broker.url, oidc))
    assert result.returncode == 1, result.log
    assert "::error title=ci-broker::the broker's answer" in result.stdout
    assert result.env == {} and result.outputs == {}


def test_broker_message_cannot_forge_workflow_commands(tmp_path: Path, oidc) -> None:
    forged = "denied\n::set-env name=NODE_OPTIONS::--require=/tmp/x\r\n::add-mask::\u2028%0A::endgroup::"
    with ScriptedBroker(ScriptedBroker.error(403, "access_denied", forged)) as broker:
        result = run_github(tmp_path, DASH_CURL, github_env(broker.url, oidc))
    assert result.returncode == 1
    for line in (result.stdout + result.stderr).splitlines():
        assert line.startswith(("::add-mask::", "::error title=ci-broker::", "ci-broker: ")) or re.fullmatch(
            r"::group::ci-broker: [^:]+|::endgroup::|  [a-z_]+: [ -~]*", line
        ), line
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
def test_plain_http_only_to_loopback(tmp_path: Path, oidc, url: str) -> None:
    # A token sent in clear text to anything but this machine could be replayed by whoever reads it.
    result = run_github(tmp_path, DASH_CURL, github_env(url, oidc))
    assert result.returncode == 1
    assert "broker-url must" in result.stderr
    assert oidc.audiences == [], "no token may be requested for a URL that will be refused"


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1",
        "http://127.0.0.1:8080/",
        "http://localhost:1",
        "http://[::1]:8080",
        "https://broker.example.com:8443/base",
    ],
)
def test_loopback_http_and_any_https_are_accepted(tmp_path: Path, url: str) -> None:
    result = run_gitlab(
        tmp_path,
        DASH_CURL,
        {
            "CI_BROKER_URL": url,
            "CI_BROKER_ROLE": "deploy",
            "CI_BROKER_ID_TOKEN": jwt_for(url),
            "CI_BROKER_MAX_ATTEMPTS": "1",
        },
    )
    assert "must" not in result.stderr, result.stderr
    assert "did not answer" in result.stderr or "HTTP" in result.stderr


@pytest.mark.parametrize("role", ["", "-x", "a b", "a/b", "x" * 65, 'r"}', "ré"])
def test_role_names_are_checked_before_anything_is_sent(tmp_path: Path, oidc, role: str) -> None:
    env = github_env("https://broker.example.com", oidc)
    env["CI_BROKER_ROLE"] = role
    result = run_github(tmp_path, DASH_CURL, env)
    assert result.returncode == 1
    assert "role must be a role name" in result.stderr


def test_no_http_tool_fails_with_install_hint(tmp_path: Path) -> None:
    bindir = busybox_bin(tmp_path, without=("wget",))
    result = run_gitlab(
        tmp_path,
        Flavor("busybox-nothing", "busybox", "curl python3 wget"),
        {
            "PATH": str(bindir),
            "CI_BROKER_URL": "https://broker.example.com",
            "CI_BROKER_ROLE": "deploy",
            "CI_BROKER_ID_TOKEN": JWT,
        },
    )
    assert result.returncode == 1
    assert "no HTTP client in this job's image: it needs curl, wget or python3." in result.stderr
    assert "apk add --no-cache curl" in result.stderr


def test_busybox_wget_without_tls_verification_is_not_trusted_with_the_token(tmp_path: Path) -> None:
    bindir = busybox_bin(tmp_path)
    stubs = tmp_path / "stubs"
    calls = tmp_path / "wget-calls"
    # busybox wget built with its own TLS code prints this note and goes on without checking.
    stub_tool(
        stubs,
        "wget",
        f'printf "%s\\n" "$*" >> {calls}\n'
        'echo "wget: note: TLS certificate validation not implemented" >&2\n'
        'echo "  HTTP/1.1 200 OK" >&2\n',
    )
    result = run_gitlab(
        tmp_path,
        Flavor("busybox-tls", "busybox", "wget"),
        {
            "PATH": f"{stubs}:{bindir}",
            "CI_BROKER_URL": "https://broker.example.com",
            "CI_BROKER_ROLE": "deploy",
            "CI_BROKER_ID_TOKEN": jwt_for("https://broker.example.com"),
        },
    )
    assert result.returncode == 1
    assert "does not verify TLS certificates; refusing to send the token" in result.stderr
    assert jwt_for("https://broker.example.com") not in calls.read_text()


# -- GitLab: exports in the job's own shell ----------------------------------------------------------


def gitlab_env(broker: str, **extra: str) -> dict[str, str]:
    return {
        "CI_BROKER_URL": broker,
        "CI_BROKER_ROLE": "deploy",
        "CI_BROKER_ID_TOKEN": jwt_for(broker),
        **extra,
    }


@pytest.mark.parametrize("flavor", FLAVORS, ids=FLAVOR_IDS)
def test_gitlab_exports_into_the_job_shell(tmp_path: Path, flavor: Flavor) -> None:
    with ScriptedBroker(ScriptedBroker.granted("aws", AWS)) as broker:
        result = run_gitlab(tmp_path, flavor, gitlab_env(broker.url))
    assert result.returncode == 0, result.log
    assert result.env["AWS_ACCESS_KEY_ID"] == AWS["access_key_id"]
    assert result.env["AWS_SECRET_ACCESS_KEY"] == AWS["secret_access_key"]
    assert result.env["AWS_SESSION_TOKEN"] == AWS["session_token"]
    assert result.env["AWS_REGION"] == result.env["AWS_DEFAULT_REGION"] == "eu-west-1"
    assert broker.seen[0].authorization == f"Bearer {jwt_for(broker.url)}"
    assert "::add-mask::" not in result.stdout
    assert_no_secret(result.log, secrets_of(AWS) + [jwt_for(broker.url)], "the job log")
    # The client cleans up after itself in the job's shell.
    assert not [name for name in result.env if name.lower().startswith("_cib")]


@pytest.mark.parametrize("flavor", FLAVORS, ids=FLAVOR_IDS)
def test_gitlab_leaves_no_helpers_and_keeps_shell_options(tmp_path: Path, flavor: Flavor) -> None:
    check = (
        "for f in _cib_main _cib_die _cib_get _cib_request; do "
        'if command -v "$f" >/dev/null 2>&1; then echo "left: $f"; fi; done\n'
        'if set | grep -q "^_cib_"; then echo "left: variables"; fi\n'
        "case $- in *e*) echo errexit-kept;; esac\n"
        "case $- in *u*) echo nounset-kept;; esac"
    )
    with ScriptedBroker(ScriptedBroker.granted("aws", AWS)) as broker:
        result = run_gitlab(tmp_path, flavor, gitlab_env(broker.url), epilogue=check)
    assert result.returncode == 0, result.log
    assert "left:" not in result.stdout
    assert "errexit-kept" in result.stdout and "nounset-kept" in result.stdout


def test_gitlab_debug_trace_is_paused_while_secrets_are_handled(tmp_path: Path) -> None:
    with ScriptedBroker(ScriptedBroker.granted("aws", AWS)) as broker:
        result = run_gitlab(
            tmp_path,
            DASH_CURL,
            gitlab_env(broker.url),
            prologue="set -eux",
            epilogue="case $- in *x*) echo xtrace-restored;; esac",
        )
    assert result.returncode == 0, result.log
    assert "xtrace-restored" in result.stdout
    # The trace resumes after the client and may show what the job itself does with the
    # values (GitLab documents that debug trace exposes variables); the client shows none.
    client_part = result.stderr.split("xtrace-restored")[0].split("+ set -x")[0]
    assert_no_secret(client_part, secrets_of(AWS), "the trace of the client")


def test_gitlab_job_script_on_stdin_is_not_swallowed(tmp_path: Path) -> None:
    with ScriptedBroker(ScriptedBroker.granted("aws", AWS)) as broker:
        for flavor in FLAVORS:
            result = run_gitlab(
                tmp_path,
                flavor,
                gitlab_env(broker.url),
                prologue="set -e",
                epilogue="echo rest-of-the-job-ran",
                via_stdin=True,
            )
            assert result.returncode == 0, (flavor.name, result.log)
            assert "rest-of-the-job-ran" in result.stdout, flavor.name


def test_gitlab_missing_id_token_explains_id_tokens(tmp_path: Path) -> None:
    env = gitlab_env("https://broker.example.com")
    del env["CI_BROKER_ID_TOKEN"]
    result = run_gitlab(tmp_path, DASH_CURL, env)
    assert result.returncode == 1
    assert "CI_BROKER_ID_TOKEN is empty" in result.stderr
    assert "extends: .ci-broker" in result.stderr
    assert "::error" not in result.stdout


def test_gitlab_token_with_shell_or_curl_syntax_is_refused(tmp_path: Path) -> None:
    with ScriptedBroker(ScriptedBroker.granted("aws", AWS)) as broker:
        for token in [JWT + '"\nurl = "http://evil', "a.b.c d", "$(id).b.c", "not-a-jwt"]:
            result = run_gitlab(tmp_path, DASH_CURL, gitlab_env(broker.url, CI_BROKER_ID_TOKEN=token))
            assert result.returncode == 1
            assert "does not look like a JWT" in result.stderr
        assert broker.seen == []


def test_gitlab_403_shows_the_brokers_answer(tmp_path: Path) -> None:
    reply = ScriptedBroker.error(403, "access_denied", "no rule of the role grants this token", "req-1")
    with ScriptedBroker(reply) as broker:
        result = run_gitlab(tmp_path, DASH_CURL, gitlab_env(broker.url))
    assert result.returncode == 1
    assert "HTTP 403 access_denied: no rule of the role grants this token (request id req-1)" in result.stderr
    assert "ci-broker explain" in result.stderr


def test_gitlab_azure_token_file_is_outside_the_project(tmp_path: Path) -> None:
    with ScriptedBroker(ScriptedBroker.granted("azure", AZURE)) as broker:
        result = run_gitlab(tmp_path, DASH_CURL, gitlab_env(broker.url))
    assert result.returncode == 0, result.log
    token_file = Path(result.env["AZURE_FEDERATED_TOKEN_FILE"])
    project = tmp_path / "project"
    # GitLab's own per-job temporary directory, beside (not inside) the project directory, so
    # it is never in artifacts or caches; the template's after_script deletes the file.
    assert token_file == Path(f"{project}.tmp") / "ci-broker-azure-federated-token"
    assert token_file.read_text() == AZURE["federated_token"]
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert result.env["ARM_OIDC_TOKEN_FILE_PATH"] == str(token_file)
    assert_no_secret(result.log, secrets_of(AZURE), "the job log")


# -- sessions (CI_BROKER_REFRESH); the hooks with the clouds' SDKs: test_refresh_hooks.py ----------

SESSION = {"id": "0" * 32, "refresh_token": "cibrt_" + "R" * 43, "expires_at": "2030-01-01T06:00:00Z"}


def granted_with_session(cloud: str, credentials: dict[str, str]) -> Reply:
    body = json.loads(ScriptedBroker.granted(cloud, credentials).body)
    body["session"] = SESSION
    return Reply(200, json.dumps(body).encode())


def test_gitlab_a_session_the_job_does_not_refresh_is_revoked_at_once(tmp_path: Path) -> None:
    with ScriptedBroker(granted_with_session("aws", AWS), Reply(200, b"{}")) as broker:
        result = run_gitlab(tmp_path, DASH_CURL, gitlab_env(broker.url))
    assert result.returncode == 0, result.log
    assert [s.authorization for s in broker.seen] == [
        f"Bearer {jwt_for(broker.url)}",
        f"Bearer {SESSION['refresh_token']}",
    ]
    assert broker.seen[1].body == b"{}"
    assert result.env["AWS_ACCESS_KEY_ID"] == AWS["access_key_id"] and "AWS_CONFIG_FILE" not in result.env
    assert_no_secret(result.log, [SESSION["refresh_token"]], "the job log")


def test_gitlab_refresh_without_a_session_says_what_the_role_needs(tmp_path: Path) -> None:
    with ScriptedBroker(ScriptedBroker.granted("aws", AWS)) as broker:
        result = run_gitlab(tmp_path, DASH_CURL, gitlab_env(broker.url, CI_BROKER_REFRESH="true"))
    assert result.returncode == 1
    assert "role 'deploy' gives no session, so its credentials cannot be refreshed." in result.stderr
    assert "set session_lifetime on the role" in result.stderr


def test_gitlab_refresh_needs_the_client_as_a_file(tmp_path: Path) -> None:
    # Sourced as plain text (not through the template), the hooks would have nothing to run.
    with ScriptedBroker(granted_with_session("aws", AWS)) as broker:
        result = run_gitlab(tmp_path, DASH_CURL, gitlab_env(broker.url, CI_BROKER_REFRESH="true"))
    assert result.returncode == 1
    assert "set CI_BROKER_CLIENT to the path of ci-broker.sh" in result.stderr


def test_other_cis_refresh_with_the_client_file_in_a_private_directory(tmp_path: Path) -> None:
    env = gitlab_env("", CI_BROKER_REFRESH="true", CI_BROKER_CLIENT=str(CLIENT), TMPDIR=str(tmp_path))
    del env["CI_BROKER_URL"]
    with ScriptedBroker(granted_with_session("aws", AWS)) as broker:
        env.update(CI_BROKER_URL=broker.url, CI_BROKER_ID_TOKEN=jwt_for(broker.url))
        result = run_gitlab(tmp_path, DASH_CURL, env)
    assert result.returncode == 0, result.log
    session_dir = Path(result.env["CI_BROKER_SESSION_DIR"])
    assert session_dir.parent == tmp_path and stat.S_IMODE(session_dir.stat().st_mode) == 0o700
    assert (session_dir / "client.sh").read_bytes() == CLIENT.read_bytes()
    assert stat.S_IMODE((session_dir / "answer").stat().st_mode) == 0o600
    assert "AWS_ACCESS_KEY_ID" not in result.env and result.env["AWS_PROFILE"] == "ci-broker"
    assert_no_secret(result.log, [*secrets_of(AWS), SESSION["refresh_token"]], "the job log")


def test_a_refused_gcp_hook_answers_google_in_its_own_error_shape(tmp_path: Path) -> None:
    session_dir = tmp_path / "session"
    session_dir.mkdir()
    (session_dir / "url").write_text("https://broker.example.com")
    (session_dir / "duration").write_text("")
    (session_dir / "answer").write_text("{}")
    (session_dir / "error").write_text('the broker refused to refresh this job\'s session: HTTP 401 "ended"')
    proc = subprocess.run(
        ["dash", str(CLIENT), "ci-broker-session", "gcp", str(session_dir)],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": os.environ["PATH"]},
    )
    assert proc.returncode == 0 and proc.stderr == ""
    answer = json.loads(proc.stdout)
    assert answer == {
        "version": 1,
        "success": False,
        "code": "ci_broker_refresh_failed",
        "message": 'ci-broker: the broker refused to refresh this job\'s session: HTTP 401 "ended"',
    }


# -- several roles in one job (the component's `token` and `aws_profile` inputs) --------------------

SECOND_ROLE = """
CI_BROKER_ROLE=audit
CI_BROKER_TOKEN_VARIABLE=AUDIT_ID_TOKEN
CI_BROKER_AWS_PROFILE=audit
. "{client}"
"""


@pytest.mark.parametrize("flavor", [FLAVORS[0], FLAVORS[3]], ids=[FLAVORS[0].name, FLAVORS[3].name])
def test_two_aws_roles_each_with_its_own_token_write_named_profiles(tmp_path: Path, flavor: Flavor) -> None:
    second = dict(AWS, access_key_id="ASIAZZEXAMPLE7SECOND", secret_access_key="second/secret+key")
    with ScriptedBroker(ScriptedBroker.granted("aws", AWS), ScriptedBroker.granted("aws", second)) as broker:
        deploy_token = jwt_for(broker.url, job="deploy")
        audit_token = jwt_for(broker.url, job="audit")
        env = gitlab_env(
            broker.url,
            CI_BROKER_TOKEN_VARIABLE="DEPLOY_ID_TOKEN",
            DEPLOY_ID_TOKEN=deploy_token,
            AUDIT_ID_TOKEN=audit_token,
            CI_BROKER_AWS_PROFILE="deploy",
        )
        del env["CI_BROKER_ID_TOKEN"]
        result = run_gitlab(tmp_path, flavor, env, epilogue=SECOND_ROLE.format(client=CLIENT))
    assert result.returncode == 0, result.log
    assert [s.authorization for s in broker.seen] == [f"Bearer {deploy_token}", f"Bearer {audit_token}"]
    assert [json.loads(s.body)["role"] for s in broker.seen] == ["deploy", "audit"]
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"} & set(
        result.env
    )
    credentials = Path(result.env["AWS_SHARED_CREDENTIALS_FILE"])
    config = Path(result.env["AWS_CONFIG_FILE"])
    assert credentials.parent == config.parent == Path(str(tmp_path / "project") + ".tmp")
    assert (
        oct(credentials.stat().st_mode & 0o777) == "0o600" and oct(config.stat().st_mode & 0o777) == "0o600"
    )
    import configparser

    parsed = configparser.ConfigParser()
    parsed.read(credentials)
    assert parsed["deploy"]["aws_access_key_id"] == AWS["access_key_id"]
    assert parsed["deploy"]["aws_session_token"] == AWS["session_token"]
    assert parsed["audit"]["aws_access_key_id"] == second["access_key_id"]
    assert parsed["audit"]["aws_secret_access_key"] == second["secret_access_key"]
    regions = configparser.ConfigParser()
    regions.read(config)
    assert regions["profile deploy"]["region"] == regions["profile audit"]["region"] == "eu-west-1"
    assert_no_secret(
        result.log, secrets_of(AWS) + secrets_of(second) + [deploy_token, audit_token], "the job log"
    )


def test_a_profile_name_two_roles_share_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    with ScriptedBroker(ScriptedBroker.granted("aws", AWS)) as broker:
        env = gitlab_env(broker.url, CI_BROKER_AWS_PROFILE="audit", AUDIT_ID_TOKEN=jwt_for(broker.url, n=2))
        result = run_gitlab(tmp_path, DASH_CURL, env, epilogue=SECOND_ROLE.format(client=CLIENT))
    assert result.returncode == 1
    assert "AWS profile 'audit' is already written by another role of this job" in result.stderr
    assert len(broker.seen) == 1, "the second role's token was not spent"
    credentials = Path(str(tmp_path / "project") + ".tmp") / "ci-broker-aws-credentials"
    assert credentials.read_text().count("[audit]") == 1


@pytest.mark.parametrize("value", ["a b", "x]\n[default", "$(id)"])
def test_a_profile_name_must_be_a_name(tmp_path: Path, value: str) -> None:
    result = run_gitlab(
        tmp_path, DASH_CURL, gitlab_env("https://broker.example.com", CI_BROKER_AWS_PROFILE=value)
    )
    assert result.returncode == 1
    assert "CI_BROKER_AWS_PROFILE must be a profile name" in result.stderr


def test_gitlab_names_the_missing_token_variable(tmp_path: Path) -> None:
    env = gitlab_env("https://broker.example.com", CI_BROKER_TOKEN_VARIABLE="GCP_ID_TOKEN")
    result = run_gitlab(tmp_path, DASH_CURL, env)
    assert result.returncode == 1
    assert "GCP_ID_TOKEN is empty: the job needs 'id_tokens: GCP_ID_TOKEN'" in result.stderr


def test_two_refreshing_aws_roles_each_get_a_credential_process_profile(tmp_path: Path) -> None:
    """With refresh, each named profile runs its own session's hook; botocore reads them both."""
    import boto3

    second = dict(AWS, access_key_id="ASIAZZEXAMPLE7SECOND", secret_access_key="second/secret+key")
    with ScriptedBroker(granted_with_session("aws", AWS), granted_with_session("aws", second)) as broker:
        env = gitlab_env(
            broker.url,
            CI_BROKER_REFRESH="true",
            CI_BROKER_CLIENT=str(CLIENT),
            TMPDIR=str(tmp_path),
            CI_BROKER_TOKEN_VARIABLE="DEPLOY_ID_TOKEN",
            DEPLOY_ID_TOKEN=jwt_for(broker.url, job="deploy"),
            AUDIT_ID_TOKEN=jwt_for(broker.url, job="audit"),
            CI_BROKER_AWS_PROFILE="deploy",
        )
        result = run_gitlab(tmp_path, DASH_CURL, env, epilogue=SECOND_ROLE.format(client=CLIENT))
    assert result.returncode == 0, result.log
    assert "AWS_PROFILE" not in result.env and "AWS_ACCESS_KEY_ID" not in result.env
    config = Path(result.env["AWS_CONFIG_FILE"])
    text = config.read_text()
    hooks = re.findall(r"^credential_process = (.+) ci-broker-session aws (\S+)$", text, re.M)
    assert [line for line in text.splitlines() if line.startswith("[")] == [
        "[profile deploy]",
        "[profile audit]",
    ]
    assert len({directory for _, directory in hooks}) == 2, "each role its own session directory"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    os.environ.clear()
    os.environ.update(clean, AWS_CONFIG_FILE=str(config), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"))
    try:
        keys = {
            p: boto3.session.Session(profile_name=p).get_credentials().access_key for p in ("deploy", "audit")
        }
    finally:
        os.environ.clear()
        os.environ.update(clean)
    assert keys == {"deploy": AWS["access_key_id"], "audit": second["access_key_id"]}
