"""The local GCP and Entra ID endpoints refuse what the real services would refuse.

A stand-in that accepted anything would make every end-to-end test meaningless, so each check the
endpoints make (the ones a workload identity pool, IAM and a federated identity credential make)
has a test here that talks to the endpoint directly, with hand-made assertions.
"""

from __future__ import annotations

import re
import ssl
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec

from broker.sandbox.stack import AZURE_CLIENT_ID, AZURE_SCOPE, AZURE_TENANT_ID, GCP_SERVICE_ACCOUNT, Sandbox

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
IAM = "https://www.googleapis.com/auth/iam"
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
FIC_AUDIENCE = "api://AzureADTokenExchange"


# -- GCP STS ------------------------------------------------------------------------------------


def sts(sandbox: Sandbox, subject_token: str, **fields: str) -> requests.Response:
    form = {
        "grant_type": TOKEN_EXCHANGE,
        "audience": sandbox.gcp.audience,
        "scope": IAM,
        "requested_token_type": ACCESS_TOKEN,
        "subject_token_type": JWT_TYPE,
        "subject_token": subject_token,
        **fields,
    }
    return requests.post(sandbox.gcp.token_url, data=form, timeout=10)


def sts_error(response: requests.Response) -> tuple[str, str]:
    assert response.status_code == 400, response.text
    body = response.json()
    assert set(body) == {"error", "error_description"}
    return body["error"], body["error_description"]


def test_sts_accepts_the_broker_assertion_for_a_trusted_role(sandbox, mint):
    response = sts(sandbox, mint("role:gcp-deploy", sandbox.gcp.audience))
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"access_token", "issued_token_type", "token_type", "expires_in"}
    assert body["issued_token_type"] == ACCESS_TOKEN and body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600


def test_sts_refuses_an_assertion_for_another_audience(sandbox, mint):
    error, description = sts_error(sts(sandbox, mint("role:gcp-deploy", "sts.amazonaws.com")))
    assert error == "invalid_grant" and "audience" in description


def test_sts_refuses_a_subject_outside_the_attribute_condition(sandbox, mint):
    error, description = sts_error(sts(sandbox, mint("role:deploy-prod", sandbox.gcp.audience)))
    assert error == "unauthorized_client" and "attribute condition" in description


def test_sts_refuses_a_forged_signature(sandbox, mint):
    forged = mint(
        "role:gcp-deploy", sandbox.gcp.audience, key_override=ec.generate_private_key(ec.SECP256R1())
    )
    error, description = sts_error(sts(sandbox, forged))
    assert error == "invalid_grant" and "verification failed" in description


def test_sts_refuses_an_expired_assertion(sandbox, mint):
    error, _ = sts_error(sts(sandbox, mint("role:gcp-deploy", sandbox.gcp.audience, lifetime=-120)))
    assert error == "invalid_grant"


def test_sts_refuses_another_issuer(sandbox, mint):
    other = sandbox.broker_url.replace("127.0.0.1", "localhost")
    error, description = sts_error(sts(sandbox, mint("role:gcp-deploy", sandbox.gcp.audience, iss=other)))
    assert error == "invalid_grant" and "issuer" in description


def test_sts_refuses_a_provider_that_does_not_exist(sandbox, mint):
    other = sandbox.gcp.audience.replace("/providers/broker", "/providers/other")
    error, _ = sts_error(sts(sandbox, mint("role:gcp-deploy", other), audience=other))
    assert error == "invalid_target"


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("grant_type", "client_credentials", "unsupported_grant_type"),
        ("subject_token_type", "urn:ietf:params:oauth:token-type:saml2", "invalid_request"),
        ("requested_token_type", "urn:ietf:params:oauth:token-type:id_token", "invalid_request"),
        ("scope", "https://www.googleapis.com/auth/devstorage.full_control", "invalid_scope"),
    ],
)
def test_sts_refuses_malformed_requests(sandbox, mint, field, value, expected):
    error, _ = sts_error(sts(sandbox, mint("role:gcp-deploy", sandbox.gcp.audience), **{field: value}))
    assert error == expected


def test_sts_refuses_a_subject_token_that_is_not_a_jwt(sandbox, broker):
    error, _ = sts_error(sts(sandbox, "not-a-jwt"))
    assert error == "invalid_grant"


