"""A local CI OIDC issuer: discovery and JWKS over HTTP, minting tokens shaped like each CI's.

The claim sets follow each CI's documentation, and each factory names its source: a documented
example payload where the CI publishes one. `sign_raw` signs any header and payload bytes so tests
can build the malformed and malicious tokens an attacker would. An issuer may live under a path
(`https://vstoken.dev.azure.com/ORG`, `https://oidc.circleci.com/org/ORG`), as several CIs' do.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from werkzeug.wrappers import Request, Response

from broker.keys import thumbprint
from broker.sandbox.wsgi import LocalServer


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class IssuerKeyPair:
    def __init__(self, alg: str = "RS256") -> None:
        self.alg = alg
        self.private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
        if alg == "RS256":
            self.private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            jwk = RSAAlgorithm.to_jwk(self.private_key.public_key(), as_dict=True)
        elif alg == "ES256":
            self.private_key = ec.generate_private_key(ec.SECP256R1())
            jwk = ECAlgorithm.to_jwk(self.private_key.public_key(), as_dict=True)
        else:
            raise ValueError(alg)
        self.kid = thumbprint(jwk)
        self.public_jwk = {**jwk, "kid": self.kid, "alg": alg, "use": "sig"}

    def sign(self, signing_input: bytes) -> bytes:
        if isinstance(self.private_key, rsa.RSAPrivateKey):
            return self.private_key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        r, s = decode_dss_signature(self.private_key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")


class LocalIssuer:
    """An OIDC issuer on 127.0.0.1. `jwks_hook`, if set, answers JWKS requests instead (for
    resilience tests: slow, failing or malformed key endpoints)."""

    def __init__(self, alg: str = "RS256", path: str = "") -> None:
        if path and (not path.startswith("/") or path.endswith("/")):
            raise ValueError("an issuer path starts with '/' and does not end with one")
        self.path = path
        self.keys = [IssuerKeyPair(alg)]
        self.server = LocalServer(self._wsgi)
        self.jwks_requests = 0
        self.discovery_requests = 0
        self.jwks_hook: Callable[[Request], Response] | None = None

    @property
    def url(self) -> str:
        return self.server.url + self.path

    @property
    def key(self) -> IssuerKeyPair:
        return self.keys[0]

    def start(self) -> LocalIssuer:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    def __enter__(self) -> LocalIssuer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def rotate(self, alg: str = "RS256", *, keep_old: bool = True) -> IssuerKeyPair:
        """Add a new signing key in front; the old one stays published unless keep_old is False."""
        new = IssuerKeyPair(alg)
        self.keys = [new] + (self.keys if keep_old else [])
        return new

    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        if request.path == f"{self.path}/.well-known/openid-configuration":
            self.discovery_requests += 1
            response = Response(
                json.dumps(
                    {
                        "issuer": self.url,
                        "jwks_uri": f"{self.url}/.well-known/jwks",
                        "subject_types_supported": ["public"],
                        "response_types_supported": ["id_token"],
                        "id_token_signing_alg_values_supported": sorted({k.alg for k in self.keys}),
                    }
                ),
                mimetype="application/json",
            )
        elif request.path == f"{self.path}/.well-known/jwks":
            self.jwks_requests += 1
            if self.jwks_hook is not None:
                response = self.jwks_hook(request)
            else:
                response = Response(
                    json.dumps({"keys": [k.public_jwk for k in self.keys]}), mimetype="application/json"
                )
        else:
            response = Response("not found", status=404)
        return response(environ, start_response)

    # -- minting ----------------------------------------------------------------------------------
    def sign_raw(
        self,
        header: dict[str, Any] | bytes,
        payload: dict[str, Any] | bytes,
        key: IssuerKeyPair | None = None,
    ) -> str:
        """Sign exactly the given header and payload (dicts are JSON-encoded; bytes are used as is)."""
        key = key or self.key
        h = header if isinstance(header, bytes) else json.dumps(header).encode()
        p = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        signing_input = f"{b64url(h)}.{b64url(p)}".encode()
        return f"{signing_input.decode()}.{b64url(key.sign(signing_input))}"

    def mint(
        self, claims: dict[str, Any], header: dict[str, Any] | None = None, key: IssuerKeyPair | None = None
    ) -> str:
        key = key or self.key
        full_header = {"alg": key.alg, "kid": key.kid, "typ": "JWT"}
        full_header.update(header or {})
        return self.sign_raw(full_header, {"iss": self.url, **claims}, key)


# An override with this value removes the claim: `buildkite_claims(jti=OMIT)` is an older agent's.
OMIT: Any = object()


def _times(lifetime: int = 300, *, nbf: bool = True) -> dict[str, int]:
    now = int(time.time())
    times = {"iat": now, "nbf": now, "exp": now + lifetime}
    if not nbf:
        del times["nbf"]
    return times


def _apply(claims: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not OMIT}


def github_claims(**overrides: Any) -> dict[str, Any]:
    """A GitHub Actions job token's claims, as documented; values are strings like GitHub's."""
    claims: dict[str, Any] = {
        "jti": str(uuid.uuid4()),
        "sub": "repo:octo-org/octo-repo:environment:production",
        "aud": "https://github.com/octo-org",
        "ref": "refs/heads/main",
        "sha": "d6ff2d1a3c0e5e2f0b8f4f6c9f3e7f0a1b2c3d4e",
        "repository": "octo-org/octo-repo",
        "repository_owner": "octo-org",
        "actor_id": "12",
        "repository_visibility": "private",
        "repository_id": "892734123",
        "repository_owner_id": "65",
        "run_id": "7123456789",
        "run_number": "10",
        "run_attempt": "1",
        "runner_environment": "github-hosted",
        "actor": "octocat",
        "workflow": "deploy",
        "head_ref": "",
        "base_ref": "",
        "event_name": "push",
        "ref_type": "branch",
        "ref_protected": "true",
        "environment": "production",
        "workflow_ref": "octo-org/octo-repo/.github/workflows/deploy.yml@refs/heads/main",
        "workflow_sha": "d6ff2d1a3c0e5e2f0b8f4f6c9f3e7f0a1b2c3d4e",
        "job_workflow_ref": "octo-org/octo-repo/.github/workflows/deploy.yml@refs/heads/main",
        "job_workflow_sha": "d6ff2d1a3c0e5e2f0b8f4f6c9f3e7f0a1b2c3d4e",
        **_times(),
    }
    return _apply(claims, overrides)


def gitlab_claims(**overrides: Any) -> dict[str, Any]:
    """A GitLab CI job's id_token claims, as documented."""
    claims: dict[str, Any] = {
        "jti": str(uuid.uuid4()),
        "sub": "project_path:my-group/my-project:ref_type:branch:ref:main",
        "aud": "https://broker.example.com",
        "namespace_id": "72",
        "namespace_path": "my-group",
        "project_id": "20",
        "project_path": "my-group/my-project",
        "user_id": "1",
        "user_login": "sample-user",
        "user_email": "sample-user@example.com",
        "user_access_level": "developer",
        "pipeline_id": "574",
        "pipeline_source": "push",
        "job_id": "302",
        "ref": "main",
        "ref_type": "branch",
        "ref_path": "refs/heads/main",
        "ref_protected": "true",
        "environment": "production",
        "environment_protected": "true",
        "deployment_tier": "production",
        "environment_action": "start",
        "runner_id": 1,
        "runner_environment": "gitlab-hosted",
        "sha": "714a629c0b401fdce83e847fc9589983fc6f46bc",
        "project_visibility": "private",
        "ci_config_ref_uri": "gitlab.example.com/my-group/my-project//.gitlab-ci.yml@refs/heads/main",
        "ci_config_sha": "714a629c0b401fdce83e847fc9589983fc6f46bc",
        **_times(),
    }
    return _apply(claims, overrides)


