"""Azure roles end to end: /v1/exchange -> azure-identity -> the local Entra ID token endpoint.

The endpoint runs over https (azure-identity refuses anything else) and checks the client assertion
as Entra ID checks an application's federated identity credentials (issuer, subject, audience
api://AzureADTokenExchange, the issuer's JWKS), so a passing exchange is evidence the real service
would accept what the broker sent.
"""

from __future__ import annotations

import copy
import json
import os
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests

from broker.config import ConfigError, build_config
from broker.sandbox.faults import ClosingServer
from broker.sandbox.stack import AZURE_CLIENT_ID, AZURE_SCOPE, AZURE_SUBSCRIPTION_ID, AZURE_TENANT_ID, Sandbox
from tests.clouds.conftest import role_config, seconds_until, secrets_in
from tests.helpers import assert_refused, last_refusal

ROLE = "azure-deploy"
TOKEN_PATH = f"/{AZURE_TENANT_ID}/oauth2/v2.0/token"


def azure_config(sandbox: Sandbox, **changes: Any) -> dict[str, Any]:
    return role_config(sandbox, ROLE, "azure", **changes)


# -- granted ------------------------------------------------------------------------------------


def test_a_github_job_gets_a_working_entra_token(sandbox, broker, audit_events):
    response = sandbox.exchange(sandbox.github_token(), role=ROLE)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["role"] == ROLE and body["cloud"] == "azure"
    creds = body["credentials"]
    assert creds == {
        "access_token": creds["access_token"],
        "token_type": "Bearer",
        "tenant_id": AZURE_TENANT_ID,
        "client_id": AZURE_CLIENT_ID,
        "subscription_id": AZURE_SUBSCRIPTION_ID,
    }
    assert 3500 < seconds_until(body["expires_at"]) <= 3600
    token = sandbox.azure.describe(creds["access_token"])
    assert token is not None
    assert (token.tenant_id, token.client_id) == (AZURE_TENANT_ID, AZURE_CLIENT_ID)
    assert token.subject == "role:azure-deploy" and token.resource == "https://management.azure.com"
    assert audit_events[-1]["outcome"] == "granted" and audit_events[-1]["cloud"] == "azure"


def test_a_gitlab_job_gets_the_same_role(sandbox, broker):
    response = sandbox.exchange(sandbox.gitlab_token(), role=ROLE)
    assert response.status_code == 200, response.text
    assert sandbox.azure.accepted[-1]["provider"] == "gitlab"


def test_the_assertion_would_satisfy_a_federated_identity_credential(sandbox, broker):
    before = len(sandbox.azure.accepted)
    assert sandbox.exchange(sandbox.github_token(), role=ROLE).status_code == 200
    assert len(sandbox.azure.accepted) == before + 1
    claims = sandbox.azure.accepted[-1]
    assert claims["iss"] == sandbox.broker_url
    assert claims["aud"] == "api://AzureADTokenExchange"
    assert claims["sub"] == "role:azure-deploy"
    assert claims["exp"] - claims["iat"] <= 300


def test_one_exchange_is_one_token_request_and_nothing_else(sandbox, broker, offline):
    before = len(sandbox.azure.calls)
    assert sandbox.exchange(sandbox.github_token(), role=ROLE).status_code == 200
    assert offline == []  # no instance discovery or metadata from login.microsoftonline.com
    calls = sandbox.azure.calls[before:]
    assert calls == [
        {
            "tenant": AZURE_TENANT_ID,
            "grant_type": "client_credentials",
            "client_id": AZURE_CLIENT_ID,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "scope": AZURE_SCOPE,
        }
    ]


def test_a_requested_duration_is_accepted_but_entra_sets_the_lifetime(sandbox, broker):
    response = sandbox.exchange(sandbox.github_token(), role=ROLE, duration=900)
    assert response.status_code == 200, response.text
    assert seconds_until(response.json()["expires_at"]) > 3500


# -- the federated token, for clients that sign in themselves -----------------------------------


def test_the_federated_token_is_off_unless_the_role_enables_it(sandbox, broker):
    creds = sandbox.exchange(sandbox.github_token(), role=ROLE).json()["credentials"]
    assert "federated_token" not in creds and "authority_host" not in creds


