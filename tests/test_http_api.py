"""The HTTP surface: malformed requests get a clear 4xx in the one JSON error shape."""

from __future__ import annotations

import requests

from tests.helpers import assert_refused


def post(
    sandbox,
    body: bytes | str,
    content_type: str | None = "application/json",
    token: str | None = "x.y.z",
    extra_headers: dict | None = None,
) -> requests.Response:
    headers = {
        **({"Content-Type": content_type} if content_type else {}),
        **({"Authorization": f"Bearer {token}"} if token else {}),
        **(extra_headers or {}),
    }
    return requests.post(f"{sandbox.broker_url}/v1/exchange", data=body, headers=headers, timeout=10)


def test_no_bearer_token_is_401(sandbox, broker):
    body = assert_refused(post(sandbox, '{"role": "deploy-prod"}', token=None), 401, "invalid_token")
    assert "Bearer" in body["message"]


def test_a_basic_auth_header_is_401(sandbox, broker):
    response = post(
        sandbox, '{"role":"deploy-prod"}', token=None, extra_headers={"Authorization": "Basic dXNlcjpwYXNz"}
    )
    assert_refused(response, 401, "invalid_token")


def test_wrong_content_type_is_415(sandbox, broker):
    assert_refused(
        post(sandbox, "role=deploy-prod", "application/x-www-form-urlencoded"), 415, "unsupported_media_type"
    )
    assert_refused(post(sandbox, '{"role":"deploy-prod"}', None), 415, "unsupported_media_type")
    assert_refused(
        post(sandbox, '{"role":"deploy-prod"}', "application/json; charset=latin-1"),
        415,
        "unsupported_media_type",
    )


def test_malformed_json_is_400(sandbox, broker):
    for body in (
        "{",
        "[]",
        '"deploy-prod"',
        "null",
        '{"role": "a", "role": "b"}',
        '{"role": NaN}',
        b"\xff\xfe",
        "[" * 2000 + "]" * 2000,
    ):
        assert_refused(post(sandbox, body), 400, "invalid_request")


def test_missing_or_ill_typed_fields_are_400(sandbox, broker):
    for body in (
        "{}",
        '{"role": 1}',
        '{"role": ""}',
        '{"role": ["a"]}',
        '{"role": "r", "duration": "60"}',
        '{"role": "r", "duration": true}',
        '{"role": "r", "duration": 0}',
        '{"role": "r", "duration": 1.5}',
        '{"role": "r", "duration": 99999999}',
        '{"role": "r", "rol": "x"}',
    ):
        assert_refused(post(sandbox, body), 400, "invalid_request")


def test_a_huge_body_is_413(sandbox, broker):
    assert_refused(post(sandbox, '{"role": "' + "a" * 100_000 + '"}'), 413, "payload_too_large")


def test_a_huge_bearer_token_is_a_json_413(sandbox, broker):
    response = post(sandbox, '{"role": "deploy-prod"}', token="a" * 20_000)
    assert_refused(response, 413, "payload_too_large")


def test_unknown_paths_and_methods_get_json_errors(sandbox, broker):
    response = requests.get(f"{sandbox.broker_url}/nope", timeout=5)
    assert response.status_code == 404 and response.json()["error"] == "not_found"
    response = requests.get(f"{sandbox.broker_url}/v1/exchange", timeout=5)
    assert response.status_code == 405 and response.json()["error"] == "method_not_allowed"


def test_the_broker_publishes_its_issuer_metadata_and_keys(sandbox, broker):
    discovery = requests.get(f"{sandbox.broker_url}/.well-known/openid-configuration", timeout=5).json()
    assert discovery["issuer"] == sandbox.broker_url
    assert discovery["jwks_uri"] == f"{sandbox.broker_url}/.well-known/jwks.json"
    assert discovery["id_token_signing_alg_values_supported"] == ["ES256"]
    keys = requests.get(discovery["jwks_uri"], timeout=5).json()["keys"]
    assert len(keys) == 1
    key = keys[0]
    assert key["alg"] == "ES256" and key["use"] == "sig" and key["kid"]
    assert "d" not in key, "the private part must never be published"


def test_all_configured_keys_are_published_and_the_first_signs(sandbox, serve_config, tmp_path):
    from broker.keys import write_private_key

    second = (
        write_private_key(sandbox.workdir / "second-rs.pem", "RS256")
        if not (sandbox.workdir / "second-rs.pem").exists()
        else None
    )
    config = sandbox.config_dict()
    config["server"]["signing_keys"] = [sandbox.key_path.name, "second-rs.pem"]
    serve_config(config)
    keys = requests.get(f"{sandbox.broker_url}/.well-known/jwks.json", timeout=5).json()["keys"]
    assert [k["alg"] for k in keys] == ["ES256", "RS256"]
    assert all("d" not in k and "p" not in k for k in keys)
    assert sandbox.exchange(sandbox.github_token()).status_code == 200
    assert sandbox.sts.accepted[-1]["iss"] == sandbox.broker_url
    del second


def test_health_and_readiness(sandbox, broker):
    assert requests.get(f"{sandbox.broker_url}/healthz", timeout=5).json() == {"status": "ok"}
    broker.extensions["broker"].caches["github"].refresh()
    broker.extensions["broker"].caches["gitlab"].refresh()
    ready = requests.get(f"{sandbox.broker_url}/readyz", timeout=5)
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


def test_not_ready_while_an_issuers_keys_were_never_fetched(sandbox, serve_config):
    config = sandbox.config_dict()
    config["providers"]["gitlab"]["jwks_uri"] = "http://127.0.0.1:9/jwks"
    serve_config(config)
    ready = requests.get(f"{sandbox.broker_url}/readyz", timeout=10)
    assert ready.status_code == 503
    assert ready.json()["providers"]["gitlab"].startswith("no keys")


def test_responses_are_not_cacheable(sandbox, broker):
    response = sandbox.exchange(sandbox.github_token())
    assert response.headers["Cache-Control"] == "no-store"


def test_every_response_carries_a_request_id_and_refusals_are_not_cacheable_either(sandbox, broker):
    for response in (sandbox.exchange(None), requests.get(f"{sandbox.broker_url}/no-such-path", timeout=5)):
        assert response.headers["Cache-Control"] == "no-store"
        assert len(response.headers["X-Request-Id"]) >= 8


def test_the_issuer_documents_keep_their_own_caching(sandbox, broker):
    # The clouds cache the broker's keys; the no-store default must not override the views' choice.
    response = requests.get(f"{sandbox.broker_url}/.well-known/jwks.json", timeout=5)
    assert response.headers["Cache-Control"] == "public, max-age=300"
    assert len(response.headers["X-Request-Id"]) >= 8


def test_a_body_shorter_than_its_content_length_is_400(broker):
    client = broker.test_client()
    response = client.post(
        "/v1/exchange",
        data=b'{"role":"deploy-prod"}',
        content_type="application/json",
        headers={"Authorization": "Bearer a.b.c"},
        environ_overrides={"CONTENT_LENGTH": "40"},
    )
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_request"


def test_a_content_length_that_is_not_a_plain_number_is_not_trusted(broker):
    client = broker.test_client()
    for declared in ("+22", "2\u00b2", " 22", "0x16", "9" * 5000):
        response = client.post(
            "/v1/exchange",
            data=b'{"role":"deploy-prod"}',
            content_type="application/json",
            headers={"Authorization": "Bearer a.b.c"},
            environ_overrides={"CONTENT_LENGTH": declared},
        )
        assert 400 <= response.status_code < 500, (declared, response.status_code)
