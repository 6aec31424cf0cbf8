"""Shared by the integration tests: paths, the runners' locations, and secret-finding helpers.

The runners are installed by tests/integrations/install-tools.sh. Locally a missing tool skips
its tests with the command to run; in CI (CI=true) it fails them, so a broken install step can
never turn into a green run that tested nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "actions" / "credentials" / "ci-broker.sh"
ACTION_DIR = ROOT / "actions" / "credentials"
TEMPLATE = ROOT / "gitlab-templates" / "ci-broker.gitlab-ci.yml"
COMPONENT = ROOT / "gitlab-templates" / "templates" / "ci-broker.yml"
VENV_BIN = Path(sys.executable).parent

# Sample values in the shapes the clouds use (none is real), shared by the client and Action tests.
JWT = (
    "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIn0.eyJzdWIiOiJyZXBvOm8vcjpyZWY6cmVmcy9oZWFkcy9tYWluIn0.c2lnbmF0dXJlLV8"
)


def jwt_for(audience: str | list[str] | None, **claims: object) -> str:
    """A JWT-shaped sample (signed by no one) whose payload carries `audience` as its `aud`: the
    shell client sends a token only to the broker its audience names. Same inputs, same token."""
    import base64
    import json

    def part(data: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(data, sort_keys=True).encode()).decode().rstrip("=")

    payload = {"sub": "project_path:g/p:ref_type:branch:ref:main", **claims}
    if audience is not None:
        payload["aud"] = audience
    return f"{part({'alg': 'RS256', 'kid': 'k1'})}.{part(payload)}.c2lnbmF0dXJlLV8"


AWS = {
    "access_key_id": "ASIAZZEXAMPLE7KEYID0",
    "secret_access_key": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYzEXAMPLEKEY",
    "session_token": "IQoJb3JpZ2luX2VjEXAMPLE//////////wEaCXVzLWVhc3QtMSJHMEUCIQD+session=",
    "region": "eu-west-1",
}
GCP = {
    "access_token": "ya29.a0AfB_byEXAMPLE-gcp-access-token_0123456789",
    "token_type": "Bearer",
    "service_account": "deployer@my-project.iam.gserviceaccount.com",
}
AZURE = {
    "access_token": "eyJ0eXAiOiJKV1QifQ.eyJhdWQiOiJhcm0ifQ.azure-access-token-sig",
    "token_type": "Bearer",
    "tenant_id": "00000000-0000-0000-0000-000000000000",
    "client_id": "11111111-1111-1111-1111-111111111111",
    "subscription_id": "22222222-2222-2222-2222-222222222222",
    "federated_token": "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJyb2xlOmF6dXJlLWRlcGxveSJ9.assertion-sig",
}


def require_tool(name: str, path: Path | str | None = None) -> str:
    """The path of a tool the tests drive; skip (locally) or fail (in CI) when it is missing."""
    found = str(path) if path and Path(path).exists() else shutil.which(name)
    if found:
        return found
    message = f"{name} is not installed: run tests/integrations/install-tools.sh"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def act_path() -> str:
    return require_tool("act", VENV_BIN / "act")


def gitlab_ci_local_path() -> str:
    return require_tool(
        "gitlab-ci-local", ROOT / ".tools" / "npm" / "node_modules" / ".bin" / "gitlab-ci-local"
    )


def files_containing(root: Path, secrets: Iterable[str]) -> list[str]:
    """Every file under root (followed into hidden directories) holding any of the secrets."""
    needles = [s.encode() for s in secrets if s]
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            if any(n in data for n in needles):
                hits.append(str(path))
    return hits


def assert_no_secret(text: str, secrets: Iterable[str], where: str) -> None:
    for value in secrets:
        assert value and value not in text, f"a secret appears in {where}"


def git_repo(path: Path) -> None:
    """act and gitlab-ci-local read the project's git metadata; give them a real repository."""
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "ci",
        "GIT_AUTHOR_EMAIL": "ci@example.com",
        "GIT_COMMITTER_NAME": "ci",
        "GIT_COMMITTER_EMAIL": "ci@example.com",
    }
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "test"]):
        subprocess.run(["git", *args], cwd=path, check=True, env=env, capture_output=True)


def assert_refresh_refused(broker_url: str, refresh_token: str) -> None:
    """After a job, its session's refresh token must be refused: 401 `invalid_token`."""
    import requests

    response = requests.post(
        f"{broker_url}/v1/refresh", json={}, headers={"Authorization": f"Bearer {refresh_token}"}, timeout=30
    )
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid_token"