# -- the other CIs: each from its documentation's example payload -----------------------------------
# The issuer (`iss`) is the LocalIssuer's own URL, added by `mint`; the audience is the broker's
# unless the CI fixes it. Ids are the documented examples' wherever the documentation gives them.


def buildkite_claims(**overrides: Any) -> dict[str, Any]:
    """A Buildkite job token: the example in https://buildkite.com/docs/agent/cli/reference/oidc
    ("Example token contents"), with `jti`, `"build_tag": null` as in the real payload published in
    rubygems/rubygems.org#5412, and the optional `organization_id` and `pipeline_id` a job gets
    with `--claim organization_id,pipeline_id` (UUIDs in the documented examples' form)."""
    claims: dict[str, Any] = {
        "jti": str(uuid.uuid4()),
        "sub": "organization:acme-inc:pipeline:super-duper-app:ref:refs/heads/main:"
        "commit:9f3182061f1e2cca4702c368cbc039b7dc9d4485:step:build",
        "aud": "https://buildkite.com/acme-inc",
        "organization_slug": "acme-inc",
        "pipeline_slug": "super-duper-app",
        "build_number": 1,
        "build_branch": "main",
        "build_tag": None,
        "build_commit": "9f3182061f1e2cca4702c368cbc039b7dc9d4485",
        "step_key": "build",
        "job_id": "0184990a-477b-4fa8-9968-496074483cee",
        "agent_id": "0184990a-4782-42b5-afc1-16715b10b8ff",
        "build_source": "ui",
        "runner_environment": "buildkite-hosted",
        "organization_id": "0184990a-477b-4fa8-9968-496074483c77",
        "pipeline_id": "0184990a-4782-42b5-afc1-16715b10b1a0",
        **_times(),
    }
    return _apply(claims, overrides)


