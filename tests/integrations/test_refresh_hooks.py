"""Refresh where the clouds' tools ask (contract section 8, client side), with the tools themselves.

Each test sets a job up the way the pipeline does (the Action's main step with `refresh: true`,
or the shell client sourced into a GitLab-like job shell with CI_BROKER_REFRESH=true) against a
broker with sessions, then runs a later step in a fresh process with only the job's environment:
- boto3 with the exported AWS_CONFIG_FILE + AWS_PROFILE (`credential_process`), against the
  sandbox's verifying STS, with 15-minute credentials, which botocore asks to refresh at every
  call (its advisory window is 15 minutes): three calls, three refreshes, three sets of keys;
- google-auth loading the exported GOOGLE_APPLICATION_CREDENTIALS (`external_account` with an
  executable source) against the sandbox's GCP STS and IAM Credentials, forced past expiry;
- azure-identity's WorkloadIdentityCredential reading AZURE_FEDERATED_TOKEN_FILE, which a
  background refresher rewrites before the assertion in it expires, against the local Entra.
The broker's assertions are made to live 60 to 95 seconds here (production: 300), so the hooks
must refresh at the broker rather than hand out the assertion from the exchange.
After the job's end step, the session's refresh token is refused.
"""

from __future__ import annotations

import copy
import json
import os
import stat
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from actionrun import job_env, run_action, run_post
from endpoints import OIDCRequestEndpoint
from support import assert_no_secret, assert_refresh_refused

from broker.assertion import AssertionSigner
from broker.config import build_config
from broker.sandbox import stack
from broker.sandbox.issuer import github_claims, gitlab_claims
from broker.service import build_broker

SESSION_LIFETIME = 3 * 3600


def session_config(sandbox: Any) -> dict[str, Any]:
    config = sandbox.config_dict()
    for role in config["roles"].values():
        role["session_lifetime"] = SESSION_LIFETIME
    config["roles"]["deploy-prod"]["aws"]["duration"] = 900  # AWS's minimum; inside botocore's window
    config["roles"]["gcp-deploy"]["gcp"]["federated_token"] = True
    config["roles"]["azure-deploy"]["azure"]["federated_token"] = True
    # Direct resource access: the pool's principal itself, no service account to impersonate.
    direct = copy.deepcopy(config["roles"]["gcp-deploy"])
    del direct["gcp"]["service_account"], direct["gcp"]["iam_credentials_url"]
    config["roles"]["gcp-direct"] = direct
    sandbox.gcp.trust_role("gcp-direct")
    return config


def serve(sandbox: Any, serve_config: Any, assertion_lifetime: int) -> Any:
    config = session_config(sandbox)
    loaded = build_config(copy.deepcopy(config), base_dir=sandbox.workdir)
    broker = build_broker(loaded)
    broker.signer = AssertionSigner(
        loaded.server.issuer, loaded.server.signing_keys[0], lifetime=assertion_lifetime
    )
    return serve_config(config, broker=broker)


@dataclass
class Job:
    """A job after its credentials step: its environment, and how its end step runs."""

    role: str
    env: dict[str, str]
    session_dir: Path
    end: Any
    log: str
    secrets: list[str] = field(default_factory=list)

    def refresh_token(self) -> str:
        return current_refresh_token(self.session_dir)


def current_refresh_token(session_dir: Path) -> str:
    state = session_dir / "state.json"
    if state.exists():
        answer = json.loads(json.loads(state.read_text())["answer"])
    else:
        answer = json.loads((session_dir / "answer").read_text())
    return str(answer["session"]["refresh_token"])


def node_job(tmp: Path, sandbox: Any, role: str) -> Job:
    def mint(audience: str) -> str:
        return sandbox.github.mint(github_claims(aud=audience))

    with OIDCRequestEndpoint(mint) as oidc:
        env = {
            "ACTIONS_ID_TOKEN_REQUEST_URL": oidc.request_url,
            "ACTIONS_ID_TOKEN_REQUEST_TOKEN": oidc.request_token,
        }
        result = run_action(tmp, {"broker-url": sandbox.broker_url, "role": role, "refresh": "true"}, env)
    assert result.returncode == 0, result.log
    session_dir = Path(result.state["session_dir"])

    def end() -> str:
        post = run_post(tmp, result.state)
        assert post.returncode == 0, post.log
        return post.log

    return Job(role, result.env, session_dir, end, result.log, result.masked())


