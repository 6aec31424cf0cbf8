"""The AWS example applied for real, against moto's IAM, and used by `ci-broker serve` (issue 21).

terraform, with the hashicorp/aws provider from the local mirror, applies examples/aws against
moto's server (IAM and STS through the provider's `endpoints`), behind the sandbox's verifying STS.
What it created is read back through boto3. Then `ci-broker serve` runs with the roles snippet
the apply printed, and its assertions go to that STS, which evaluates the trust policy the module
wrote, as read back from moto's IAM (Federated principal, StringEquals on aud and sub,
sts:TagSession): a role's own assertion assumes it, another role's does not. `terraform destroy`
must leave IAM as it found it.

The broker's issuer is an https URL without a port, as IAM requires; the verifying STS is told
where on 127.0.0.1 that issuer's discovery document and JWKS are served.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from botocore.exceptions import ClientError

from broker.keys import generate_private_key, private_key_pem
from broker.sandbox.aws import LocalSTS
from broker.sandbox.issuer import LocalIssuer, github_claims
from broker.sandbox.stack import free_port
from tests.serving import ServedBroker

from .workspace import Workspace, copy_terraform_tree, local_aws_provider, moto_client

TERRAFORM_CHECK = (
    "terraform apply and destroy of the AWS example against moto, and its trust used by the broker"
)

pytestmark = pytest.mark.timeout(900)

ISSUER = "https://broker.ci-broker.test"
ISSUER_HOST = "broker.ci-broker.test"
ACCOUNT = "123456789012"
ROLE_PATH = "/ci-broker/"
REPOSITORY_RULE = [{"provider": "github", "claims": {"repository_id": "892734123", "ref": "refs/heads/main"}}]
S3_READ = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::artifacts/*"}],
}


def _iam_inventory(iam: Any) -> dict[str, list[str]]:
    """Everything a trust module could leave behind, by ARN or name."""
    return {
        "roles": sorted(r["Arn"] for r in iam.list_roles()["Roles"]),
        "oidc_providers": sorted(
            p["Arn"] for p in iam.list_open_id_connect_providers()["OpenIDConnectProviderList"]
        ),
        "policies": sorted(p["Arn"] for p in iam.list_policies(Scope="Local")["Policies"]),
    }


@pytest.fixture(scope="module")
def github() -> Iterator[LocalIssuer]:
    with LocalIssuer() as issuer:
        yield issuer


@pytest.fixture(scope="module")
def broker_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def sts(broker_port) -> Iterator[LocalSTS]:
    # No role is registered by hand: every role this STS admits is judged by its IAM trust policy.
    with LocalSTS(ISSUER, served_at={ISSUER: f"http://127.0.0.1:{broker_port}"}) as local:
        yield local


@pytest.fixture(scope="module")
def iam(sts):
    return moto_client("iam", sts.url)


@pytest.fixture(scope="module")
def policies(iam) -> Iterator[dict[str, str]]:
    """The customer managed policies the roles refer to (moto knows no AWS managed policies)."""
    arns = {
        name: iam.create_policy(PolicyName=f"ci-broker-tf-{name}", PolicyDocument=json.dumps(S3_READ))[
            "Policy"
        ]["Arn"]
        for name in ("managed", "boundary")
    }
    yield arns
    for arn in arns.values():
        iam.delete_policy(PolicyArn=arn)


@pytest.fixture(scope="module")
def inputs(policies) -> dict[str, Any]:
    """The example's inputs: two roles, one with every per-role option, a path and a prefix."""
    return {
        "issuer_url": ISSUER,
        "role_path": ROLE_PATH,
        "role_name_prefix": "cib-",
        "roles": {
            "deploy-prod": {
                "description": "Deploys main to production",
                "managed_policy_arns": [policies["managed"]],
                "inline_policies": {"s3-read": json.dumps(S3_READ)},
                "permissions_boundary": policies["boundary"],
                "max_session_duration": 7200,
                "duration": 7200,
                "region": "eu-west-1",
                "session_tags": {"repository": "{repository}", "ref": "{ref}"},
            },
            "terraform-plan": {"duration": 900},
        },
        "allow_rules": {"deploy-prod": REPOSITORY_RULE, "terraform-plan": REPOSITORY_RULE},
        "tags": {"owner": "platform"},
    }