def test_an_enabled_federated_token_is_a_short_lived_assertion_for_the_role(sandbox, serve_config):
    serve_config(azure_config(sandbox, federated_token=True))
    response = sandbox.exchange(sandbox.github_token(), role=ROLE)
    assert response.status_code == 200, response.text
    creds = response.json()["credentials"]
    assert creds["authority_host"] == sandbox.azure.url
    federated = creds["federated_token"]
    claims = jwt.decode(federated, options={"verify_signature": False})
    assert claims["iss"] == sandbox.broker_url and claims["sub"] == "role:azure-deploy"
    assert claims["aud"] == "api://AzureADTokenExchange"
    assert claims["exp"] - claims["iat"] <= 300
    # Its own jti: it is not the assertion the broker itself just presented.
    assert claims["jti"] != sandbox.azure.accepted[-1]["jti"]
    assert federated not in sandbox.azure.client_assertions


def test_the_federated_token_signs_a_client_in_with_azure_identity(sandbox, serve_config, tmp_path: Path):
    """What `az login --federated-token`, WorkloadIdentityCredential and azurerm do with it."""
    from azure.identity import WorkloadIdentityCredential

    serve_config(azure_config(sandbox, federated_token=True))
    creds = sandbox.exchange(sandbox.github_token(), role=ROLE).json()["credentials"]
    token_file = tmp_path / "federated-token"
    token_file.write_text(creds["federated_token"])
    client = WorkloadIdentityCredential(
        tenant_id=creds["tenant_id"],
        client_id=creds["client_id"],
        token_file_path=str(token_file),
        authority=creds["authority_host"],
        connection_verify=str(sandbox.ca_path),
    )
    token = client.get_token(AZURE_SCOPE)
    described = sandbox.azure.describe(token.token)
    assert described is not None and described.subject == "role:azure-deploy"


# -- denied -------------------------------------------------------------------------------------


def test_a_job_no_rule_grants_never_reaches_entra(sandbox, broker, audit_events):
    before = len(sandbox.azure.calls)
    assert_refused(sandbox.exchange(sandbox.gitlab_token(project_id="21"), role=ROLE), 403, "access_denied")
    assert len(sandbox.azure.calls) == before
    assert last_refusal(audit_events)["cloud"] == "azure"


# -- upstream refusals --------------------------------------------------------------------------


def assert_entra_refusal(
    response: requests.Response, audit_events: list[dict[str, Any]], sandbox: Sandbox, error: str, aadsts: int
) -> dict[str, Any]:
    body = assert_refused(response, 502, "upstream_error")
    assert body["message"].startswith(
        f"Microsoft Entra ID refused the exchange: {error}: AADSTS{aadsts}: "
    ), body
    assert "Trace ID" not in body["message"]  # the first line only; the rest is in the audit reason
    assert "eyJ" not in body["message"]
    event = last_refusal(audit_events)
    assert event["error"] == "upstream_error" and f"AADSTS{aadsts}" in event["reason"]
    assert "Correlation ID" in event["reason"]
    assert not secrets_in(json.dumps(event) + response.text, sandbox.azure.client_assertions)
    return body


def test_an_application_the_tenant_lacks_is_aadsts700016(sandbox, serve_config, audit_events):
    serve_config(azure_config(sandbox, client_id="99999999-9999-4999-8999-999999999999"))
    response = sandbox.exchange(sandbox.github_token(), role=ROLE)
    assert_entra_refusal(response, audit_events, sandbox, "unauthorized_client", 700016)


def test_a_role_without_a_federated_credential_is_aadsts70021(sandbox, serve_config, audit_events):
    config = sandbox.config_dict()
    config["roles"]["azure-untrusted"] = config["roles"].pop(ROLE)
    serve_config(config)
    response = sandbox.exchange(sandbox.github_token(), role="azure-untrusted")
    body = assert_entra_refusal(response, audit_events, sandbox, "invalid_client", 70021)
    assert "Assertion Subject: 'role:azure-untrusted'" in body["message"]


def test_an_issuer_the_credential_does_not_name_is_aadsts70021(sandbox, serve_config, audit_events):
    config = sandbox.config_dict()
    config["server"]["issuer"] = sandbox.broker_url.replace("127.0.0.1", "localhost")
    config["server"]["audience"] = sandbox.broker_url
    serve_config(config)
    response = sandbox.exchange(sandbox.github_token(), role=ROLE)
    assert_entra_refusal(response, audit_events, sandbox, "invalid_client", 70021)