ENV_MARK = "----- job environment -----"
# The sandbox's AWS role for GitLab projects (deploy-prod is GitHub's); the others serve both.
GITLAB_ROLES = {"deploy-prod": "gitlab-deploy"}


def template_job(tmp: Path, sandbox: Any, role: str, alpine: bool = False) -> Job:
    """The GitLab template's own before_script and after_script (its YAML text, as GitLab runs
    it), in a dash job shell with curl, CI_BROKER_REFRESH=true; or, `alpine`, in busybox's sh
    with busybox's applets and wget alone on PATH."""
    import yaml
    from support import TEMPLATE

    job = yaml.safe_load(TEMPLATE.read_text())[".ci-broker"]
    role = GITLAB_ROLES.get(role, role)
    project = tmp / "project"
    project.mkdir(parents=True)
    token = sandbox.gitlab.mint(gitlab_claims(aud=sandbox.broker_url))
    env = job_env(
        {
            "CI_PROJECT_DIR": str(project),
            "GITLAB_CI": "true",
            "CI_BROKER_URL": sandbox.broker_url,
            "CI_BROKER_ROLE": role,
            "CI_BROKER_ID_TOKEN": token,
            "CI_BROKER_REFRESH": "true",
            "CI_BROKER_HTTP_TOOLS": "curl",
        }
    )
    shell = "dash"
    if alpine:
        from clientrun import busybox_bin

        bindir = busybox_bin(tmp)
        env.update(PATH=str(bindir), CI_BROKER_HTTP_TOOLS="wget")
        shell = str(bindir / "sh")
    script = "\n".join(["set -eu", job["before_script"][0], f"echo '{ENV_MARK}'", "env", ""])
    proc = subprocess.run([shell, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    job_vars = dict(
        line.split("=", 1) for line in proc.stdout.partition(ENV_MARK + "\n")[2].splitlines() if "=" in line
    )
    exported = {k: v for k, v in job_vars.items() if k not in env or env[k] != v}
    assert not [k for k in job_vars if k.startswith("_cib_")], "the client left names in the job's shell"

    def end() -> str:
        done = subprocess.run(
            [shell, "-c", job["after_script"][0]], env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout + done.stderr

    return Job(
        role, exported, Path(exported["CI_BROKER_SESSION_DIR"]), end, proc.stdout + proc.stderr, [token]
    )


CLIENTS = {"action": node_job, "gitlab-template": template_job}


def later_step(
    job: Job, script: str, extra: dict[str, str] | None = None, timeout: int = 120
) -> dict[str, Any]:
    """Run `script` in a new process with the job's environment; it prints one JSON line."""
    env = job_env({**job.env, **(extra or {})})
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]), _output=proc.stdout + proc.stderr)


def aws_env(job: Job, sandbox: Any) -> dict[str, str]:
    """Where a later step's AWS tools go: the sandbox's STS, in a region if the role gives none."""
    region = {} if "AWS_REGION" in job.env else {"AWS_DEFAULT_REGION": "us-east-1"}
    return {"AWS_ENDPOINT_URL_STS": sandbox.sts.url, **region}


def refreshes(events: list[dict[str, Any]], role: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == "refresh" and e["role"] == role and e["outcome"] == "granted"]


@pytest.fixture(params=sorted(CLIENTS))
def client(request: pytest.FixtureRequest) -> Any:
    return CLIENTS[request.param]


AWS_STEP = """
    import json, boto3
    session = boto3.session.Session()
    sts = session.client("sts")
    keys, arns = [], []
    for _ in range(3):
        arns.append(sts.get_caller_identity()["Arn"])
        keys.append(session.get_credentials().get_frozen_credentials().access_key)
    print(json.dumps({"arns": arns, "keys": keys}))
"""


