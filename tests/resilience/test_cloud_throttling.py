"""Cloud throttling and transient failures: retried with bounded backoff, then 502.

AWS: the STS client runs botocore's `standard` retry mode (jittered exponential backoff and a
client-side retry quota). A local STS answers `Throttling` (what STS sends when an
account's request rate is exceeded) or a 5xx before letting calls through to the sandbox's STS.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs

import pytest
from werkzeug.wrappers import Request, Response

from broker.clouds._http import DEFAULT_POLICY
from broker.sandbox.aws import ERROR_XML
from broker.sandbox.wsgi import LocalServer
from tests.helpers import assert_refused, last_refusal

# broker.clouds.aws allows DEFAULT_POLICY.retries + 1 attempts in all (botocore's
# total_max_attempts), the same bound as the GCP and Azure calls.
ATTEMPTS = DEFAULT_POLICY.retries + 1


class ThrottlingSTS:
    """Refuses the first `failures` AssumeRoleWithWebIdentity calls, then passes them on."""

    def __init__(self, sandbox: Any) -> None:
        self.sandbox = sandbox
        self.failures = 0
        self.status, self.code = 400, "Throttling"
        self.attempts = 0
        self._lock = threading.Lock()
        self.server = LocalServer(self._wsgi)

    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        body = request.get_data(cache=True)
        action = parse_qs(body.decode()).get("Action", [""])[0]
        if action == "AssumeRoleWithWebIdentity":
            with self._lock:
                self.attempts += 1
                refuse = self.attempts <= self.failures
            if refuse:
                xml = ERROR_XML.format(code=self.code, message="Rate exceeded")
                return Response(xml, status=self.status, mimetype="text/xml")(environ, start_response)
        from io import BytesIO

        environ["wsgi.input"] = BytesIO(body)
        return self.sandbox.sts._wsgi(environ, start_response)


@pytest.fixture
def throttling(sandbox: Any, serve_config: Any) -> Iterator[ThrottlingSTS]:
    sts = ThrottlingSTS(sandbox)
    sts.server.start()
    config = sandbox.config_dict()
    config["roles"]["deploy-prod"]["aws"]["sts_endpoint"] = sts.server.url
    serve_config(config)
    yield sts
    sts.server.stop()


def test_throttling_is_retried_and_then_succeeds(sandbox, throttling):
    throttling.failures = ATTEMPTS - 1
    response = sandbox.exchange(sandbox.github_token())
    assert response.status_code == 200, response.text
    assert throttling.attempts == ATTEMPTS


def test_throttling_that_persists_is_a_502_after_bounded_retries(sandbox, throttling, audit_events):
    throttling.failures = 100
    start = time.monotonic()
    response = sandbox.exchange(sandbox.github_token())
    elapsed = time.monotonic() - start
    assert_refused(response, 502, "upstream_error")
    assert "Throttling" in response.json()["message"]
    assert throttling.attempts == ATTEMPTS
    assert elapsed < 15, f"retries took {elapsed:.1f}s"
    assert "sts Throttling" in last_refusal(audit_events)["reason"]


@pytest.mark.parametrize("status,code", [(500, "InternalFailure"), (503, "ServiceUnavailable")])
def test_sts_server_errors_are_retried_too(sandbox, throttling, status, code):
    throttling.failures, throttling.status, throttling.code = ATTEMPTS - 1, status, code
    assert sandbox.exchange(sandbox.github_token()).status_code == 200
    assert throttling.attempts == ATTEMPTS


def test_a_refusal_that_is_not_transient_is_not_retried(sandbox, throttling):
    throttling.failures, throttling.code = 100, "AccessDenied"
    assert_refused(sandbox.exchange(sandbox.github_token()), 502, "upstream_error")
    assert throttling.attempts == 1