def test_an_assertion_audience_the_credential_does_not_list_is_aadsts70021(
    sandbox, serve_config, audit_events
):
    serve_config(azure_config(sandbox, assertion_audience="api://AzureADTokenExchangeUSGov"))
    response = sandbox.exchange(sandbox.github_token(), role=ROLE)
    body = assert_entra_refusal(response, audit_events, sandbox, "invalid_client", 70021)
    assert "Assertion Audience: 'api://AzureADTokenExchangeUSGov'" in body["message"]


def test_a_sovereign_cloud_audience_works_when_the_credential_lists_it(sandbox, serve_config):
    sandbox.azure.trust_role(
        AZURE_TENANT_ID, AZURE_CLIENT_ID, "azure-gov", audience="api://AzureADTokenExchangeUSGov"
    )
    config = azure_config(sandbox, assertion_audience="api://AzureADTokenExchangeUSGov")
    config["roles"]["azure-gov"] = config["roles"].pop(ROLE)
    serve_config(config)
    assert sandbox.exchange(sandbox.github_token(), role="azure-gov").status_code == 200
    assert sandbox.azure.accepted[-1]["aud"] == "api://AzureADTokenExchangeUSGov"


def test_an_unknown_tenant_is_aadsts90002(sandbox, serve_config, audit_events):
    serve_config(azure_config(sandbox, tenant_id="12345678-1234-4234-8234-123456789012"))
    response = sandbox.exchange(sandbox.github_token(), role=ROLE)
    assert_entra_refusal(response, audit_events, sandbox, "invalid_request", 90002)


def test_a_resource_the_tenant_lacks_is_aadsts500011(sandbox, serve_config, audit_events):
    serve_config(azure_config(sandbox, scope="https://nothing.example.com/.default"))
    response = sandbox.exchange(sandbox.github_token(), role=ROLE)
    assert_entra_refusal(response, audit_events, sandbox, "invalid_resource", 500011)


def test_an_entra_error_that_echoes_the_assertion_is_withheld(sandbox, broker, audit_events, debug_logs):
    logs = debug_logs()
    sandbox.azure.echo_assertion = True
    response = sandbox.exchange(sandbox.github_token(), role=ROLE)
    body = assert_refused(response, 502, "upstream_error")
    assert (
        body["message"]
        == "Microsoft Entra ID refused the exchange: (message withheld: it echoed a credential)"
    )
    event = last_refusal(audit_events)
    assert event["reason"] == "entra HTTP 400: (message withheld: it echoed a credential)"
    # azure-identity itself logs Entra's error text when get_token fails: redacted there too.
    assert "ClientAssertionCredential.get_token failed" in logs.text()
    assert not secrets_in(response.text + json.dumps(event) + logs.text(), sandbox.azure.client_assertions)


# -- one token per grant --------------------------------------------------------------------------


def test_each_exchange_gets_its_own_token_from_its_own_assertion(sandbox, broker):
    first = sandbox.exchange(sandbox.github_token(run_id="2001"), role=ROLE)
    first_claims = sandbox.azure.accepted[-1]
    second = sandbox.exchange(sandbox.github_token(run_id="2002"), role=ROLE)
    second_claims = sandbox.azure.accepted[-1]
    assert first.status_code == second.status_code == 200
    assert (first_claims["run_id"], second_claims["run_id"]) == ("2001", "2002")
    assert first.json()["credentials"]["access_token"] != second.json()["credentials"]["access_token"]


# -- TLS ------------------------------------------------------------------------------------------


def test_an_authority_whose_certificate_is_not_trusted_is_a_502(sandbox, serve_config, tmp_path: Path):
    import trustme

    stranger = tmp_path / "stranger-ca.pem"
    stranger.write_bytes(trustme.CA().cert_pem.bytes())
    serve_config(azure_config(sandbox, ca_bundle=str(stranger)))
    before = len(sandbox.azure.calls)
    body = assert_refused(sandbox.exchange(sandbox.github_token(), role=ROLE), 502, "upstream_error")
    assert body["message"] == "Microsoft Entra ID could not be reached"
    assert len(sandbox.azure.calls) == before  # the assertion never left the broker


