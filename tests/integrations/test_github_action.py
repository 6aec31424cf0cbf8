"""The GitHub Action, run for real by nektos act (host mode, no Docker) against `ci-broker serve`.

The workflow uses the action the way users do (`uses: OWNER/REPO/actions/credentials@REF`; act's
--local-repository maps that to a copy of actions/credentials). The job's OIDC token comes from a
local stand-in for GitHub's token endpoint, minted by the sandbox's GitHub-like issuer, and a later
step uses the exported credentials against the sandbox's STS with boto3.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from endpoints import OIDCRequestEndpoint, ScriptedBroker
from support import ACTION_DIR, AZURE, act_path, assert_no_secret, assert_refresh_refused, git_repo
from test_action import job_token

from broker.sandbox.issuer import github_claims
from broker.sandbox.stack import free_port

ACTION = "example/ci-broker/actions/credentials@v1"
WATCH = "example/watch@v1"

# Runs as a step after the action: uses the credentials, shows (masked) values, hands them to the
# test through a file outside the workspace, and looks for them in the workspace and RUNNER_TEMP.
USE_CREDENTIALS = """
import json, os, pathlib, boto3
arn = boto3.client("sts").get_caller_identity()["Arn"]
print("caller:", arn)
print("secret seen by the step:", os.environ["AWS_SECRET_ACCESS_KEY"])
print("secret from the outputs:", os.environ["OUT_SECRET"])
names = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION",
         "AWS_DEFAULT_REGION", "CI_BROKER_CLOUD", "CI_BROKER_EXPIRES_AT"]
found = {n: os.environ.get(n) for n in names}
secrets = [found[n].encode() for n in names[:3]]
for root in (os.environ["GITHUB_WORKSPACE"], os.environ["RUNNER_TEMP"]):
    for path in pathlib.Path(root).rglob("*"):
        if path.is_file() and any(s in path.read_bytes() for s in secrets):
            print("LEAK:", path)
outputs = {k[4:].lower(): v for k, v in os.environ.items() if k.startswith("OUT_")}
pathlib.Path(os.environ["HANDOFF"]).write_text(json.dumps({"env": found, "outputs": outputs, "arn": arn}))
print("workspace scanned")
"""

WATCH_POST = """
const fs = require('fs');
const file = process.env.AZURE_FEDERATED_TOKEN_FILE;
console.log(`watcher: federated token file ${file && fs.existsSync(file) ? 'STILL THERE' : 'gone'}`);
"""


@dataclass
class ActRun:
    returncode: int
    output: str
    seconds: float

    def step_lines(self) -> list[str]:
        return [line.split("|", 1)[1].strip() for line in self.output.splitlines() if "|" in line]


def run_act(
    tmp: Path,
    steps: list[dict[str, Any]],
    env: dict[str, str],
    *,
    permissions: dict[str, str] | None = None,
    timeout: int = 120,
    watch_post: str = WATCH_POST,
) -> ActRun:
    import time

    repo = tmp / "repo"
    (repo / ".github" / "workflows").mkdir(parents=True)
    workflow = {
        "name": "deploy",
        "on": "push",
        "permissions": permissions or {"id-token": "write", "contents": "read"},
        "jobs": {"deploy": {"runs-on": "ubuntu-latest", "steps": steps}},
    }
    (repo / ".github" / "workflows" / "deploy.yml").write_text(json.dumps(workflow, indent=2))
    git_repo(repo)
    # Only the action directory, not the whole project: act copies what it is pointed at.
    action_repo = tmp / "action-repo"
    shutil.copytree(ACTION_DIR, action_repo / "actions" / "credentials")
    watch_repo = tmp / "watch-repo"
    watch_repo.mkdir()
    (watch_repo / "action.yml").write_text(
        "name: watch\nruns:\n  using: node24\n  main: main.js\n  post: post.js\n"
    )
    (watch_repo / "main.js").write_text("")
    (watch_repo / "post.js").write_text(watch_post)
    home = tmp / "home"
    home.mkdir()
    argv = [
        act_path(),
        "push",
        "-W",
        ".github/workflows/deploy.yml",
        "-P",
        "ubuntu-latest=-self-hosted",
        "--no-cache-server",
        "--local-repository",
        f"example/ci-broker@v1={action_repo}",
        "--local-repository",
        f"example/watch@v1={watch_repo}",
    ]
    for name, value in env.items():
        argv += ["--env", f"{name}={value}"]
    proc_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CI_BROKER_", "GITHUB_", "ACTIONS_", "AWS_", "AZURE_", "ARM_"))
    }
    proc_env.update(HOME=str(home), ACT_DISABLE_VERSION_CHECK="1", NO_COLOR="1")
    started = time.monotonic()
    proc = subprocess.run(
        argv,
        cwd=repo,
        env=proc_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    return ActRun(proc.returncode, proc.stdout + proc.stderr, time.monotonic() - started)


def action_step(broker_url: str, **inputs: str) -> dict[str, Any]:
    return {
        "id": "creds",
        "uses": ACTION,
        "with": {"broker-url": broker_url, "role": "deploy-prod", **inputs},
    }


@pytest.fixture
def github_oidc(served_broker):
    """GitHub's token endpoint, minting the sandbox issuer's tokens; `.claims` overrides them."""
    overrides: dict[str, Any] = {}

    def mint(audience: str) -> str:
        return served_broker.box.github.mint(github_claims(aud=audience, **overrides))

    with OIDCRequestEndpoint(mint) as endpoint:
        endpoint.claims = overrides
        yield endpoint


@pytest.fixture
def github_oidc_sessions(served_session_broker):
    """GitHub's token endpoint for the broker with sessions."""

    def mint(audience: str) -> str:
        return served_session_broker.box.github.mint(github_claims(aud=audience))

    with OIDCRequestEndpoint(mint) as endpoint:
        yield endpoint