# -- GCP IAM Credentials -------------------------------------------------------------------------


def federated_token(sandbox: Sandbox, mint: Any, role: str = "gcp-deploy", scope: str = IAM) -> str:
    response = sts(sandbox, mint(f"role:{role}", sandbox.gcp.audience), scope=scope)
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


def generate(
    sandbox: Sandbox,
    bearer: str | None,
    *,
    service_account: str = GCP_SERVICE_ACCOUNT,
    project: str = "-",
    **body: Any,
) -> requests.Response:
    headers = {"Authorization": f"Bearer {bearer}"} if bearer is not None else {}
    url = f"{sandbox.gcp.url}/v1/projects/{project}/serviceAccounts/{service_account}:generateAccessToken"
    return requests.post(url, json={"scope": [CLOUD_PLATFORM], **body}, headers=headers, timeout=10)


def google_error(response: requests.Response, code: int) -> dict[str, Any]:
    assert response.status_code == code, response.text
    error = response.json()["error"]
    assert error["code"] == code and {"message", "status"} <= set(error)
    return error


def test_iam_issues_a_token_with_a_whole_second_expire_time(sandbox, mint):
    response = generate(sandbox, federated_token(sandbox, mint), lifetime="1200s")
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"accessToken", "expireTime"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", body["expireTime"])


def test_iam_refuses_a_missing_bearer(sandbox, broker):
    assert google_error(generate(sandbox, None), 401)["status"] == "UNAUTHENTICATED"


def test_iam_refuses_a_bearer_it_never_issued(sandbox, broker):
    assert google_error(generate(sandbox, "ya29.made-up"), 401)["status"] == "UNAUTHENTICATED"


def test_iam_refuses_a_service_account_token_as_the_bearer(sandbox, mint):
    sa_token = generate(sandbox, federated_token(sandbox, mint)).json()["accessToken"]
    assert google_error(generate(sandbox, sa_token), 401)["status"] == "UNAUTHENTICATED"


def test_iam_refuses_a_principal_without_the_binding(sandbox, mint):
    sandbox.gcp.trust_role("gcp-unbound")
    try:
        token = federated_token(sandbox, mint, role="gcp-unbound")
    finally:
        sandbox.gcp.trust.subjects.discard("role:gcp-unbound")
    error = google_error(generate(sandbox, token), 403)
    assert error["status"] == "PERMISSION_DENIED"
    assert error["details"][0]["reason"] == "IAM_PERMISSION_DENIED"


def test_iam_refuses_a_token_without_an_iam_scope(sandbox, mint, monkeypatch):
    monkeypatch.setattr("broker.sandbox.gcp.STS_SCOPES", frozenset({IAM, CLOUD_PLATFORM, "openid"}))
    token = federated_token(sandbox, mint, scope="openid")
    error = google_error(generate(sandbox, token), 403)
    assert error["details"][0]["reason"] == "ACCESS_TOKEN_SCOPE_INSUFFICIENT"


def test_iam_requires_the_project_wildcard(sandbox, mint):
    assert google_error(generate(sandbox, federated_token(sandbox, mint), project="my-project"), 400)


def test_iam_refuses_more_than_an_hour_unless_the_org_policy_lists_the_account(sandbox, mint):
    token = federated_token(sandbox, mint)
    assert google_error(generate(sandbox, token, lifetime="7200s"), 400)["status"] == "INVALID_ARGUMENT"
    sandbox.gcp.extended_lifetime.add(GCP_SERVICE_ACCOUNT)
    try:
        assert generate(sandbox, token, lifetime="7200s").status_code == 200
        assert google_error(generate(sandbox, token, lifetime="43201s"), 400)
    finally:
        sandbox.gcp.extended_lifetime.discard(GCP_SERVICE_ACCOUNT)


# -- Entra ID token endpoint -------------------------------------------------------------------


def entra(
    sandbox: Sandbox, assertion: str, *, tenant: str = AZURE_TENANT_ID, **fields: str
) -> requests.Response:
    form = {
        "grant_type": "client_credentials",
        "client_id": AZURE_CLIENT_ID,
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion,
        "scope": AZURE_SCOPE,
        **fields,
    }
    return requests.post(
        f"{sandbox.azure.url}/{tenant}/oauth2/v2.0/token", data=form, verify=str(sandbox.ca_path), timeout=10
    )


