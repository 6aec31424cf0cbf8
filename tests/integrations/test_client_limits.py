"""The shared client's cap on each credential value (issue 19, item 8), under every shell.

A value larger than any cloud issues (here a 900 KB session token) would be exported and then
break the job's next command with "Argument list too long". The client refuses it by its size,
names the field and the limit, exports nothing and never prints the value.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from clientrun import FLAVORS, Flavor, run_github, run_gitlab
from endpoints import OIDCRequestEndpoint, ScriptedBroker
from support import AWS, AZURE, CLIENT, assert_no_secret, jwt_for

FLAVOR_IDS = [f.name for f in FLAVORS]
LIMIT = int(re.search(r"^_cib_value_limit=(\d+)$", CLIENT.read_text(), re.MULTILINE).group(1))


@pytest.fixture
def oidc() -> OIDCRequestEndpoint:
    with OIDCRequestEndpoint(jwt_for) as endpoint:
        yield endpoint


def github_env(broker: str, oidc: OIDCRequestEndpoint) -> dict[str, str]:
    return {
        "CI_BROKER_URL": broker,
        "CI_BROKER_ROLE": "deploy",
        "ACTIONS_ID_TOKEN_REQUEST_URL": oidc.request_url,
        "ACTIONS_ID_TOKEN_REQUEST_TOKEN": oidc.request_token,
    }


def gitlab_env(broker: str) -> dict[str, str]:
    return {"CI_BROKER_URL": broker, "CI_BROKER_ROLE": "deploy", "CI_BROKER_ID_TOKEN": jwt_for(broker)}


def test_the_limit_is_16_kib():
    assert LIMIT == 16 * 1024


@pytest.mark.parametrize("flavor", FLAVORS, ids=FLAVOR_IDS)
def test_github_refuses_an_oversized_session_token_without_showing_it(tmp_path: Path, oidc, flavor: Flavor):
    huge = "IQoJb3JpZ2luX2Vj" + "A" * (900 * 1024)
    with ScriptedBroker(ScriptedBroker.granted("aws", {**AWS, "session_token": huge})) as broker:
        result = run_github(tmp_path, flavor, github_env(broker.url, oidc), timeout=120)
    assert result.returncode == 1, result.log[-2000:]
    assert f"credentials.session_token of {len(huge)} bytes" in result.stderr
    assert f"limit of {LIMIT} bytes" in result.stderr
    assert "::error title=ci-broker::" in result.stdout
    assert result.env == {} and result.outputs == {}
    assert_no_secret(result.log, [huge[:64], huge[-64:]], "the step's log")


@pytest.mark.parametrize("flavor", FLAVORS, ids=FLAVOR_IDS)
def test_gitlab_refuses_an_oversized_access_token_and_exports_nothing(tmp_path: Path, flavor: Flavor):
    huge = "eyJ0eXAiOiJKV1Qi" + "B" * (LIMIT + 1 - 16)
    with ScriptedBroker(ScriptedBroker.granted("azure", {**AZURE, "access_token": huge})) as broker:
        result = run_gitlab(tmp_path, flavor, gitlab_env(broker.url))
    assert result.returncode == 1, result.log[-2000:]
    assert f"credentials.access_token of {LIMIT + 1} bytes" in result.stderr
    assert not [name for name in result.env if name.startswith(("AZURE_", "ARM_", "CI_BROKER_CLOUD"))]
    assert_no_secret(result.log, [huge[:64], huge[-64:]], "the job log")


@pytest.mark.parametrize("flavor", FLAVORS, ids=FLAVOR_IDS)
def test_a_value_of_exactly_the_limit_is_exported(tmp_path: Path, flavor: Flavor):
    largest = "IQoJb3JpZ2luX2Vj" + "C" * (LIMIT - 16)
    with ScriptedBroker(ScriptedBroker.granted("aws", {**AWS, "session_token": largest})) as broker:
        result = run_gitlab(tmp_path, flavor, gitlab_env(broker.url))
    assert result.returncode == 0, result.log[-2000:]
    assert result.env["AWS_SESSION_TOKEN"] == largest