def oidc_env(endpoint: OIDCRequestEndpoint) -> dict[str, str]:
    return {
        "ACTIONS_ID_TOKEN_REQUEST_URL": endpoint.request_url,
        "ACTIONS_ID_TOKEN_REQUEST_TOKEN": endpoint.request_token,
    }


def test_aws_credentials_work_in_later_steps_and_stay_masked(tmp_path, served_broker, github_oidc):
    handoff = tmp_path / "handoff.json"
    script = tmp_path / "use_credentials.py"
    script.write_text(USE_CREDENTIALS)
    outputs = ["cloud", "expires-at", "access-key-id", "secret-access-key", "session-token", "region"]
    steps = [
        {"uses": WATCH},
        action_step(served_broker.url, **{"output-credentials": "true"}),
        {
            "name": "use the credentials",
            "run": f"{sys.executable} {script}",
            "env": {
                "AWS_ENDPOINT_URL_STS": served_broker.box.sts.url,
                "HANDOFF": str(handoff),
                "OUT_SECRET": "${{ steps.creds.outputs.secret-access-key }}",
                **{
                    f"OUT_{name.upper().replace('-', '_')}": f"${{{{ steps.creds.outputs.{name} }}}}"
                    for name in outputs
                },
            },
        },
    ]
    run = run_act(tmp_path, steps, oidc_env(github_oidc))
    assert run.returncode == 0, run.output
    seen = json.loads(handoff.read_text())
    env, outs = seen["env"], seen["outputs"]
    # The credentials are the sandbox STS's, for the role the broker mapped deploy-prod to.
    assert seen["arn"].startswith("arn:aws:sts::123456789012:assumed-role/deploy-prod/")
    assert "caller: arn:aws:sts::123456789012:assumed-role/deploy-prod/" in run.output
    assert env["AWS_REGION"] == env["AWS_DEFAULT_REGION"] == "eu-west-1"
    assert env["CI_BROKER_CLOUD"] == "aws"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", env["CI_BROKER_EXPIRES_AT"])
    assert outs["cloud"] == "aws" and outs["expires_at"] == env["CI_BROKER_EXPIRES_AT"]
    assert outs["access_key_id"] == env["AWS_ACCESS_KEY_ID"]
    assert outs["secret_access_key"] == env["AWS_SECRET_ACCESS_KEY"]
    assert outs["session_token"] == env["AWS_SESSION_TOKEN"] and outs["region"] == "eu-west-1"
    # Masked wherever act shows them; nothing secret in the workspace or RUNNER_TEMP.
    secrets = [
        env["AWS_ACCESS_KEY_ID"],
        env["AWS_SECRET_ACCESS_KEY"],
        env["AWS_SESSION_TOKEN"],
        *github_oidc.issued,
    ]
    assert_no_secret(run.output, secrets, "act's output")
    assert "secret seen by the step: ***" in run.output
    assert "secret from the outputs: ***" in run.output
    assert "workspace scanned" in run.output and "LEAK:" not in run.output
    assert github_oidc.audiences == [served_broker.url]
    assert_no_secret(served_broker.log_text(), secrets, "the broker's log")


def test_missing_id_token_permission_fails_with_the_fix(tmp_path, served_broker):
    # Without `id-token: write` the runner gives the job no token request URL or token.
    run = run_act(tmp_path, [action_step(served_broker.url)], {}, permissions={"contents": "read"})
    assert run.returncode != 0
    assert "this job cannot request an OIDC token: it lacks the id-token permission." in run.output
    assert "Fix: add 'permissions: { id-token: write, contents: read }'" in run.output