@pytest.fixture(scope="module")
def workspace(aws_provider_mirror, sts, tmp_path_factory) -> Workspace:
    tree = copy_terraform_tree(tmp_path_factory.mktemp("aws-apply"))
    workspace = Workspace(tree / "examples" / "aws", aws_provider_mirror)
    workspace.override_provider(local_aws_provider(sts.url))
    return workspace.init()


class Applied:
    """The example's state in moto: applied on first use, destroyed by the destroy test or at the end."""

    def __init__(self, workspace: Workspace, var_file: Path) -> None:
        self.workspace, self.var_file = workspace, var_file
        self.outputs: dict[str, Any] | None = None

    def ensure(self) -> dict[str, Any]:
        if self.outputs is None:
            self.workspace.checked("apply", "-auto-approve", "-input=false", f"-var-file={self.var_file}")
            self.outputs = self.workspace.outputs()
        return self.outputs

    def destroy(self) -> None:
        self.workspace.checked("destroy", "-auto-approve", "-input=false", f"-var-file={self.var_file}")
        self.outputs = None


@pytest.fixture(scope="module")
def before_apply(iam, policies) -> dict[str, list[str]]:
    return _iam_inventory(iam)


@pytest.fixture(scope="module")
def example(workspace, inputs, before_apply) -> Iterator[Applied]:
    applied = Applied(workspace, workspace.write_vars("moto", inputs))
    yield applied
    if applied.outputs is not None:
        applied.destroy()


@pytest.fixture
def outputs(example) -> dict[str, Any]:
    return example.ensure()


@pytest.fixture(scope="module")
def served_broker(example, github, sts, broker_port, tmp_path_factory) -> Iterator[ServedBroker]:
    """`ci-broker serve` with the roles snippet the apply printed, its STS pointed at the local one."""
    roles = yaml.safe_load(example.ensure()["broker_roles_yaml"])["roles"]
    for role in roles.values():
        role["aws"]["sts_endpoint"] = sts.url
    workdir = tmp_path_factory.mktemp("served-broker")
    key = workdir / "broker-1.pem"
    key.write_bytes(private_key_pem(generate_private_key("ES256")))
    key.chmod(0o600)
    config = {
        "server": {"issuer": ISSUER, "signing_keys": [key.name], "replay_store": "memory"},
        "providers": {"github": {"issuer": github.url, "type": "github"}},
        "roles": roles,
    }
    path = workdir / "broker.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    broker = ServedBroker(path, f"127.0.0.1:{broker_port}", workdir / "serve.log")
    try:
        yield broker.wait_ready()
    finally:
        broker.stop()


def _exchange(broker: ServedBroker, github: LocalIssuer, role: str) -> requests.Response:
    token = github.mint(github_claims(aud=ISSUER))
    return requests.post(
        f"{broker.url}/v1/exchange",
        json={"role": role},
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    )


def _assertion_sent_for(sts: LocalSTS, role_arn: str) -> str:
    """The broker's last assertion for this role, as the STS received it."""
    calls = [
        c
        for c in sts.calls
        if c.get("Action") == "AssumeRoleWithWebIdentity" and c.get("RoleArn") == role_arn
    ]
    assert calls, f"the broker never asked the STS for {role_arn}"
    return calls[-1]["WebIdentityToken"]


def _assume(sts: LocalSTS, role_arn: str, assertion: str) -> dict[str, Any]:
    return moto_client("sts", sts.url).assume_role_with_web_identity(
        RoleArn=role_arn, RoleSessionName="tf-apply-test", WebIdentityToken=assertion, DurationSeconds=900
    )