def test_without_ca_bundle_the_system_trust_store_applies(sandbox, serve_config):
    serve_config(azure_config(sandbox, ca_bundle=None))
    body = assert_refused(sandbox.exchange(sandbox.github_token(), role=ROLE), 502, "upstream_error")
    assert body["message"] == "Microsoft Entra ID could not be reached"


def test_a_ca_added_to_the_environments_bundle_is_trusted_too(
    sandbox, serve_config, monkeypatch, tmp_path: Path
):
    """The other way to trust a private CA: REQUESTS_CA_BUNDLE naming system CAs plus the test CA."""
    system = Path(os.environ.get("REQUESTS_CA_BUNDLE") or "/etc/ssl/certs/ca-certificates.crt")
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes((system.read_bytes() if system.is_file() else b"") + sandbox.ca_path.read_bytes())
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    serve_config(azure_config(sandbox, ca_bundle=None))
    assert sandbox.exchange(sandbox.github_token(), role=ROLE).status_code == 200


# -- unreliable upstreams: bounded retries, then 502 ----------------------------------------------


def test_a_429_from_entra_is_retried(sandbox, broker):
    before = len(sandbox.azure.calls)
    sandbox.azure.faults.status(429, times=2, path=TOKEN_PATH)
    assert sandbox.exchange(sandbox.github_token(), role=ROLE).status_code == 200
    assert sandbox.azure.faults.pending == 0
    assert len(sandbox.azure.calls) == before + 1


def test_a_429_that_persists_is_a_502_after_three_attempts(sandbox, broker, audit_events):
    sandbox.azure.faults.status(429, times=4, path=TOKEN_PATH)
    response = sandbox.exchange(sandbox.github_token(), role=ROLE)
    assert_entra_refusal(response, audit_events, sandbox, "temporarily_unavailable", 50196)
    assert sandbox.azure.faults.pending == 1


def test_a_long_retry_after_is_cut_short(sandbox, broker):
    sandbox.azure.faults.status(429, times=1, path=TOKEN_PATH, retry_after=3600)
    started = time.monotonic()
    assert sandbox.exchange(sandbox.github_token(), role=ROLE).status_code == 200
    assert time.monotonic() - started < 10


def test_a_503_from_entra_is_retried(sandbox, broker):
    sandbox.azure.faults.status(503, times=2, path=TOKEN_PATH)
    assert sandbox.exchange(sandbox.github_token(), role=ROLE).status_code == 200


@pytest.mark.faults
def test_an_entra_that_times_out_is_a_502_after_bounded_retries(
    sandbox, short_timeouts, serve_config, audit_events
):
    serve_config(sandbox.config_dict())
    sandbox.azure.faults.stall(1.0, times=3, path=TOKEN_PATH)
    started = time.monotonic()
    body = assert_refused(sandbox.exchange(sandbox.github_token(), role=ROLE), 502, "upstream_error")
    assert body["message"] == "Microsoft Entra ID could not be reached"
    assert sandbox.azure.faults.pending == 0
    assert time.monotonic() - started < 8  # three short timeouts, not the SDK defaults (minutes)
    assert last_refusal(audit_events)["reason"].startswith("entra ")


def test_a_connection_dropped_every_time_is_a_502_after_three_attempts(sandbox, serve_config):
    with ClosingServer() as closing:
        serve_config(azure_config(sandbox, authority_host=f"https://127.0.0.1:{closing.port}"))
        body = assert_refused(sandbox.exchange(sandbox.github_token(), role=ROLE), 502, "upstream_error")
        assert body["message"] == "Microsoft Entra ID could not be reached"
        assert closing.connections == 3


def test_a_closed_port_is_a_502(sandbox, serve_config):
    serve_config(azure_config(sandbox, authority_host="https://127.0.0.1:9"))
    body = assert_refused(sandbox.exchange(sandbox.github_token(), role=ROLE), 502, "upstream_error")
    assert body["message"] == "Microsoft Entra ID could not be reached"


# -- nothing secret is written anywhere ---------------------------------------------------------


