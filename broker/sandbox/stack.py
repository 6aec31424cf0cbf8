"""The whole flow on loopback: CI issuers, the broker, and the clouds' endpoints.

`Sandbox` is what `ci-broker demo` runs and what the tests build on: a GitHub-like and a
GitLab-like issuer, an ephemeral signing key, the broker (served in-process, or by `ci-broker
serve` from the config file it writes), and the clouds' endpoints, each trusting the broker's
issuer for the sandbox's roles: a local AWS STS, a local GCP STS and IAM Credentials, and a local
Entra ID token endpoint (over https, with a throwaway CA the config names as `ca_bundle`).
Nothing here touches the network beyond 127.0.0.1.
"""

from __future__ import annotations

import copy
import random
import socket
from pathlib import Path
from typing import Any

import requests
import yaml

from broker.keys import generate_private_key, private_key_pem
from broker.sandbox.aws import LocalSTS
from broker.sandbox.azure import LocalEntra
from broker.sandbox.gcp import LocalGCP
from broker.sandbox.issuer import LocalIssuer, github_claims, gitlab_claims
from broker.sandbox.wsgi import LocalServer

DEPLOY_ROLE_ARN = "arn:aws:iam::123456789012:role/deploy-prod"
GITLAB_ROLE_ARN = "arn:aws:iam::123456789012:role/gitlab-deploy"
GCP_SERVICE_ACCOUNT = "deployer@ci-broker-demo.iam.gserviceaccount.com"
AZURE_TENANT_ID = "8d6f1c3e-5b2a-4c7d-9e0f-1a2b3c4d5e6f"
AZURE_CLIENT_ID = "0f1e2d3c-4b5a-4978-8a9b-acbdcedf0011"
AZURE_SUBSCRIPTION_ID = "a1b2c3d4-e5f6-4a5b-8c7d-9e0f1a2b3c4d"
AZURE_SCOPE = "https://management.azure.com/.default"


# Chosen by the OS, never by the shared `random`: a test may seed it (Hypothesis does, alike in
# every process), and two test processes would then try the same ports in the same order.
_PORTS = random.SystemRandom()


def free_port() -> int:
    """A loopback port that is free now, for a server that binds it a little later.

    Taken below the kernel's ephemeral range: a port the kernel hands out for bind(0) is also one
    it may give the next outgoing connection as its source port (any process's), and the server
    would then fail to bind with EADDRINUSE. Below that range only another free_port can collide.
    """
    first_ephemeral = _first_ephemeral_port()
    if first_ephemeral > 11000:
        for _ in range(50):
            port = _PORTS.randrange(10000, first_ephemeral)
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _first_ephemeral_port() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 49152  # IANA's dynamic range: BSD and macOS