def test_403_shows_the_brokers_answer_and_points_at_explain(tmp_path, served_broker, github_oidc):
    github_oidc.claims["repository_id"] = "1"  # a repository no rule of deploy-prod names
    run = run_act(tmp_path, [action_step(served_broker.url)], oidc_env(github_oidc))
    assert run.returncode != 0, run.output
    match = re.search(
        r"the broker denied role 'deploy-prod': HTTP 403 access_denied: .+ "
        r"\(request id ([0-9a-f]+)\)",
        run.output,
    )
    assert match, run.output
    assert match.group(1) in served_broker.log_text(), "the id leads to the broker's audit event"
    assert "ci-broker explain --config CONFIG --role deploy-prod --claims CLAIMS.json" in run.output
    assert_no_secret(run.output, github_oidc.issued, "act's output")


def test_401_shows_the_brokers_answer(tmp_path, served_broker, github_oidc):
    import time

    # A token the broker refuses although its audience is right: issued an hour ago (too old).
    github_oidc.claims.update(iat=int(time.time()) - 3600, nbf=int(time.time()) - 3600)
    run = run_act(tmp_path, [action_step(served_broker.url)], oidc_env(github_oidc))
    assert run.returncode != 0
    assert re.search(
        r"the broker refused this job's token: HTTP 401 invalid_token: .+ "
        r"\(request id [0-9a-f]+\)",
        run.output,
    ), run.output
    assert "Check that audience matches the broker's server.audience" in run.output
    assert github_oidc.audiences == [served_broker.url]


def test_unreachable_broker_is_retried_then_fails(tmp_path, github_oidc):
    step = action_step(f"http://127.0.0.1:{free_port()}")
    step["env"] = {"CI_BROKER_MAX_ATTEMPTS": "2"}
    run = run_act(tmp_path, [step], oidc_env(github_oidc))
    assert run.returncode != 0
    assert re.search(r"did not answer; trying again in [0-9.]+s \(attempt 1 of 2\)", run.output)
    assert "did not answer; gave up after 2 attempts." in run.output


def test_azure_federated_token_file_is_removed_by_the_post_step(tmp_path):
    check = textwrap.dedent("""
        f="$AZURE_FEDERATED_TOKEN_FILE"
        case "$f" in "$RUNNER_TEMP"/*) echo "token file under RUNNER_TEMP";; esac
        test "$(stat -c %a "$f")" = 600 && echo "token file mode 600"
        test "$ARM_OIDC_TOKEN_FILE_PATH" = "$f" && test "$ARM_USE_OIDC" = true && echo "azurerm set"
        echo "tenant=$ARM_TENANT_ID client=$AZURE_CLIENT_ID"
    """)
    with (
        OIDCRequestEndpoint(job_token) as oidc,
        ScriptedBroker(ScriptedBroker.granted("azure", AZURE)) as broker,
    ):
        steps = [{"uses": WATCH}, action_step(broker.url), {"name": "check", "run": check}]
        run = run_act(tmp_path, steps, oidc_env(oidc))
    assert run.returncode == 0, run.output
    lines = run.step_lines()
    for expected in (
        "token file under RUNNER_TEMP",
        "token file mode 600",
        "azurerm set",
        f"tenant={AZURE['tenant_id']} client={AZURE['client_id']}",
    ):
        assert expected in lines, run.output
    # Post steps run in reverse order: ours, then the watcher's, which must find the file gone.
    assert "ci-broker: removed the federated token file" in lines
    assert "watcher: federated token file gone" in lines, run.output
    assert_no_secret(run.output, [AZURE["access_token"], AZURE["federated_token"]], "act's output")


GCP_AZURE_CHECK = """
import json, os, pathlib
names = ["CLOUDSDK_AUTH_ACCESS_TOKEN", "GOOGLE_OAUTH_ACCESS_TOKEN", "AZURE_ACCESS_TOKEN",
         "ARM_TENANT_ID", "ARM_CLIENT_ID", "ARM_SUBSCRIPTION_ID", "AZURE_TENANT_ID",
         "AZURE_CLIENT_ID", "AZURE_SUBSCRIPTION_ID", "CI_BROKER_CLOUD"]
print("gcloud token seen by the step:", os.environ["CLOUDSDK_AUTH_ACCESS_TOKEN"])
print("azure token seen by the step:", os.environ["AZURE_ACCESS_TOKEN"])
pathlib.Path(os.environ["HANDOFF"]).write_text(json.dumps({n: os.environ.get(n) for n in names}))
"""


