"""GCP roles end to end: /v1/exchange -> google-auth -> the local STS and IAM Credentials.

The local endpoints verify the broker's assertion as a workload identity pool provider would
(issuer, JWKS signature, aud = the provider's resource name, attribute condition on sub) and the
impersonation call as IAM would (a bearer it issued, a workloadIdentityUser binding), so a passing
exchange is evidence the real services would accept what the broker sent.
"""

from __future__ import annotations

import copy
import json
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests

from broker.config import ConfigError, build_config
from broker.sandbox.faults import ClosingServer
from broker.sandbox.stack import GCP_SERVICE_ACCOUNT, Sandbox
from tests.clouds.conftest import role_config, seconds_until, secrets_in
from tests.helpers import assert_refused, last_refusal

ROLE = "gcp-deploy"
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"


def gcp_config(sandbox: Sandbox, **changes: Any) -> dict[str, Any]:
    return role_config(sandbox, ROLE, "gcp", **changes)


def sts_calls(sandbox: Sandbox) -> list[dict[str, Any]]:
    return [c for c in sandbox.gcp.calls if c["path"] == "/v1/token"]


def iam_calls(sandbox: Sandbox) -> list[dict[str, Any]]:
    return [c for c in sandbox.gcp.calls if c["path"].endswith(":generateAccessToken")]


# -- granted ------------------------------------------------------------------------------------


def test_a_github_job_gets_a_working_service_account_token(sandbox, broker, audit_events):
    response = sandbox.exchange(sandbox.github_token(), role=ROLE)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["role"] == ROLE and body["cloud"] == "gcp"
    creds = body["credentials"]
    assert set(creds) == {"access_token", "token_type", "service_account"}
    assert creds["token_type"] == "Bearer"
    assert creds["service_account"] == GCP_SERVICE_ACCOUNT
    assert 3500 < seconds_until(body["expires_at"]) <= 3600

    token = sandbox.gcp.describe(creds["access_token"])
    assert token is not None and token.kind == "service_account"
    assert token.service_account == GCP_SERVICE_ACCOUNT
    assert token.principal == sandbox.gcp.principal("role:gcp-deploy")
    assert token.scopes == (CLOUD_PLATFORM,)
    event = audit_events[-1]
    assert (
        event["outcome"] == "granted"
        and event["cloud"] == "gcp"
        and event["expires_at"] == body["expires_at"]
    )


def test_a_gitlab_job_gets_the_same_role(sandbox, broker):
    response = sandbox.exchange(sandbox.gitlab_token(), role=ROLE)
    assert response.status_code == 200, response.text
    assert sandbox.gcp.accepted[-1]["provider"] == "gitlab"


def test_the_assertion_would_satisfy_the_pool_provider(sandbox, broker):
    before = len(sandbox.gcp.accepted)
    assert sandbox.exchange(sandbox.github_token(), role=ROLE).status_code == 200
    assert len(sandbox.gcp.accepted) == before + 1
    claims = sandbox.gcp.accepted[-1]
    assert claims["iss"] == sandbox.broker_url
    assert claims["aud"] == sandbox.gcp.audience
    assert claims["sub"] == "role:gcp-deploy"
    assert claims["exp"] - claims["iat"] <= 300
    assert claims["repository_id"] == "892734123" and claims["run_id"] == "7123456789"