def aadsts(response: requests.Response) -> int:
    assert response.status_code == 400, response.text
    body = response.json()
    assert {"error", "error_description", "error_codes", "trace_id", "correlation_id"} <= set(body)
    code = body["error_codes"][0]
    assert body["error_description"].startswith(f"AADSTS{code}: ")
    return code


def test_entra_accepts_the_broker_assertion_for_a_trusted_role(sandbox, mint):
    response = entra(sandbox, mint("role:azure-deploy", FIC_AUDIENCE))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3599 and body["access_token"]


def test_entra_serves_https_only(sandbox, broker):
    with pytest.raises(requests.ConnectionError):
        requests.post(sandbox.azure.url.replace("https://", "http://") + "/x/oauth2/v2.0/token", timeout=5)


def test_entra_certificate_is_valid_only_with_the_sandbox_ca(sandbox, broker):
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(
            f"{sandbox.azure.url}/common/discovery/instance",
            verify=ssl.get_default_verify_paths().cafile or True,
            timeout=5,
        )


def test_entra_refuses_an_unknown_tenant(sandbox, mint):
    assert aadsts(entra(sandbox, mint("role:azure-deploy", FIC_AUDIENCE), tenant="contoso.example")) == 90002


def test_entra_refuses_an_application_the_tenant_lacks(sandbox, mint):
    response = entra(
        sandbox, mint("role:azure-deploy", FIC_AUDIENCE), client_id="99999999-9999-4999-8999-999999999999"
    )
    assert aadsts(response) == 700016


def test_entra_refuses_a_subject_no_credential_names(sandbox, mint):
    assert aadsts(entra(sandbox, mint("role:deploy-prod", FIC_AUDIENCE))) == 70021


def test_entra_refuses_an_audience_no_credential_lists(sandbox, mint):
    assert aadsts(entra(sandbox, mint("role:azure-deploy", "sts.amazonaws.com"))) == 70021


def test_entra_refuses_an_issuer_no_credential_names(sandbox, mint):
    other = sandbox.broker_url.replace("127.0.0.1", "localhost")
    assert aadsts(entra(sandbox, mint("role:azure-deploy", FIC_AUDIENCE, iss=other))) == 70021


def test_entra_refuses_a_forged_signature(sandbox, mint):
    forged = mint("role:azure-deploy", FIC_AUDIENCE, key_override=ec.generate_private_key(ec.SECP256R1()))
    assert aadsts(entra(sandbox, forged)) == 700027


def test_entra_refuses_an_expired_assertion(sandbox, mint):
    assert aadsts(entra(sandbox, mint("role:azure-deploy", FIC_AUDIENCE, lifetime=-120))) == 700024


def test_entra_refuses_an_assertion_that_is_not_a_jwt(sandbox, broker):
    assert aadsts(entra(sandbox, "not-a-jwt")) == 50027


@pytest.mark.parametrize(
    "fields, code",
    [
        ({"scope": "https://management.azure.com/user_impersonation"}, 1002012),
        ({"scope": "https://nothing.example.com/.default"}, 500011),
        ({"grant_type": "password"}, 70003),
        ({"client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:saml2-bearer"}, 90014),
    ],
)
def test_entra_refuses_malformed_requests(sandbox, mint, fields, code):
    assert aadsts(entra(sandbox, mint("role:azure-deploy", FIC_AUDIENCE), **fields)) == code


def test_entra_serves_the_metadata_msal_clients_fetch(sandbox, broker):
    verify = str(sandbox.ca_path)
    discovery = requests.get(
        f"{sandbox.azure.url}/common/discovery/instance", verify=verify, timeout=5
    ).json()
    assert discovery["tenant_discovery_endpoint"].endswith("/{tenant}/v2.0/.well-known/openid-configuration")
    metadata = requests.get(
        f"{sandbox.azure.url}/{AZURE_TENANT_ID}/v2.0/.well-known/openid-configuration",
        verify=verify,
        timeout=5,
    ).json()
    assert metadata["token_endpoint"] == f"{sandbox.azure.url}/{AZURE_TENANT_ID}/oauth2/v2.0/token"