CIRCLECI_ORG_ID = "7a2d6c4b-1f3e-4d5a-9b8c-0e1f2a3b4c5d"


def circleci_claims(**overrides: Any) -> dict[str, Any]:
    """A CircleCI `$CIRCLE_OIDC_TOKEN_V2`: the claims of "Format of the OpenID Connect ID token" in
    https://circleci.com/docs/guides/permissions-authentication/openid-connect-tokens/ (`aud` the
    organization id, `sub` with vcs-origin and vcs-ref, the `oidc.circleci.com/...` claims; no
    `jti`, one hour of validity)."""
    project = "5b3f0c8e-2d4a-4b6c-8e9f-1a2b3c4d5e6f"
    user = "9c8b7a6d-5e4f-4a3b-2c1d-0e9f8a7b6c5d"
    claims: dict[str, Any] = {
        "sub": f"org/{CIRCLECI_ORG_ID}/project/{project}/user/{user}"
        "/vcs-origin/github.com/organization-123/repo-1/vcs-ref/refs/heads/main",
        "aud": CIRCLECI_ORG_ID,
        "oidc.circleci.com/project-id": project,
        "oidc.circleci.com/vcs-origin": "github.com/organization-123/repo-1",
        "oidc.circleci.com/vcs-ref": "refs/heads/main",
        "oidc.circleci.com/context-ids": ["a74579f1-2e7d-451e-b009-5c082ad2729e"],
        "oidc.circleci.com/ssh-rerun": False,
        **_times(3600, nbf=False),
    }
    return _apply(claims, overrides)


BITBUCKET_WORKSPACE_UUID = "{5d2e8f3a-9b1c-4e7d-a6f0-3c8b2e1d4a9f}"


def bitbucket_claims(**overrides: Any) -> dict[str, Any]:
    """A Bitbucket Pipelines step token (`oidc: true`): the claims the workspace's discovery
    document lists (support.atlassian.com "Integrate Pipelines with resource servers using OIDC";
    mirrored in gravitational/teleport lib/bitbucket), UUIDs in braces, `sub` REPO:STEP."""
    repository, step = "{a1f3c5e7-0b2d-4f6a-8c9e-1d3f5a7c9e0b}", "{c2d4e6f8-1a3b-4c5d-9e7f-2b4d6f8a0c1e}"
    claims: dict[str, Any] = {
        "sub": f"{repository}:{step}",
        "aud": "ari:cloud:bitbucket::workspace/" + BITBUCKET_WORKSPACE_UUID.strip("{}"),
        "accountUuid": "{e3f5a7c9-2b4d-4e6f-8a0c-3d5f7b9d1e2f}",
        "workspaceUuid": BITBUCKET_WORKSPACE_UUID,
        "repositoryUuid": repository,
        "pipelineUuid": "{f4a6b8d0-3c5e-4f7a-9b1d-4e6a8c0e2f3a}",
        "stepUuid": step,
        "deploymentEnvironmentUuid": "{b7c9d1e3-4f5a-4b6c-8d7e-5f7a9b1c3d4e}",
        "branchName": "main",
        **_times(),
    }
    return _apply(claims, overrides)


AZURE_DEVOPS_ORG_ID = "3b0b3a72-5f0c-4c5e-9a58-6d4d0f1b2c3d"


def azure_devops_claims(**overrides: Any) -> dict[str, Any]:
    """An Azure DevOps pipeline token from `System.OidcRequestUri` (the oidctoken REST API): the
    decoded payload in sigstore/fulcio#1803, with its placeholders filled in."""
    claims: dict[str, Any] = {
        "jti": str(uuid.uuid4()),
        "sub": "p://example/test-oidc/test-oidc",
        "aud": "api://AzureADTokenExchange",
        "org_id": AZURE_DEVOPS_ORG_ID,
        "prj_id": "6f8e2c1a-7b3d-4e9f-a5c6-8d0b2e4f6a1c",
        "def_id": "42",
        "rpo_id": "9a1b3c5d-7e9f-4a2b-8c4d-6e8f0a2b4c6d",
        "rpo_uri": "https://dev.azure.com/example/test-oidc/_git/test-oidc",
        "rpo_ver": "b5ffe3aeea51cec6c41aef16e45ee6bce47d8810",
        "rpo_ref": "refs/heads/main",
        "run_id": "1234",
        **_times(600),
    }
    return _apply(claims, overrides)