def test_the_sts_request_has_exactly_the_documented_fields(sandbox, broker):
    assert sandbox.exchange(sandbox.github_token(), role=ROLE).status_code == 200
    call = sts_calls(sandbox)[-1]
    assert call == {
        "path": "/v1/token",
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "audience": sandbox.gcp.audience,
        "scope": "https://www.googleapis.com/auth/iam",  # the federated token only calls IAM
        "requested_token_type": "urn:ietf:params:oauth:token-type:access_token",
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
    }
    subject_token = sandbox.gcp.subject_tokens[-1]
    discovery = requests.get(f"{sandbox.broker_url}/.well-known/openid-configuration", timeout=5).json()
    keys = jwt.PyJWKSet.from_dict(requests.get(discovery["jwks_uri"], timeout=5).json())
    key = next(k for k in keys.keys if k.key_id == jwt.get_unverified_header(subject_token)["kid"])
    claims = jwt.decode(
        subject_token, key.key, algorithms=["ES256"], audience=sandbox.gcp.audience, issuer=sandbox.broker_url
    )
    assert claims["sub"] == "role:gcp-deploy"
    iam = iam_calls(sandbox)[-1]
    assert iam["service_account"] == GCP_SERVICE_ACCOUNT
    assert iam["body"] == {"delegates": None, "scope": [CLOUD_PLATFORM], "lifetime": "3600s"}


def test_without_a_service_account_the_federated_token_is_returned(sandbox, serve_config):
    serve_config(gcp_config(sandbox, service_account=None, iam_credentials_url=None, lifetime=None))
    iam_before = len(iam_calls(sandbox))
    response = sandbox.exchange(sandbox.github_token(), role=ROLE)
    assert response.status_code == 200, response.text
    creds = response.json()["credentials"]
    assert set(creds) == {"access_token", "token_type"}
    token = sandbox.gcp.describe(creds["access_token"])
    assert token is not None and token.kind == "federated"
    assert token.principal == sandbox.gcp.principal("role:gcp-deploy")
    assert token.scopes == (CLOUD_PLATFORM,)
    assert sts_calls(sandbox)[-1]["scope"] == CLOUD_PLATFORM
    assert len(iam_calls(sandbox)) == iam_before
    assert 3500 < seconds_until(response.json()["expires_at"]) <= 3600


def test_a_requested_duration_becomes_the_token_lifetime(sandbox, broker):
    response = sandbox.exchange(sandbox.github_token(), role=ROLE, duration=900)
    assert response.status_code == 200, response.text
    assert iam_calls(sandbox)[-1]["body"]["lifetime"] == "900s"
    assert 850 < seconds_until(response.json()["expires_at"]) <= 900


def test_a_duration_above_the_roles_lifetime_is_refused(sandbox, broker):
    body = assert_refused(
        sandbox.exchange(sandbox.github_token(), role=ROLE, duration=3601), 400, "invalid_request"
    )
    assert "3600" in body["message"]


def test_an_extended_lifetime_works_where_the_org_policy_allows_it(sandbox, serve_config):
    serve_config(gcp_config(sandbox, lifetime=43200, extended_lifetime=True))
    sandbox.gcp.extended_lifetime.add(GCP_SERVICE_ACCOUNT)
    try:
        response = sandbox.exchange(sandbox.github_token(), role=ROLE)
        assert response.status_code == 200, response.text
        assert iam_calls(sandbox)[-1]["body"]["lifetime"] == "43200s"
        assert 43100 < seconds_until(response.json()["expires_at"]) <= 43200
    finally:
        sandbox.gcp.extended_lifetime.discard(GCP_SERVICE_ACCOUNT)


def test_an_extended_lifetime_the_org_policy_does_not_allow_is_a_502(sandbox, serve_config):
    serve_config(gcp_config(sandbox, lifetime=7200, extended_lifetime=True))
    body = assert_refused(sandbox.exchange(sandbox.github_token(), role=ROLE), 502, "upstream_error")
    assert "IAM Credentials" in body["message"] and "INVALID_ARGUMENT" in body["message"]


# -- denied -------------------------------------------------------------------------------------


def test_a_job_no_rule_grants_never_reaches_gcp(sandbox, broker, audit_events):
    before = len(sandbox.gcp.calls)
    response = sandbox.exchange(sandbox.github_token(repository_id="1"), role=ROLE)
    assert_refused(response, 403, "access_denied")
    assert len(sandbox.gcp.calls) == before
    assert last_refusal(audit_events)["cloud"] == "gcp"


# -- upstream refusals --------------------------------------------------------------------------