def test_boto3_refreshes_through_credential_process(tmp_path, sandbox, serve_config, audit_events, client):
    serve(sandbox, serve_config, assertion_lifetime=300)
    job = client(tmp_path, sandbox, "deploy-prod")
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"} & set(job.env)
    config = Path(job.env["AWS_CONFIG_FILE"])
    assert config.parent == job.session_dir and stat.S_IMODE(config.stat().st_mode) == 0o600
    before = len(refreshes(audit_events, job.role))

    seen = later_step(job, AWS_STEP, aws_env(job, sandbox))
    assert all(a.startswith(f"arn:aws:sts::123456789012:assumed-role/{job.role}/") for a in seen["arns"])
    assert len(set(seen["keys"])) == 3, "each call past botocore's refresh window got fresh keys"
    # botocore asks at each credential lookup (several per call) while inside its window.
    assert len(refreshes(audit_events, job.role)) - before >= 3
    assert_no_secret(seen["_output"], [job.refresh_token()], "the step's output")

    last = job.refresh_token()
    job.end()
    assert not job.session_dir.exists()
    assert_refresh_refused(sandbox.broker_url, last)


def test_the_hooks_run_in_an_alpine_job_with_busybox_alone(tmp_path, sandbox, serve_config, audit_events):
    serve(sandbox, serve_config, assertion_lifetime=300)
    job = template_job(tmp_path, sandbox, "deploy-prod", alpine=True)
    assert (
        Path(job.env["AWS_CONFIG_FILE"])
        .read_text()
        .split("credential_process = ")[1]
        .startswith(str(tmp_path / "busybox-bin" / "sh"))
    )
    before = len(refreshes(audit_events, job.role))
    # The job's image: busybox's applets alone on PATH, wget its only HTTP client.
    alpine = {"PATH": str(tmp_path / "busybox-bin"), "CI_BROKER_HTTP_TOOLS": "wget"}
    seen = later_step(job, AWS_STEP, {**aws_env(job, sandbox), **alpine})
    assert len(set(seen["keys"])) == 3
    assert len(refreshes(audit_events, job.role)) - before >= 3
    last = job.refresh_token()
    assert "session revoked" in job.end()
    assert_refresh_refused(sandbox.broker_url, last)