def test_gcp_and_azure_roles_export_their_tools_environment(tmp_path, served_broker, github_oidc):
    roles = served_broker.box.config_dict()["roles"]
    if not {"gcp-deploy", "azure-deploy"} <= set(roles):
        pytest.skip("the sandbox has no gcp-deploy / azure-deploy role")
    from broker.sandbox import stack

    handoff = tmp_path / "handoff.json"
    script = tmp_path / "check.py"
    script.write_text(GCP_AZURE_CHECK)
    gcp = action_step(served_broker.url, role="gcp-deploy", **{"output-credentials": "true"})
    azure = action_step(served_broker.url, role="azure-deploy")
    azure["id"] = "azure"
    steps = [
        gcp,
        azure,
        {
            "name": "check",
            "run": f"{sys.executable} {script}",
            "env": {"HANDOFF": str(handoff), "SA": "${{ steps.creds.outputs.service-account }}"},
        },
        {
            "name": "outputs",
            "run": 'echo "sa=$SA cloud=${{ steps.azure.outputs.cloud }}"',
            "env": {"SA": "${{ steps.creds.outputs.service-account }}"},
        },
    ]
    run = run_act(tmp_path, steps, oidc_env(github_oidc))
    assert run.returncode == 0, run.output
    env = json.loads(handoff.read_text())
    assert (
        env["CLOUDSDK_AUTH_ACCESS_TOKEN"]
        and env["GOOGLE_OAUTH_ACCESS_TOKEN"] == env["CLOUDSDK_AUTH_ACCESS_TOKEN"]
    )
    for prefix in ("ARM", "AZURE"):
        assert env[f"{prefix}_TENANT_ID"] == stack.AZURE_TENANT_ID
        assert env[f"{prefix}_CLIENT_ID"] == stack.AZURE_CLIENT_ID
        assert env[f"{prefix}_SUBSCRIPTION_ID"] == stack.AZURE_SUBSCRIPTION_ID
    assert env["CI_BROKER_CLOUD"] == "azure"  # the later step's export wins
    assert f"sa={stack.GCP_SERVICE_ACCOUNT} cloud=azure" in run.step_lines()
    secrets = [env["CLOUDSDK_AUTH_ACCESS_TOKEN"], env["AZURE_ACCESS_TOKEN"], *github_oidc.issued]
    assert_no_secret(run.output, secrets, "act's output")
    assert "gcloud token seen by the step: ***" in run.output
    assert "azure token seen by the step: ***" in run.output
    assert len(github_oidc.issued) == 2, "each step asks for its own job token"


# A later step of a long job: boto3 through the action's credential_process profile, asking three
# times past the 15-minute refresh window. It hands the session's last refresh token to the test
# through a file outside the workspace (only so the test can try it after the job).
LONG_JOB_STEP = """
import glob, json, os, pathlib, boto3
session = boto3.session.Session()
sts = session.client("sts")
keys = set()
for _ in range(3):
    print("caller:", sts.get_caller_identity()["Arn"])
    keys.add(session.get_credentials().get_frozen_credentials().access_key)
print("distinct keys:", len(keys))
print("no static keys:", not any(k in os.environ for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")))
state = pathlib.Path(os.environ["AWS_CONFIG_FILE"]).parent / "state.json"
answer = json.loads(json.loads(state.read_text())["answer"])
pathlib.Path(os.environ["HANDOFF"]).write_text(json.dumps({"dir": str(state.parent), "refresh_token": answer["session"]["refresh_token"]}))
"""


def test_a_long_job_refreshes_in_a_later_step_and_the_session_ends_with_the_job(
    tmp_path, served_session_broker, github_oidc_sessions
):
    broker = served_session_broker
    handoff = tmp_path / "handoff.json"
    script = tmp_path / "long_job.py"
    script.write_text(LONG_JOB_STEP)
    steps = [
        action_step(broker.url, refresh="true"),
        {
            "name": "a later step",
            "run": f"{sys.executable} {script}",
            "env": {"AWS_ENDPOINT_URL_STS": broker.box.sts.url, "HANDOFF": str(handoff)},
        },
    ]
    run = run_act(tmp_path, steps, oidc_env(github_oidc_sessions))
    assert run.returncode == 0, run.output
    lines = run.step_lines()
    assert "distinct keys: 3" in lines and "no static keys: True" in lines, run.output
    assert (
        sum(line.startswith("caller: arn:aws:sts::123456789012:assumed-role/deploy-prod/") for line in lines)
        == 3
    )
    assert "ci-broker: session revoked" in lines and "ci-broker: removed the session files" in lines
    seen = json.loads(handoff.read_text())
    assert not Path(seen["dir"]).exists(), "the post step removed every file"
    assert_refresh_refused(broker.url, seen["refresh_token"])  # after the job
    assert_no_secret(run.output, [seen["refresh_token"], *github_oidc_sessions.issued], "act's output")
    assert_no_secret(broker.log_text(), [seen["refresh_token"]], "the broker's log")