def assert_gcp_refusal(
    response: requests.Response, audit_events: list[dict[str, Any]], sandbox: Sandbox, step: str, code: str
) -> dict[str, Any]:
    body = assert_refused(response, 502, "upstream_error")
    assert body["message"].startswith(f"GCP {step} refused the exchange: {code}: "), body["message"]
    assert "eyJ" not in body["message"]
    event = last_refusal(audit_events)
    assert event["error"] == "upstream_error" and code in event["reason"]
    assert not secrets_in(json.dumps(event) + response.text, sandbox.gcp.subject_tokens)
    return body


def test_an_audience_naming_another_provider_is_refused_by_sts(sandbox, serve_config, audit_events):
    other = sandbox.gcp.audience.replace("/providers/broker", "/providers/other")
    serve_config(gcp_config(sandbox, audience=other))
    response = sandbox.exchange(sandbox.github_token(), role=ROLE)
    assert_gcp_refusal(response, audit_events, sandbox, "STS", "invalid_target")


def test_a_role_outside_the_attribute_condition_is_refused_by_sts(sandbox, serve_config, audit_events):
    config = sandbox.config_dict()
    config["roles"]["gcp-untrusted"] = config["roles"].pop(ROLE)
    serve_config(config)
    response = sandbox.exchange(sandbox.github_token(), role="gcp-untrusted")
    body = assert_gcp_refusal(response, audit_events, sandbox, "STS", "unauthorized_client")
    assert "attribute condition" in body["message"]


def test_an_issuer_the_pool_does_not_trust_is_refused_by_sts(sandbox, serve_config, audit_events):
    config = sandbox.config_dict()
    config["server"]["issuer"] = sandbox.broker_url.replace("127.0.0.1", "localhost")
    config["server"]["audience"] = sandbox.broker_url
    serve_config(config)
    response = sandbox.exchange(sandbox.github_token(), role=ROLE)
    assert_gcp_refusal(response, audit_events, sandbox, "STS", "invalid_grant")


def test_a_missing_workload_identity_binding_is_refused_by_iam(sandbox, broker, audit_events):
    sandbox.gcp.unbind(GCP_SERVICE_ACCOUNT, ROLE)
    try:
        response = sandbox.exchange(sandbox.github_token(), role=ROLE)
    finally:
        sandbox.gcp.bind(GCP_SERVICE_ACCOUNT, ROLE)
    body = assert_gcp_refusal(response, audit_events, sandbox, "IAM Credentials", "PERMISSION_DENIED")
    assert "iam.serviceAccounts.getAccessToken" in body["message"]


def test_a_service_account_nobody_bound_is_refused_by_iam(sandbox, serve_config, audit_events):
    serve_config(gcp_config(sandbox, service_account="someone-else@ci-broker-demo.iam.gserviceaccount.com"))
    response = sandbox.exchange(sandbox.github_token(), role=ROLE)
    assert_gcp_refusal(response, audit_events, sandbox, "IAM Credentials", "PERMISSION_DENIED")


def test_an_sts_error_that_echoes_the_assertion_is_withheld(sandbox, broker, audit_events, debug_logs):
    logs = debug_logs()
    sandbox.gcp.echo_subject_token = True
    response = sandbox.exchange(sandbox.github_token(), role=ROLE)
    body = assert_refused(response, 502, "upstream_error")
    assert body["message"] == "GCP STS refused the exchange: (message withheld: it echoed a credential)"
    event = last_refusal(audit_events)
    assert event["reason"] == "gcp STS HTTP 400: (message withheld: it echoed a credential)"
    assert not secrets_in(response.text + json.dumps(event) + logs.text(), sandbox.gcp.subject_tokens)


def test_an_iam_error_that_echoes_the_federated_token_is_withheld(sandbox, broker, audit_events):
    sandbox.gcp.echo_bearer = True
    response = sandbox.exchange(sandbox.github_token(), role=ROLE)
    body = assert_refused(response, 502, "upstream_error")
    assert (
        body["message"]
        == "GCP IAM Credentials refused the exchange: (message withheld: it echoed a credential)"
    )
    federated = [t for t, info in sandbox.gcp._tokens.items() if info.kind == "federated"]
    assert federated
    assert not secrets_in(response.text + json.dumps(audit_events), federated)