def _expected_trust(role: str, provider_arn: str) -> dict[str, Any]:
    """The one trust policy the broker's assertions for `role` satisfy, and no other role's do."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "BrokerAssertionForThisRoleOnly",
                "Effect": "Allow",
                "Principal": {"Federated": provider_arn},
                "Action": sorted(["sts:AssumeRoleWithWebIdentity", "sts:TagSession"]),
                "Condition": {
                    "StringEquals": {
                        f"{ISSUER_HOST}:aud": "sts.amazonaws.com",
                        f"{ISSUER_HOST}:sub": f"role:{role}",
                    }
                },
            }
        ],
    }


def _normalised(document: dict[str, Any]) -> dict[str, Any]:
    statements = []
    for statement in document["Statement"]:
        actions = statement["Action"]
        statements.append(
            {**statement, "Action": sorted(actions if isinstance(actions, list) else [actions])}
        )
    return {**document, "Statement": statements}


def test_the_oidc_provider_is_the_issuers_and_accepts_only_the_brokers_audience(outputs, iam):
    arns = [p["Arn"] for p in iam.list_open_id_connect_providers()["OpenIDConnectProviderList"]]
    provider_arn = f"arn:aws:iam::{ACCOUNT}:oidc-provider/{ISSUER_HOST}"
    assert provider_arn in arns
    provider = iam.get_open_id_connect_provider(OpenIDConnectProviderArn=provider_arn)
    assert provider["Url"] == ISSUER_HOST
    assert provider["ClientIDList"] == ["sts.amazonaws.com"]
    # No thumbprint was given, so none was sent: IAM checks the chain against its own CAs.
    assert not provider.get("ThumbprintList")


def test_each_role_trusts_exactly_its_own_subject(outputs, iam, inputs):
    provider_arn = f"arn:aws:iam::{ACCOUNT}:oidc-provider/{ISSUER_HOST}"
    for name in inputs["roles"]:
        role = iam.get_role(RoleName=f"cib-{name}")["Role"]
        assert (
            role["Arn"] == outputs["role_arns"][name] == f"arn:aws:iam::{ACCOUNT}:role{ROLE_PATH}cib-{name}"
        )
        assert _normalised(role["AssumeRolePolicyDocument"]) == _expected_trust(name, provider_arn), name
        assert _normalised(json.loads(outputs["trust_policies"][name])) == _expected_trust(name, provider_arn)


def test_roles_carry_their_options(outputs, iam, inputs, policies):
    role = iam.get_role(RoleName="cib-deploy-prod")["Role"]
    assert role["Path"] == ROLE_PATH
    assert role["Description"] == "Deploys main to production"
    assert role["MaxSessionDuration"] == 7200
    assert role["PermissionsBoundary"]["PermissionsBoundaryArn"] == policies["boundary"]
    assert {t["Key"]: t["Value"] for t in role["Tags"]} == {
        "owner": "platform",
        "ci-broker-role": "deploy-prod",
    }
    attached = iam.list_attached_role_policies(RoleName="cib-deploy-prod")["AttachedPolicies"]
    assert [p["PolicyArn"] for p in attached] == [policies["managed"]]
    inline = iam.get_role_policy(RoleName="cib-deploy-prod", PolicyName="s3-read")
    assert inline["PolicyDocument"] == S3_READ
    plan_role = iam.get_role(RoleName="cib-terraform-plan")["Role"]
    assert plan_role["MaxSessionDuration"] == 3600 and "PermissionsBoundary" not in plan_role


def test_the_snippet_names_the_applied_roles(outputs, inputs):
    roles = yaml.safe_load(outputs["broker_roles_yaml"])["roles"]
    assert set(roles) == set(inputs["roles"])
    assert roles["deploy-prod"]["aws"] == {
        "role_arn": outputs["role_arns"]["deploy-prod"],
        "region": "eu-west-1",
        "duration": 7200,
        "session_tags": {"repository": "{repository}", "ref": "{ref}"},
    }
    assert roles["terraform-plan"]["aws"] == {
        "role_arn": outputs["role_arns"]["terraform-plan"],
        "duration": 900,
    }
    assert all(role["allow"] == REPOSITORY_RULE for role in roles.values())


@pytest.mark.parametrize("role", ["deploy-prod", "terraform-plan"])
def test_the_brokers_assertion_for_a_role_assumes_that_role(served_broker, github, sts, outputs, role):
    accepted = len(sts.accepted)
    response = _exchange(served_broker, github, role)
    assert response.status_code == 200, response.text
    credentials = response.json()["credentials"]
    claims = sts.accepted[accepted]
    assert (
        claims["iss"] == ISSUER and claims["aud"] == "sts.amazonaws.com" and claims["sub"] == f"role:{role}"
    )
    # The deploy role's session tags went through the trust policy's sts:TagSession.
    assert ("https://aws.amazon.com/tags" in claims) == (role == "deploy-prod")
    identity = moto_client(
        "sts",
        sts.url,
        aws_access_key_id=credentials["access_key_id"],
        aws_secret_access_key=credentials["secret_access_key"],
        aws_session_token=credentials["session_token"],
    ).get_caller_identity()
    assert identity["Arn"].startswith(f"arn:aws:sts::{ACCOUNT}:assumed-role/cib-{role}/")


@pytest.mark.parametrize(
    ("granted", "other"), [("deploy-prod", "terraform-plan"), ("terraform-plan", "deploy-prod")]
)
def test_another_roles_assertion_is_refused(served_broker, github, sts, outputs, granted, other):
    assert _exchange(served_broker, github, granted).status_code == 200
    assertion = _assertion_sent_for(sts, outputs["role_arns"][granted])
    with pytest.raises(ClientError) as refused:
        _assume(sts, outputs["role_arns"][other], assertion)
    assert refused.value.response["Error"]["Code"] == "AccessDenied"
    # The same assertion still assumes its own role: the refusal was the trust policy's.
    assert _assume(sts, outputs["role_arns"][granted], assertion)["AssumedRoleUser"]["Arn"]


def test_a_trust_policy_without_tag_session_refuses_the_tagged_assertion(
    served_broker, github, sts, outputs, iam
):
    role_arn = outputs["role_arns"]["deploy-prod"]
    assert _exchange(served_broker, github, "deploy-prod").status_code == 200
    assertion = _assertion_sent_for(sts, role_arn)
    original = iam.get_role(RoleName="cib-deploy-prod")["Role"]["AssumeRolePolicyDocument"]
    untagged = _normalised(original)
    untagged["Statement"][0]["Action"] = ["sts:AssumeRoleWithWebIdentity"]
    iam.update_assume_role_policy(RoleName="cib-deploy-prod", PolicyDocument=json.dumps(untagged))
    try:
        with pytest.raises(ClientError) as refused:
            _assume(sts, role_arn, assertion)
        assert refused.value.response["Error"]["Code"] == "AccessDenied"
        assert "sts:TagSession" in refused.value.response["Error"]["Message"]
    finally:
        iam.update_assume_role_policy(RoleName="cib-deploy-prod", PolicyDocument=json.dumps(original))


def test_an_existing_oidc_provider_is_reused_only_if_it_is_the_issuers(
    outputs, workspace, iam, inputs, tmp_path
):
    """existing_oidc_provider_arn: planned against moto, where the data source reads it back."""
    reuse = Workspace(workspace.path.parent / "aws-reuse", workspace.mirror)
    if not reuse.path.exists():
        reuse.path.mkdir()
        for name in ("main.tf", "variables.tf", "outputs.tf", "versions.tf", "ci_override.tf.json"):
            (reuse.path / name).write_text((workspace.path / name).read_text())
        reuse.init()
    roles = {"reuse": {"iam_role_name": "cib-reuse"}}
    own = f"arn:aws:iam::{ACCOUNT}:oidc-provider/{ISSUER_HOST}"
    good = reuse.write_vars("good", {"issuer_url": ISSUER, "roles": roles, "existing_oidc_provider_arn": own})
    output = reuse.checked("plan", "-input=false", f"-var-file={good}")
    assert "Plan: 1 to add" in output and "aws_iam_openid_connect_provider.broker" not in output

    stranger = iam.create_open_id_connect_provider(
        Url="https://other-issuer.ci-broker.test", ClientIDList=["sts.amazonaws.com"]
    )
    try:
        bad = reuse.write_vars(
            "bad",
            {
                "issuer_url": ISSUER,
                "roles": roles,
                "existing_oidc_provider_arn": stranger["OpenIDConnectProviderArn"],
            },
        )
        result = reuse.run("plan", "-input=false", "-no-color", f"-var-file={bad}")
        assert result.returncode != 0
        assert "existing_oidc_provider_arn is not an OIDC provider for issuer_url" in " ".join(
            result.stderr.split()
        )
    finally:
        iam.delete_open_id_connect_provider(OpenIDConnectProviderArn=stranger["OpenIDConnectProviderArn"])


def test_destroy_leaves_nothing_behind(example, iam, before_apply):
    example.ensure()
    example.destroy()
    assert _iam_inventory(iam) == before_apply
