"""Request limits: body, headers, token length, JSON nesting. Each is a 4xx, and none of them lets
the request reach a key fetch or a signature check.

Limits (docs/security.md): body 4 KiB; bearer token 16,384 characters (AWS accepts web identity
tokens up to 20,000; GitHub and GitLab tokens are 1-3 KB); gunicorn: request line 8,190 bytes,
100 header fields, each at most 32 KiB; JSON nesting is bounded by the body and token sizes and by
the parser's recursion limit, whose error is a clean 400/401.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from broker.app import MAX_BODY_BYTES
from broker.sandbox.issuer import b64url
from broker.sandbox.stack import Sandbox
from broker.verify import MAX_TOKEN_CHARS
from tests.helpers import assert_refused
from tests.serving import ServedBroker


@pytest.fixture
def no_crypto(broker: Any, monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts signature checks and key lookups; a limit must trip before either."""
    import broker.verify as verify

    counts = {"verify": 0, "key": 0}
    real_algorithm = verify.jwt.get_algorithm_by_name

    def counted_algorithm(name: str) -> Any:
        counts["verify"] += 1
        return real_algorithm(name)

    monkeypatch.setattr(verify.jwt, "get_algorithm_by_name", counted_algorithm)
    for cache in broker.extensions["broker"].caches.values():
        real_get = cache.get

        def counted_get(kid: str, alg: str, _real: Any = real_get) -> Any:
            counts["key"] += 1
            return _real(kid, alg)

        monkeypatch.setattr(cache, "get", counted_get)
    return counts


def post(
    url: str,
    *,
    token: str | None = "x.y.z",
    body: bytes | str | None = None,
    headers: dict[str, str] | None = None,
) -> requests.Response:
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    if token is not None:
        all_headers["Authorization"] = f"Bearer {token}"
    data = body if body is not None else json.dumps({"role": "deploy-prod"})
    return requests.post(f"{url}/v1/exchange", data=data, headers=all_headers, timeout=30)


def test_a_body_over_the_limit_is_413_also_when_chunked(sandbox, no_crypto):
    big = json.dumps({"role": "deploy-prod", "pad": "x" * MAX_BODY_BYTES}).encode()
    assert_refused(post(sandbox.broker_url, token=sandbox.github_token(), body=big), 413, "payload_too_large")
    chunks = iter([big[i : i + 512] for i in range(0, len(big), 512)])
    # A generator body goes out with Transfer-Encoding: chunked and no Content-Length.
    assert_refused(
        post(sandbox.broker_url, token=sandbox.github_token(), body=chunks),  # type: ignore[arg-type]
        413,
        "payload_too_large",
    )
    assert no_crypto == {"verify": 0, "key": 0}


@pytest.mark.parametrize("length", [MAX_TOKEN_CHARS + 1, 20_000, 60_000])
def test_a_token_over_the_cap_is_413(sandbox, no_crypto, length):
    assert_refused(post(sandbox.broker_url, token="a" * length), 413, "payload_too_large")
    assert no_crypto == {"verify": 0, "key": 0}


def test_a_token_at_the_cap_is_parsed_not_refused_for_size(sandbox, no_crypto):
    header = b64url(json.dumps({"alg": "RS256", "kid": "k"}).encode())
    token = f"{header}.{'A' * (MAX_TOKEN_CHARS - len(header) - 3)}.A"
    assert len(token) <= MAX_TOKEN_CHARS
    assert_refused(post(sandbox.broker_url, token=token), 401, "invalid_token")
    assert no_crypto == {"verify": 0, "key": 0}