# -- one token per grant --------------------------------------------------------------------------


def test_each_exchange_gets_its_own_token_from_its_own_assertion(sandbox, broker):
    first = sandbox.exchange(sandbox.github_token(run_id="1001"), role=ROLE)
    first_claims = sandbox.gcp.accepted[-1]
    second = sandbox.exchange(sandbox.github_token(run_id="1002"), role=ROLE)
    second_claims = sandbox.gcp.accepted[-1]
    assert first.status_code == second.status_code == 200
    assert (first_claims["run_id"], second_claims["run_id"]) == ("1001", "1002")
    assert first.json()["credentials"]["access_token"] != second.json()["credentials"]["access_token"]


def test_the_back_end_caps_the_lifetime_at_the_roles_own(sandbox, broker):
    """Defence in depth: even a grant asking for more than the role allows gets the role's lifetime."""
    from broker.clouds import Grant

    state = broker.extensions["broker"]
    grant = Grant(
        role=ROLE,
        provider="github",
        claims={},
        context={"provider": "github"},
        duration=7200,
        mint_assertion=lambda audience, extra: state.signer.mint(ROLE, audience, {}, extra),
    )
    issued = state.backends[ROLE].issue(grant)
    assert iam_calls(sandbox)[-1]["body"]["lifetime"] == "3600s"
    assert (issued.expires_at - datetime.now(UTC)).total_seconds() <= 3600


def test_private_endpoints_over_tls_are_trusted_through_ca_bundle(sandbox, serve_config):
    from broker.sandbox.wsgi import LocalServer

    with LocalServer(sandbox.gcp._wsgi, ssl_context=sandbox.azure.ca.server_context()) as tls:
        urls = {"token_url": f"{tls.url}/v1/token", "iam_credentials_url": tls.url}
        serve_config(gcp_config(sandbox, ca_bundle=str(sandbox.ca_path), **urls))
        assert sandbox.exchange(sandbox.github_token(), role=ROLE).status_code == 200
        serve_config(gcp_config(sandbox, **urls))
        body = assert_refused(sandbox.exchange(sandbox.github_token(), role=ROLE), 502, "upstream_error")
        assert body["message"] == "GCP STS could not be reached"


# -- unreliable upstreams: bounded retries, then 502 ----------------------------------------------


def test_a_429_from_sts_is_retried(sandbox, broker):
    before = len(sandbox.gcp.subject_tokens)
    sandbox.gcp.faults.status(429, times=2, path="/v1/token")
    response = sandbox.exchange(sandbox.github_token(), role=ROLE)
    assert response.status_code == 200, response.text
    assert sandbox.gcp.faults.pending == 0
    assert len(sandbox.gcp.subject_tokens) == before + 1  # the two 429s never reached the handler


def test_a_429_that_persists_is_a_502_after_three_attempts(sandbox, broker, audit_events):
    sandbox.gcp.faults.status(429, times=4, path="/v1/token")
    response = sandbox.exchange(sandbox.github_token(), role=ROLE)
    assert_gcp_refusal(response, audit_events, sandbox, "STS", "RESOURCE_EXHAUSTED")
    assert sandbox.gcp.faults.pending == 1  # one attempt and two retries, no more


def test_a_long_retry_after_is_cut_short(sandbox, broker):
    sandbox.gcp.faults.status(429, times=1, path="/v1/token", retry_after=3600)
    started = time.monotonic()
    response = sandbox.exchange(sandbox.github_token(), role=ROLE)
    assert response.status_code == 200, response.text
    assert time.monotonic() - started < 10


def test_a_503_from_iam_is_retried(sandbox, broker):
    sandbox.gcp.faults.status(503, times=2, path="/v1/projects/")
    response = sandbox.exchange(sandbox.github_token(), role=ROLE)
    assert response.status_code == 200, response.text
    assert sandbox.gcp.faults.pending == 0