def test_no_assertion_or_token_reaches_logs_or_audit(sandbox, serve_config, audit_events, debug_logs):
    serve_config(azure_config(sandbox, federated_token=True))
    logs = debug_logs()
    tokens_before, assertions_before = len(sandbox.azure.issued), len(sandbox.azure.client_assertions)
    granted = sandbox.exchange(sandbox.github_token(), role=ROLE)
    assert granted.status_code == 200, granted.text
    config = azure_config(sandbox)
    config["roles"]["azure-untrusted"] = config["roles"].pop(ROLE)
    serve_config(config)
    refused = sandbox.exchange(sandbox.github_token(), role="azure-untrusted")
    assert refused.status_code == 502
    issued = sandbox.azure.issued[tokens_before:]
    assertions = sandbox.azure.client_assertions[assertions_before:]
    federated = granted.json()["credentials"]["federated_token"]
    # At least one token and two assertions (a slow machine may make the SDK retry once).
    assert issued and len(set(assertions)) >= 2
    text = logs.text()
    assert "oauth2/v2.0/token" in text, text[-2000:]  # the capture did see the SDK's request lines
    assert not secrets_in(text + json.dumps(audit_events), issued + assertions + [federated])
    assert not secrets_in(granted.text + refused.text, assertions)


# -- configuration, caught at load --------------------------------------------------------------


def config_error(sandbox: Sandbox, **changes: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        build_config(copy.deepcopy(azure_config(sandbox, **changes)), base_dir=sandbox.workdir)
    return str(caught.value)


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"tenant_id": None}, "roles.azure-deploy.azure.tenant_id: is required"),
        ({"tenant_id": "common"}, "roles.azure-deploy.azure.tenant_id: must name one tenant"),
        ({"tenant_id": "not a tenant"}, "roles.azure-deploy.azure.tenant_id: 'not a tenant' is not valid"),
        ({"client_id": None}, "roles.azure-deploy.azure.client_id: is required"),
        ({"client_id": "my-app"}, "roles.azure-deploy.azure.client_id: 'my-app' is not valid"),
        ({"scope": None}, "roles.azure-deploy.azure.scope: is required"),
        (
            {"scope": "https://management.azure.com/user_impersonation"},
            "expected a resource's .default scope",
        ),
        ({"subscription_id": "prod"}, "roles.azure-deploy.azure.subscription_id: 'prod' is not valid"),
        (
            {"authority_host": "http://login.microsoftonline.com"},
            "authority_host: 'http://login.microsoftonline.com' must use https://",
        ),
        (
            {"authority_host": "http://127.0.0.1:8443"},
            "authority_host: must use https:// (azure-identity refuses any other scheme, even for loopback",
        ),
        (
            {"authority_host": "https://login.microsoftonline.com/my-tenant"},
            "authority_host: is the host only",
        ),
        ({"federated_token": "yes"}, "roles.azure-deploy.azure.federated_token: must be true or false"),
        (
            {"ca_bundle": "/nonexistent/ca.pem"},
            "roles.azure-deploy.azure.ca_bundle: '/nonexistent/ca.pem' is not a readable file",
        ),
        ({"duration": 3600}, "roles.azure-deploy.azure.duration: unknown key"),
    ],
)
def test_config_errors_are_caught_at_load(sandbox, changes, expected):
    assert expected in config_error(sandbox, **changes)


def test_defaults_load(sandbox):
    config = build_config(
        azure_config(sandbox, authority_host=None, subscription_id=None, ca_bundle=None),
        base_dir=sandbox.workdir,
    )
    settings = config.roles[ROLE].settings
    assert settings.authority_host == "https://login.microsoftonline.com"
    assert settings.assertion_audience == "api://AzureADTokenExchange"
    assert settings.federated_token is False and settings.subscription_id is None
    assert config.roles[ROLE].max_duration is None


def test_a_verified_domain_is_a_valid_tenant(sandbox):
    config = build_config(
        azure_config(sandbox, tenant_id="contoso.onmicrosoft.com"), base_dir=sandbox.workdir
    )
    assert config.roles[ROLE].settings.tenant_id == "contoso.onmicrosoft.com"


def test_ci_broker_check_reports_an_http_authority(sandbox, capsys):
    from broker.cli import main

    path = sandbox.write_config(
        azure_config(sandbox, authority_host="http://127.0.0.1:8443"), name="bad-azure.yaml"
    )
    assert main(["check", "--config", str(path)]) == 2
    assert "roles.azure-deploy.azure.authority_host" in capsys.readouterr().err
