"""A local CI OIDC issuer: discovery and JWKS over HTTP, minting GitHub- or GitLab-shaped tokens.

The claim sets follow the providers' documentation (GitHub: "About security hardening with OpenID
Connect"; GitLab: "ID token authentication"). `sign_raw` signs any header and payload bytes so
tests can build the malformed and malicious tokens an attacker would.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable
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

    def __init__(self, alg: str = "RS256") -> None:
        self.keys = [IssuerKeyPair(alg)]
        self.server = LocalServer(self._wsgi)
        self.jwks_requests = 0
        self.discovery_requests = 0
        self.jwks_hook: Callable[[Request], Response] | None = None

    @property
    def url(self) -> str:
        return self.server.url

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
        if request.path == "/.well-known/openid-configuration":
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
        elif request.path == "/.well-known/jwks":
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


def _times(lifetime: int = 300) -> dict[str, int]:
    now = int(time.time())
    return {"iat": now, "nbf": now, "exp": now + lifetime}


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
    claims.update(overrides)
    return claims


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
    claims.update(overrides)
    return claims