@pytest.mark.faults
def test_an_sts_that_times_out_is_a_502_after_bounded_retries(
    sandbox, short_timeouts, serve_config, audit_events
):
    serve_config(sandbox.config_dict())
    sandbox.gcp.faults.stall(1.0, times=3, path="/v1/token")
    started = time.monotonic()
    response = sandbox.exchange(sandbox.github_token(), role=ROLE)
    body = assert_refused(response, 502, "upstream_error")
    assert body["message"] == "GCP STS could not be reached"
    assert sandbox.gcp.faults.pending == 0  # all three attempts were made
    assert time.monotonic() - started < 8  # three short timeouts, not the SDK defaults (minutes)
    assert last_refusal(audit_events)["reason"].startswith("gcp STS")


@pytest.mark.faults
def test_an_iam_that_times_out_is_a_502_naming_iam(sandbox, short_timeouts, serve_config):
    serve_config(sandbox.config_dict())
    sandbox.gcp.faults.stall(1.0, times=3, path="/v1/projects/")
    body = assert_refused(sandbox.exchange(sandbox.github_token(), role=ROLE), 502, "upstream_error")
    assert body["message"] == "GCP IAM Credentials could not be reached"


def test_a_connection_dropped_every_time_is_a_502_after_three_attempts(sandbox, serve_config):
    with ClosingServer() as closing:
        serve_config(gcp_config(sandbox, token_url=f"http://127.0.0.1:{closing.port}/v1/token"))
        body = assert_refused(sandbox.exchange(sandbox.github_token(), role=ROLE), 502, "upstream_error")
        assert body["message"] == "GCP STS could not be reached"
        assert closing.connections == 3


def test_a_closed_port_is_a_502(sandbox, serve_config):
    serve_config(gcp_config(sandbox, token_url="http://127.0.0.1:9/v1/token"))
    body = assert_refused(sandbox.exchange(sandbox.github_token(), role=ROLE), 502, "upstream_error")
    assert body["message"] == "GCP STS could not be reached"


# -- google-auth traps --------------------------------------------------------------------------


def test_load_credentials_from_dict_with_scopes_calls_cloud_resource_manager(
    sandbox, broker, offline, mint, tmp_path: Path
):
    """Why the back end builds identity_pool.Credentials itself: google-auth's loader, given
    scopes, exchanges a token at load time and then asks Cloud Resource Manager (on the public
    internet, whatever token_url says) for the project id, with the new token as its bearer.
    Offline, the load itself fails."""
    import google.auth
    from google.auth.exceptions import TransportError

    assertion_file = tmp_path / "assertion.jwt"
    assertion_file.write_text(mint("role:gcp-deploy", sandbox.gcp.audience))
    info = {
        "type": "external_account",
        "audience": sandbox.gcp.audience,
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "token_url": sandbox.gcp.token_url,
        "credential_source": {"file": str(assertion_file)},
    }
    exchanges = len(sts_calls(sandbox))
    with pytest.warns(DeprecationWarning), pytest.raises(TransportError):
        google.auth.load_credentials_from_dict(info, scopes=[CLOUD_PLATFORM])
    assert len(sts_calls(sandbox)) == exchanges + 1  # a token exchange just to load
    assert any(host.startswith("cloudresourcemanager.") for host in offline)


def test_an_exchange_calls_only_the_configured_endpoints(sandbox, offline, serve_config):
    serve_config(sandbox.config_dict())  # start-up itself must not call out either
    assert offline == []
    exchanges, impersonations = len(sts_calls(sandbox)), len(iam_calls(sandbox))
    assert sandbox.exchange(sandbox.github_token(), role=ROLE).status_code == 200
    assert offline == []
    assert len(sts_calls(sandbox)) == exchanges + 1
    assert len(iam_calls(sandbox)) == impersonations + 1