def test_the_aws_cli_refreshes_through_credential_process(
    tmp_path, sandbox, serve_config, audit_events, client
):
    from support import VENV_BIN, require_tool

    aws = require_tool("aws", VENV_BIN / "aws")
    serve(sandbox, serve_config, assertion_lifetime=300)
    job = client(tmp_path, sandbox, "deploy-prod")
    env = job_env({**job.env, **aws_env(job, sandbox)})
    before = len(refreshes(audit_events, job.role))
    for _ in range(2):
        proc = subprocess.run(
            [aws, "sts", "get-caller-identity", "--output", "json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["Arn"].startswith(
            f"arn:aws:sts::123456789012:assumed-role/{job.role}/"
        )
    assert len(refreshes(audit_events, job.role)) - before >= 2, "each run of the CLI refreshed"
    # Once the session is revoked, the CLI shows the broker's refusal, not a stack trace.
    requests.post(
        f"{sandbox.broker_url}/v1/revoke",
        headers={"Authorization": f"Bearer {job.refresh_token()}"},
        timeout=30,
    )
    proc = subprocess.run(
        [aws, "sts", "get-caller-identity"], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode != 0
    assert "the broker refused to refresh this job's session: HTTP 401 invalid_token" in proc.stderr
    assert "Traceback" not in proc.stderr
    job.end()
    proc = subprocess.run(
        [aws, "sts", "get-caller-identity"], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode != 0, "after the job nothing of the session is left to use"


def test_credentials_with_time_left_are_handed_out_without_a_refresh(
    tmp_path, sandbox, serve_config, audit_events, client
):
    config = session_config(sandbox)
    config["roles"]["deploy-prod"]["aws"]["duration"] = 3600
    config["roles"]["gitlab-deploy"]["aws"]["duration"] = 3600
    serve_config(config)
    job = client(tmp_path, sandbox, "deploy-prod")
    before = len(refreshes(audit_events, job.role))
    seen = later_step(job, AWS_STEP, aws_env(job, sandbox))
    assert len(set(seen["keys"])) == 1
    assert len(refreshes(audit_events, job.role)) == before, "the exchange's hour-long keys sufficed"
    job.end()


GCP_STEP = """
    import datetime, json, os
    from google.auth import load_credentials_from_file
    from google.auth.transport.requests import Request
    credentials, _ = load_credentials_from_file(os.environ["GOOGLE_APPLICATION_CREDENTIALS"])
    credentials = credentials.with_scopes(["https://www.googleapis.com/auth/cloud-platform"])
    request = Request()
    credentials.refresh(request)
    tokens = [credentials.token]
    # Past expiry, as an hour later: the library refreshes by itself before the next request.
    credentials.expiry = datetime.datetime.utcnow() - datetime.timedelta(seconds=1)
    headers = {}
    credentials.before_request(request, "GET", "https://storage.googleapis.com/", headers)
    tokens.append(credentials.token)
    print(json.dumps({"tokens": tokens, "authorization": headers["authorization"] == "Bearer " + tokens[1]}))
"""


def test_google_auth_impersonates_through_the_executable_source(
    tmp_path, sandbox, serve_config, audit_events, client
):
    serve(sandbox, serve_config, assertion_lifetime=60)  # never fresh enough to hand out again
    job = client(tmp_path, sandbox, "gcp-deploy")
    assert not {"CLOUDSDK_AUTH_ACCESS_TOKEN", "GOOGLE_OAUTH_ACCESS_TOKEN"} & set(job.env)
    assert job.env["GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES"] == "1"
    assert job.env["CLOUDSDK_AUTH_CREDENTIAL_FILE_OVERRIDE"] == job.env["GOOGLE_APPLICATION_CREDENTIALS"]
    config_file = Path(job.env["GOOGLE_APPLICATION_CREDENTIALS"])
    assert config_file.parent == job.session_dir and stat.S_IMODE(config_file.stat().st_mode) == 0o600
    config = json.loads(config_file.read_text())
    assert config["type"] == "external_account" and config["audience"] == sandbox.gcp.audience
    assert config["token_url"] == sandbox.gcp.token_url
    assert config["service_account_impersonation_url"].endswith(
        f"{stack.GCP_SERVICE_ACCOUNT}:generateAccessToken"
    )
    before = len(refreshes(audit_events, "gcp-deploy"))

    seen = later_step(job, GCP_STEP)
    assert seen["authorization"] and len(set(seen["tokens"])) == 2
    for token in seen["tokens"]:
        described = sandbox.gcp.describe(token)
        assert described is not None and described.service_account == stack.GCP_SERVICE_ACCOUNT
    # The executable refreshed the session for the library's STS exchange (google-auth keeps the
    # federated token of an impersonating credential for its hour, and impersonates again with it).
    assert len(refreshes(audit_events, "gcp-deploy")) - before == 1

    last = job.refresh_token()
    job.end()
    assert_refresh_refused(sandbox.broker_url, last)


def test_google_auth_refreshes_through_the_executable_source(
    tmp_path, sandbox, serve_config, audit_events, client
):
    serve(sandbox, serve_config, assertion_lifetime=60)
    job = client(tmp_path, sandbox, "gcp-direct")
    assert "service_account_impersonation_url" not in json.loads(
        Path(job.env["GOOGLE_APPLICATION_CREDENTIALS"]).read_text()
    )
    before = len(refreshes(audit_events, "gcp-direct"))

    seen = later_step(job, GCP_STEP)
    assert seen["authorization"] and len(set(seen["tokens"])) == 2
    for token in seen["tokens"]:
        described = sandbox.gcp.describe(token)
        assert described is not None and described.principal == sandbox.gcp.principal("role:gcp-direct")
    # Past expiry, the library ran the executable again, which refreshed the session at the broker.
    assert len(refreshes(audit_events, "gcp-direct")) - before == 2

    last = job.refresh_token()
    job.end()
    assert_refresh_refused(sandbox.broker_url, last)


AZURE_STEP = """
    import json, os, time
    from azure.identity import WorkloadIdentityCredential
    scope = "https://management.azure.com/.default"
    path = os.environ["AZURE_FEDERATED_TOKEN_FILE"]
    first = open(path).read()
    tokens = [WorkloadIdentityCredential().get_token(scope).token]
    deadline = time.monotonic() + 60
    while open(path).read() == first and time.monotonic() < deadline:
        time.sleep(0.2)
    # A credential made later (a later step, or azure-identity's next file read) gets the new file.
    tokens.append(WorkloadIdentityCredential().get_token(scope).token)
    print(json.dumps({"tokens": tokens, "rewritten": open(path).read() != first}))
"""


def test_azure_identity_reads_a_federated_token_file_kept_fresh(
    tmp_path, sandbox, serve_config, audit_events, client
):
    serve(sandbox, serve_config, assertion_lifetime=95)  # the file is rewritten every few seconds
    job = client(tmp_path, sandbox, "azure-deploy")
    token_file = Path(job.env["AZURE_FEDERATED_TOKEN_FILE"])
    assert token_file.parent == job.session_dir and stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert job.env["AZURE_AUTHORITY_HOST"] == sandbox.azure.url and "AZURE_ACCESS_TOKEN" not in job.env
    accepted = len(sandbox.azure.accepted)

    seen = later_step(
        job, AZURE_STEP, {"REQUESTS_CA_BUNDLE": str(sandbox.ca_path), "SSL_CERT_FILE": str(sandbox.ca_path)}
    )
    assert seen["rewritten"], "the refresher rewrote the token file before the assertion expired"
    assert len(set(seen["tokens"])) == 2 and all(sandbox.azure.describe(t) for t in seen["tokens"])
    # Entra accepted each assertion the file held when read (and the broker's own, per refresh).
    new = sandbox.azure.accepted[accepted:]
    assert len({c["jti"] for c in new}) == len(new) >= 2
    assert all(c["sub"] == "role:azure-deploy" for c in new)
    assert len(refreshes(audit_events, "azure-deploy")) >= 1

    last = job.refresh_token()
    job.end()
    assert not job.session_dir.exists()
    assert_refresh_refused(sandbox.broker_url, last)
    time.sleep(1)
    assert not list(job.session_dir.parent.glob(job.session_dir.name + "*")), (
        "the refresher wrote nothing after"
    )


def test_a_refused_refresh_shows_the_brokers_message(tmp_path, sandbox, serve_config, client):
    serve(sandbox, serve_config, assertion_lifetime=300)
    job = client(tmp_path, sandbox, "deploy-prod")
    requests.post(
        f"{sandbox.broker_url}/v1/revoke",
        headers={"Authorization": f"Bearer {job.refresh_token()}"},
        timeout=30,
    )
    env = job_env({**job.env, **aws_env(job, sandbox)})
    proc = subprocess.run(
        [sys.executable, "-c", "import boto3; boto3.client('sts').get_caller_identity()"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert (
        "the broker refused to refresh this job's session: HTTP 401 invalid_token: "
        "the session has ended; start a new one with an exchange (request id"
    ) in proc.stderr
    job.end()


def test_concurrent_tools_share_one_refresh(tmp_path, sandbox, serve_config, audit_events, client):
    """Two tools asking at once must not both present the refresh token: that would end the session."""
    serve(sandbox, serve_config, assertion_lifetime=300)
    job = client(tmp_path, sandbox, "deploy-prod")
    env = job_env({**job.env, **aws_env(job, sandbox)})
    script = "import boto3; print(boto3.client('sts').get_caller_identity()['Arn'])"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    assert not [e for e in audit_events if e.get("type") == "alert"], "no refresh token was presented twice"
    job.end()
    assert os.path.exists(job.session_dir) is False