@pytest.mark.parametrize("depth", [100, 1500, MAX_BODY_BYTES // 2 - 20])
def test_deeply_nested_json_bodies_are_400(sandbox, no_crypto, depth):
    body = '{"role": ' + "[" * depth + "]" * depth + "}"
    assert_refused(post(sandbox.broker_url, body=body[:MAX_BODY_BYTES]), 400, "invalid_request")
    assert no_crypto == {"verify": 0, "key": 0}


@pytest.mark.parametrize("depth", [50, 1200, 5000])
def test_deeply_nested_token_payloads_are_401_before_any_crypto(sandbox, no_crypto, depth):
    header = b64url(json.dumps({"alg": "RS256", "kid": sandbox.github.key.kid}).encode())
    payload = b64url(('{"iss": ' + "[" * depth + "]" * depth + "}").encode())
    token = f"{header}.{payload}.{b64url(b'sig')}"
    assert len(token) <= MAX_TOKEN_CHARS
    assert_refused(post(sandbox.broker_url, token=token), 401, "invalid_token")
    assert no_crypto == {"verify": 0, "key": 0}


# -- through gunicorn: limits the WSGI app never sees ---------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Sandbox, ServedBroker]]:
    workdir = tmp_path_factory.mktemp("limits")
    with Sandbox(workdir) as box:
        server = ServedBroker(box.write_config(), f"127.0.0.1:{box.broker_port}", workdir / "serve.log")
        try:
            yield box, server.wait_ready()
        finally:
            server.stop()


def raw_request(url: str, data: bytes) -> tuple[int, bytes]:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(data)
        response = b""
        while chunk := s.recv(65536):
            response += chunk
    status = int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/") else 0
    return status, response


def test_too_many_header_fields_are_4xx(served):
    box, _ = served
    headers = {f"X-Pad-{i}": "x" for i in range(150)}
    response = post(box.broker_url, token=box.github_token(), headers=headers)
    assert 400 <= response.status_code < 500


def test_an_oversized_header_field_is_4xx(served):
    box, _ = served
    response = post(box.broker_url, token=box.github_token(), headers={"X-Pad": "x" * 70_000})
    assert 400 <= response.status_code < 500


def test_an_oversized_request_line_is_4xx(served):
    box, _ = served
    response = requests.post(f"{box.broker_url}/v1/exchange?{'a' * 9000}", timeout=10)
    assert 400 <= response.status_code < 500


def test_a_token_over_the_cap_through_gunicorn_is_our_413(served):
    box, _ = served
    assert_refused(post(box.broker_url, token="a" * (MAX_TOKEN_CHARS + 1)), 413, "payload_too_large")


def test_a_chunked_oversized_body_through_gunicorn_is_413(served):
    box, _ = served
    body = json.dumps({"role": "deploy-prod", "pad": "x" * (4 * MAX_BODY_BYTES)}).encode()
    head = (
        f"POST /v1/exchange HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {box.github_token()}\r\nTransfer-Encoding: chunked\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    chunked = b"".join(
        b"%x\r\n%s\r\n" % (len(body[i : i + 1000]), body[i : i + 1000]) for i in range(0, len(body), 1000)
    )
    status, response = raw_request(box.broker_url, head + chunked + b"0\r\n\r\n")
    assert status == 413, response[:300]


@pytest.mark.parametrize(
    "data",
    [
        b"GARBAGE\r\n\r\n",
        b"POST /v1/exchange HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"POST /v1/exchange HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /v1/exchange HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST /v1/exchange HTTP/1.1\r\nHost: x\r\nX-Bad\x00Name: y\r\n\r\n",
        b"POST /v1/exchange HTTP/9.9\r\nHost: x\r\n\r\n",
    ],
)
def test_malformed_http_is_4xx_and_the_server_lives_on(served, data):
    box, server = served
    status, response = raw_request(box.broker_url, data)
    assert 400 <= status < 500 or status == 0, response[:300]  # 0: the server closed the connection
    assert server.proc.poll() is None
    assert requests.get(f"{box.broker_url}/healthz", timeout=5).status_code == 200


def test_no_request_limit_reaches_a_500(served):
    box, server = served
    assert "Traceback" not in server.output()
    assert "internal_error" not in server.output()


@pytest.mark.parametrize(
    "body",
    [
        b'5\r\n{"rol\r\nzz\r\n',  # a chunk size that is not hex
        b'5\r\n{"role\r\n0\r\n\r\n',  # a chunk longer than its size says
        b"ffffffffffffffffff\r\n",  # a size no body could have
    ],
)
def test_a_refused_request_with_a_malformed_body_gets_one_answer_and_the_connection_closes(served, body):
    # The connection must not carry a second, unrequested answer for bytes nobody asked about:
    # a client reading a keep-alive connection would take it for the answer to its next request.
    box, _ = served
    head = (
        b"POST /v1/exchange HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    status, response = raw_request(box.broker_url, head + body)  # reads until the server closes
    assert 400 <= status < 500, response[:300]
    assert response.count(b"HTTP/1.1 ") == 1, response[:600]