class Sandbox:
    def __init__(self, workdir: Path, *, broker_port: int | None = None, key_alg: str = "ES256") -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.key_alg = key_alg
        self.github = LocalIssuer()
        self.gitlab = LocalIssuer()
        self.broker_port = broker_port or free_port()
        self.broker_url = f"http://127.0.0.1:{self.broker_port}"
        self.sts = LocalSTS(self.broker_url)
        self.gcp = LocalGCP(self.broker_url)
        self.azure = LocalEntra(self.broker_url)
        self.ca_path = self.workdir / "sandbox-ca.pem"  # trusted for the local Entra ID endpoint
        self._app: Any = None
        self._broker_server: LocalServer | None = None
        self.key_path = self.workdir / "broker-signing.pem"

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> Sandbox:
        self.github.start()
        self.gitlab.start()
        self.sts.start()
        self.sts.trust_role(DEPLOY_ROLE_ARN, "deploy-prod")
        self.sts.trust_role(GITLAB_ROLE_ARN, "gitlab-deploy")
        self.gcp.start()
        self.gcp.trust_role("gcp-deploy")
        self.gcp.bind(GCP_SERVICE_ACCOUNT, "gcp-deploy")
        self.azure.ca.write_ca(self.ca_path)
        self.azure.start()
        self.azure.trust_role(AZURE_TENANT_ID, AZURE_CLIENT_ID, "azure-deploy")
        if not self.key_path.exists():
            self.key_path.write_bytes(private_key_pem(generate_private_key(self.key_alg)))
            self.key_path.chmod(0o600)
        return self

    def settle(self) -> None:
        """Wait until the GCP and Entra endpoints serve no request: one a fault stalled is
        recorded in their `calls` when it finishes, which must not be during a later count."""
        self.gcp.in_flight.settle()
        self.azure.in_flight.settle()

    def stop(self) -> None:
        if self._broker_server is not None:
            self._broker_server.stop()
        self.azure.stop()
        self.gcp.stop()
        self.sts.stop()
        self.gitlab.stop()
        self.github.stop()

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- config -----------------------------------------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        """The demo policy, every rule bound to immutable ids: an AWS role for GitHub, one for
        GitLab, and a GCP and an Azure role each granted to the same GitHub and GitLab projects."""
        github_rule = {
            "provider": "github",
            "claims": {
                "repository_id": "892734123",
                "ref": "refs/heads/main",
                "event_name": ["push", "workflow_dispatch"],
            },
        }
        gitlab_rule = {
            "provider": "gitlab",
            "claims": {"project_id": "20", "ref_protected": "true", "pipeline_source": ["push", "web"]},
        }
        return {
            "server": {
                "issuer": self.broker_url,
                "signing_keys": [self.key_path.name],
                "replay_store": "memory",
                "token_max_age": 900,
                "leeway": 60,
            },
            "providers": {
                "github": {"issuer": self.github.url, "type": "github"},
                "gitlab": {"issuer": self.gitlab.url, "type": "gitlab"},
            },
            "roles": {
                "deploy-prod": {
                    "cloud": "aws",
                    "aws": {
                        "role_arn": DEPLOY_ROLE_ARN,
                        "region": "eu-west-1",
                        "duration": 3600,
                        "sts_endpoint": self.sts.url,
                        "session_tags": {"repository": "{repository}", "ref": "{ref}"},
                    },
                    "allow": [
                        {
                            "provider": "github",
                            "claims": {
                                "repository_id": "892734123",
                                "ref": "refs/heads/main",
                                "environment": ["production", "prod"],
                                "event_name": ["push", "workflow_dispatch"],
                            },
                        }
                    ],
                },
                "gitlab-deploy": {
                    "cloud": "aws",
                    "aws": {"role_arn": GITLAB_ROLE_ARN, "duration": 900, "sts_endpoint": self.sts.url},
                    "allow": [
                        {
                            "provider": "gitlab",
                            "claims": {
                                "project_id": "20",
                                "ref_protected": "true",
                                "pipeline_source": ["push", "web"],
                            },
                        }
                    ],
                },
                "gcp-deploy": {
                    "cloud": "gcp",
                    "gcp": {
                        "audience": self.gcp.audience,
                        "service_account": GCP_SERVICE_ACCOUNT,
                        "scopes": ["https://www.googleapis.com/auth/cloud-platform"],
                        "lifetime": 3600,
                        "token_url": self.gcp.token_url,
                        "iam_credentials_url": self.gcp.url,
                    },
                    "allow": [copy.deepcopy(github_rule), copy.deepcopy(gitlab_rule)],
                },
                "azure-deploy": {
                    "cloud": "azure",
                    "azure": {
                        "tenant_id": AZURE_TENANT_ID,
                        "client_id": AZURE_CLIENT_ID,
                        "scope": AZURE_SCOPE,
                        "subscription_id": AZURE_SUBSCRIPTION_ID,
                        "authority_host": self.azure.url,
                        "ca_bundle": str(self.ca_path.resolve()),
                    },
                    "allow": [copy.deepcopy(github_rule), copy.deepcopy(gitlab_rule)],
                },
            },
        }

    def write_config(self, config: dict[str, Any] | None = None, name: str = "broker.yaml") -> Path:
        path = self.workdir / name
        path.write_text(yaml.safe_dump(config or self.config_dict(), sort_keys=False))
        return path

    # -- serving in-process -----------------------------------------------------------------------
    def serve_in_process(self, config: dict[str, Any] | None = None, **app_kwargs: Any) -> Any:
        """Build the broker app from `config` (default: the demo policy) and serve it on broker_url."""
        from broker.app import create_app
        from broker.config import build_config

        loaded = build_config(copy.deepcopy(config or self.config_dict()), base_dir=self.workdir)
        self._app = create_app(loaded, **app_kwargs)
        if self._broker_server is None:
            self._broker_server = LocalServer(self._dispatch, port=self.broker_port).start()
        return self._app

    def _dispatch(self, environ: dict[str, Any], start_response: Any) -> Any:
        return self._app(environ, start_response)

    # -- a CI job's view --------------------------------------------------------------------------
    def github_token(self, **claims: Any) -> str:
        return self.github.mint(github_claims(**{"aud": self.broker_url, **claims}))

    def gitlab_token(self, **claims: Any) -> str:
        return self.gitlab.mint(gitlab_claims(**{"aud": self.broker_url, **claims}))

    def exchange(
        self,
        token: str | None,
        role: str = "deploy-prod",
        *,
        headers: dict[str, str] | None = None,
        **body: Any,
    ) -> requests.Response:
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        return requests.post(
            f"{self.broker_url}/v1/exchange", json={"role": role, **body}, headers=sent, timeout=30
        )