def jenkins_claims(**overrides: Any) -> dict[str, Any]:
    """A Jenkins build's token from the oidc-provider plugin's default build claim templates
    (jenkinsci/oidc-provider-plugin `IdTokenConfiguration`): `sub` is the job URL, `build_number`
    an integer; `iat` and `exp` (one hour), no `nbf`, no `jti`."""
    claims: dict[str, Any] = {
        "sub": "https://jenkins.example.com/job/platform/job/deploy/",
        "build_number": 42,
        **_times(3600, nbf=False),
    }
    return _apply(claims, overrides)


def kubernetes_claims(**overrides: Any) -> dict[str, Any]:
    """A projected service account token: the example payload of "Bound service account tokens"
    in https://kubernetes.io/docs/reference/access-authn-authz/service-accounts-admin/ (`jti` and
    `kubernetes.io.node` need the ServiceAccountTokenJTI and ServiceAccountTokenPodNodeInfo
    features; `aud` is a list)."""
    claims: dict[str, Any] = {
        "jti": "ea28ed49-2e11-4280-9ec5-bc3d1d84661a",
        "sub": "system:serviceaccount:my-namespace:my-workload",
        "kubernetes.io": {
            "namespace": "my-namespace",
            "node": {"name": "127.0.0.1", "uid": "58456cb0-dd00-45ed-b797-5578fdceaced"},
            "pod": {"name": "my-workload-69cbfb9798-jv9gn", "uid": "778a530c-b3f4-47c0-9cd5-ab018fb64f33"},
            "serviceaccount": {"name": "my-workload", "uid": "a087d5a0-e1dd-43ec-93ac-f13d89cd13af"},
            "warnafter": int(time.time()) + 240,
        },
        **_times(600),
    }
    return _apply(claims, overrides)


def terraform_cloud_claims(**overrides: Any) -> dict[str, Any]:
    """An HCP Terraform workload identity token: the example payload in
    https://developer.hashicorp.com/terraform/cloud-docs/workspaces/dynamic-provider-credentials/workload-identity-tokens."""
    claims: dict[str, Any] = {
        "jti": str(uuid.uuid4()),
        "sub": "organization:my-org:project:Default Project:workspace:my-workspace:run_phase:apply",
        "terraform_organization_id": "org-GRNbCjYNpBB6NEH9",
        "terraform_organization_name": "my-org",
        "terraform_project_id": "prj-vegSA59s1XPwMr2t",
        "terraform_project_name": "Default Project",
        "terraform_workspace_id": "ws-mbsd5E3Ktt5Rg2Xm",
        "terraform_workspace_name": "my-workspace",
        "terraform_full_workspace": "organization:my-org:project:Default Project:workspace:my-workspace",
        "terraform_run_id": "run-X3n1AUXNGWbfECsJ",
        "terraform_run_phase": "apply",
        **_times(),
    }
    return _apply(claims, overrides)


@dataclass(frozen=True)
class CIShape:
    """How the sandbox stands in for one CI: its claims, where its issuer lives, the `aud` it fixes."""

    claims: Callable[..., dict[str, Any]]
    issuer_path: str = ""
    audience: str | None = None  # None: the token carries the broker's audience


CI_SHAPES: dict[str, CIShape] = {
    "github": CIShape(github_claims),
    "gitlab": CIShape(gitlab_claims),
    "buildkite": CIShape(buildkite_claims),
    "circleci": CIShape(circleci_claims, f"/org/{CIRCLECI_ORG_ID}", CIRCLECI_ORG_ID),
    "bitbucket": CIShape(
        bitbucket_claims,
        "/2.0/workspaces/acme/pipelines-config/identity/oidc",
        "ari:cloud:bitbucket::workspace/" + BITBUCKET_WORKSPACE_UUID.strip("{}"),
    ),
    "azure-devops": CIShape(azure_devops_claims, f"/{AZURE_DEVOPS_ORG_ID}", "api://AzureADTokenExchange"),
    "jenkins": CIShape(jenkins_claims, "/oidc"),
    "kubernetes": CIShape(kubernetes_claims),
    "terraform-cloud": CIShape(terraform_cloud_claims),
}
