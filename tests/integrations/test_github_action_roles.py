"""Several roles in one GitHub job, the audience pinning and the account guard, under nektos act
against a real `ci-broker serve` (issue 20, items 6-9). One workflow run checks them all, as act
runs are slow: a step whose broker-url was pointed elsewhere sends nothing; two AWS roles in two
accounts land in two named profiles that boto3 uses against the sandbox's STS; a GCP role beside
them; a role in an account the step does not allow exports nothing; the post steps clear it all.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import SandboxBroker
from endpoints import OIDCRequestEndpoint, ScriptedBroker
from serving import ServedBroker
from support import AWS, assert_no_secret
from test_github_action import ACTION, WATCH, oidc_env, run_act

from broker.sandbox.issuer import github_claims
from broker.sandbox.stack import DEPLOY_ROLE_ARN, Sandbox, free_port

# act drives the job and the fixture starts `ci-broker serve`: out of `make check`'s fast tier.
pytestmark = [pytest.mark.act, pytest.mark.gunicorn]

AUDIT_ROLE_ARN = "arn:aws:iam::210987654321:role/audit-read"

# Runs after the action's steps: each profile through boto3 against the sandbox's STS.
USE_PROFILES = """
import json, os, pathlib, boto3
seen = {"arns": {}, "regions": {}, "env": {}}
for profile in ("prod", "audit"):
    sts = boto3.session.Session(profile_name=profile).client("sts")
    seen["arns"][profile] = sts.get_caller_identity()["Arn"]
    seen["regions"][profile] = sts.meta.region_name
    print(f"{profile}:", seen["arns"][profile])
for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_REGION",
             "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "CLOUDSDK_AUTH_ACCESS_TOKEN"):
    seen["env"][name] = os.environ.get(name)