def test_starting_a_gcp_role_makes_no_call(sandbox, serve_config):
    before = len(sandbox.gcp.calls)
    serve_config(sandbox.config_dict())
    assert len(sandbox.gcp.calls) == before


def test_the_expiry_is_iams_expire_time_in_whole_seconds(sandbox, broker):
    response = sandbox.exchange(sandbox.github_token(), role=ROLE)
    assert response.status_code == 200, response.text
    expires_at = response.json()["expires_at"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", expires_at)
    token = sandbox.gcp.describe(response.json()["credentials"]["access_token"])
    assert token is not None
    assert expires_at == datetime.fromtimestamp(token.expires_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_an_expire_time_google_auth_cannot_parse_is_a_502_that_repeats_nothing(
    sandbox, broker, audit_events, debug_logs
):
    """google-auth parses expireTime as whole seconds only; a fractional one fails the refresh and
    its error carries the whole IAM response, access token included. None of it may surface."""
    logs = debug_logs()
    sandbox.gcp.fractional_expire_time = True
    issued_before = len(sandbox.gcp.issued)
    response = sandbox.exchange(sandbox.github_token(), role=ROLE)
    body = assert_refused(response, 502, "upstream_error")
    assert body["message"] == "GCP IAM Credentials returned an unexpected response (HTTP 200)"
    minted = sandbox.gcp.issued[issued_before:]
    assert len(minted) == 2  # the federated token and the service account token
    exposed = response.text + json.dumps(audit_events) + logs.text()
    assert not secrets_in(exposed, minted + sandbox.gcp.subject_tokens)


# -- nothing secret is written anywhere ---------------------------------------------------------


def test_no_assertion_or_token_reaches_logs_or_audit(sandbox, broker, audit_events, debug_logs):
    logs = debug_logs()
    tokens_before, assertions_before = len(sandbox.gcp.issued), len(sandbox.gcp.subject_tokens)
    granted = sandbox.exchange(sandbox.github_token(), role=ROLE)
    assert granted.status_code == 200, granted.text
    sandbox.gcp.unbind(GCP_SERVICE_ACCOUNT, ROLE)
    try:
        refused = sandbox.exchange(sandbox.github_token(), role=ROLE)
    finally:
        sandbox.gcp.bind(GCP_SERVICE_ACCOUNT, ROLE)
    assert refused.status_code == 502
    issued = sandbox.gcp.issued[tokens_before:]
    assertions = sandbox.gcp.subject_tokens[assertions_before:]
    assert len(set(issued)) == 3 and len(set(assertions)) == 2  # federated + SA token, then federated only
    text = logs.text()
    assert '"POST /v1/token' in text  # the capture did see the HTTP client's request lines
    assert not secrets_in(text + json.dumps(audit_events), issued + assertions)
    # The caller gets its own service account token and nothing else.
    assert not secrets_in(granted.text + refused.text, issued[:1] + issued[2:] + assertions)
    assert granted.json()["credentials"]["access_token"] == issued[1]


# -- configuration, caught at load --------------------------------------------------------------


def load(sandbox: Sandbox, config: dict[str, Any]) -> Any:
    return build_config(copy.deepcopy(config), base_dir=sandbox.workdir)


def config_error(sandbox: Sandbox, **changes: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        load(sandbox, gcp_config(sandbox, **changes))
    return str(caught.value)


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"audience": None}, "roles.gcp-deploy.gcp.audience: is required"),
        (
            {
                "audience": "https://iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/ci/providers/b"
            },
            "roles.gcp-deploy.gcp.audience: ",
        ),
        (
            {
                "audience": "//iam.googleapis.com/projects/my-project/locations/global/workloadIdentityPools/ci-broker/providers/broker"
            },
            "expected the provider's full resource name",
        ),
        (
            {"service_account": "deployer@my-project"},
            "roles.gcp-deploy.gcp.service_account: 'deployer@my-project' is not valid",
        ),
        ({"service_account": "deployer"}, "roles.gcp-deploy.gcp.service_account: 'deployer' is not valid"),
        ({"service_account": "deployer@evil.example.com/x?.iam.gserviceaccount.com"}, "service_account"),
        (
            {"lifetime": 7200},
            "roles.gcp-deploy.gcp.lifetime: must be at most 3600 unless extended_lifetime is true",
        ),
        (
            {"lifetime": 43201, "extended_lifetime": True},
            "roles.gcp-deploy.gcp.lifetime: must be at most 43200",
        ),
        ({"lifetime": 0}, "roles.gcp-deploy.gcp.lifetime: must be at least 1"),
        (
            {"service_account": None, "extended_lifetime": True},
            "extended_lifetime: applies only with service_account",
        ),
        (
            {"service_account": None, "lifetime": 7200},
            "lifetime: must be at most 3600 without service_account",
        ),
        (
            {"token_url": "http://sts.example.com/v1/token"},
            "roles.gcp-deploy.gcp.token_url: 'http://sts.example.com/v1/token' must use https://",
        ),
        (
            {"iam_credentials_url": "https://iamcredentials.googleapis.com/v1"},
            "iam_credentials_url: is the service's base URL",
        ),
        (
            {"scopes": ["cloud-platform"]},
            "roles.gcp-deploy.gcp.scopes[0]: 'cloud-platform' is not an OAuth scope",
        ),
        ({"scopes": []}, "roles.gcp-deploy.gcp.scopes: must be a non-empty list"),
        (
            {"ca_bundle": "/nonexistent/ca.pem"},
            "roles.gcp-deploy.gcp.ca_bundle: '/nonexistent/ca.pem' is not a readable file",
        ),
        ({"extended_lifetime": "yes"}, "roles.gcp-deploy.gcp.extended_lifetime: must be true or false"),
        ({"lifetme": 3600}, "roles.gcp-deploy.gcp.lifetme: unknown key"),
    ],
)
def test_config_errors_are_caught_at_load(sandbox, changes, expected):
    assert expected in config_error(sandbox, **changes)