seen["outputs"] = {k[4:].lower(): v for k, v in os.environ.items() if k.startswith("OUT_")}
secret = boto3.session.Session(profile_name="prod").get_credentials().get_frozen_credentials().secret_key
print("prod secret as a step would print it:", secret)
seen["secrets"] = [secret, os.environ["CLOUDSDK_AUTH_ACCESS_TOKEN"]]
pathlib.Path(os.environ["HANDOFF"]).write_text(json.dumps(seen))
"""

# The watcher's post step runs after every post step of ours (post steps run in reverse order).
WATCH_AFTER = """
const fs = require('fs');
const names = ['AWS_CONFIG_FILE', 'AWS_SHARED_CREDENTIALS_FILE', 'CLOUDSDK_AUTH_ACCESS_TOKEN', 'CI_BROKER_CLOUD'];
console.log(`watcher: still set: [${names.filter((n) => process.env[n]).join(' ')}]`);
const dir = require('path').join(process.env.RUNNER_TEMP, 'ci-broker-aws-profiles');
console.log(`watcher: profile files ${dir && fs.existsSync(dir) ? 'STILL THERE' : 'gone'}`);
"""


@pytest.fixture(scope="module")
def roles_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxBroker]:
    """`ci-broker serve` with a second AWS role, in another account, that GitHub jobs may use."""
    workdir = tmp_path_factory.mktemp("roles-broker")
    with Sandbox(workdir, broker_port=free_port()) as box:
        box.sts.trust_role(AUDIT_ROLE_ARN, "audit-read")
        config = box.config_dict()
        prod = config["roles"]["deploy-prod"]
        assert prod["aws"]["role_arn"] == DEPLOY_ROLE_ARN
        config["roles"]["audit-read"] = {
            "cloud": "aws",
            "aws": {
                "role_arn": AUDIT_ROLE_ARN,
                "region": "us-east-2",
                "duration": 900,
                "sts_endpoint": box.sts.url,
            },
            "allow": prod["allow"],
        }
        served = ServedBroker(
            box.write_config(config, name="roles.yaml"), f"127.0.0.1:{box.broker_port}", workdir / "serve.log"
        )
        try:
            served.wait_ready()
            yield SandboxBroker(box, served)
        finally:
            served.stop()


def step(step_id: str, broker_url: str, role: str, **inputs: str) -> dict[str, Any]:
    return {"id": step_id, "uses": ACTION, "with": {"broker-url": broker_url, "role": role, **inputs}}


def test_several_roles_in_one_job_with_the_audience_pinned_and_the_account_guarded(tmp_path, roles_broker):
    broker = roles_broker
    handoff = tmp_path / "handoff.json"
    script = tmp_path / "use_profiles.py"
    script.write_text(USE_PROFILES)
    outputs = {
        "OUT_PROD_ACCOUNT": "${{ steps.prod.outputs.aws-account-id }}",
        "OUT_PROD_ARN": "${{ steps.prod.outputs.authenticated-arn }}",
        "OUT_AUDIT_ACCOUNT": "${{ steps.audit.outputs.aws-account-id }}",
        "OUT_GCP_CLOUD": "${{ steps.gcp.outputs.cloud }}",
        "OUT_ATTACK": "${{ steps.attack.outcome }}",
        "OUT_GUARDED": "${{ steps.guarded.outcome }}",
        "OUT_GUARDED_CLOUD": "${{ steps.guarded.outputs.cloud }}",
    }

    def mint(audience: str) -> str:
        return broker.box.github.mint(github_claims(aud=audience))

    with OIDCRequestEndpoint(mint) as oidc, ScriptedBroker(ScriptedBroker.granted("aws", AWS)) as elsewhere:
        steps = [
            {"uses": WATCH},
            # broker-url pointed at another server while the audience stays the real broker's.
            {**step("attack", elsewhere.url, "deploy-prod", audience=broker.url), "continue-on-error": True},
            step(
                "prod",
                broker.url,
                "deploy-prod",
                **{"aws-profile": "prod", "allowed-account-ids": "123456789012"},
            ),
            step("audit", broker.url, "audit-read", **{"aws-profile": "audit"}),
            step("gcp", broker.url, "gcp-deploy"),
            {
                **step("guarded", broker.url, "audit-read", **{"allowed-account-ids": "123456789012"}),
                "continue-on-error": True,
            },
            {
                "name": "use the profiles",
                "run": f"{sys.executable} {script}",
                "env": {"HANDOFF": str(handoff), **outputs},
            },
        ]
        env = {**oidc_env(oidc), "AWS_ENDPOINT_URL_STS": broker.box.sts.url}
        run = run_act(tmp_path, steps, env, timeout=240, watch_post=WATCH_AFTER)
        seen_elsewhere = list(elsewhere.seen)
    assert run.returncode == 0, run.output
    seen = json.loads(handoff.read_text())
    lines = run.step_lines()

    # Item 6: the other server received nothing, and the step said why.
    assert seen_elsewhere == []
    assert seen["outputs"]["attack"] == "failure"
    assert (
        f"refusing to send this job's OIDC token to {elsewhere.url}: the token is for {broker.url}."
        in run.output
    )

    # Item 7: the claims policies match on, shown before each exchange.
    assert (
        "repository_id: 892734123" in lines
        and "job_workflow_ref: " + ("octo-org/octo-repo/.github/workflows/deploy.yml@refs/heads/main")
        in lines
    )

    # Item 8: two AWS roles, two accounts, two profiles; no keys in the environment.
    assert seen["arns"]["prod"].startswith("arn:aws:sts::123456789012:assumed-role/deploy-prod/")
    assert seen["arns"]["audit"].startswith("arn:aws:sts::210987654321:assumed-role/audit-read/")
    assert seen["regions"] == {"prod": "eu-west-1", "audit": "us-east-2"}
    env_seen = seen["env"]
    assert env_seen["AWS_ACCESS_KEY_ID"] is None and env_seen["AWS_PROFILE"] is None
    assert env_seen["AWS_REGION"] is None, "each profile carries its own region"
    assert Path(env_seen["AWS_CONFIG_FILE"]).parent == Path(env_seen["AWS_SHARED_CREDENTIALS_FILE"]).parent
    assert env_seen["CLOUDSDK_AUTH_ACCESS_TOKEN"] and seen["outputs"]["gcp_cloud"] == "gcp"

    # Item 9: the account outputs, from AWS itself, and the guard.
    assert seen["outputs"]["prod_account"] == "123456789012"
    assert seen["outputs"]["prod_arn"] == seen["arns"]["prod"]
    assert seen["outputs"]["audit_account"] == "210987654321"
    assert seen["outputs"]["guarded"] == "failure" and seen["outputs"]["guarded_cloud"] == ""
    assert (
        "role 'audit-read' gave credentials for AWS account 210987654321, which allowed-account-ids "
        "does not list; nothing was exported."
    ) in run.output

    # The post steps cleared every variable and removed the profile files before the watcher ran.
    assert "watcher: still set: []" in lines, run.output
    assert "watcher: profile files gone" in lines
    assert not Path(env_seen["AWS_CONFIG_FILE"]).parent.exists()
    assert "prod secret as a step would print it: ***" in lines
    assert_no_secret(run.output, [*seen["secrets"], *oidc.issued], "act's output")
    assert len(oidc.issued) == 5, "each step asks for its own job token"