def test_a_gcp_section_on_an_aws_role_is_an_error(sandbox):
    config = sandbox.config_dict()
    config["roles"]["deploy-prod"]["gcp"] = {"audience": sandbox.gcp.audience}
    with pytest.raises(ConfigError) as caught:
        load(sandbox, config)
    assert "roles.deploy-prod.gcp: does not apply to a role whose cloud is 'aws'" in str(caught.value)


def test_defaults_and_extended_lifetime_load(sandbox):
    config = load(
        sandbox, gcp_config(sandbox, scopes=None, lifetime=None, token_url=None, iam_credentials_url=None)
    )
    settings = config.roles[ROLE].settings
    assert settings.scopes == (CLOUD_PLATFORM,)
    assert settings.lifetime == 3600 and config.roles[ROLE].max_duration == 3600
    assert settings.token_url == "https://sts.googleapis.com/v1/token"
    assert settings.impersonation_url == (
        "https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/"
        f"{GCP_SERVICE_ACCOUNT}:generateAccessToken"
    )
    extended = load(sandbox, gcp_config(sandbox, lifetime=43200, extended_lifetime=True))
    assert extended.roles[ROLE].max_duration == 43200


def test_a_short_lifetime_without_a_service_account_is_a_warning(sandbox):
    config = load(sandbox, gcp_config(sandbox, service_account=None, iam_credentials_url=None, lifetime=900))
    assert config.roles[ROLE].max_duration == 900
    assert any(w.path == "roles.gcp-deploy.gcp.lifetime" for w in config.warnings)


def test_ci_broker_check_reports_a_malformed_service_account(sandbox, tmp_path: Path, capsys):
    from broker.cli import main

    path = sandbox.write_config(
        gcp_config(sandbox, service_account="deployer@my-project"), name="bad-gcp.yaml"
    )
    assert main(["check", "--config", str(path)]) == 2
    assert "roles.gcp-deploy.gcp.service_account" in capsys.readouterr().err
