"""The AWS module and example against the real hashicorp/aws provider (issue 21).

`terraform init -plugin-dir=<local mirror>`, `validate` and `plan` for the example with its own
tfvars, and one plan over a matrix of the inputs users combine, each a module instance of one
root. Any error or warning fails. The plans run with fake keys and no account lookups, so no
endpoint is called; test_tf_aws_apply.py applies against moto.
"""

from __future__ import annotations

import json

import pytest

from .workspace import PLAN_ONLY_PROVIDER, Workspace, copy_terraform_tree, planned_resources

TERRAFORM_CHECK = "terraform init, validate and plan of the AWS module and example with the AWS provider"

pytestmark = pytest.mark.timeout(900)

ACCOUNT = "123456789012"
BOUNDARY = f"arn:aws:iam::{ACCOUNT}:policy/ci-boundary"
S3_READ = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::artifacts/*"}],
    }
)
GITHUB_RULE = [{"provider": "github", "claims": {"repository_id": "892734123", "ref": "refs/heads/main"}}]

# Module inputs as users combine them; each becomes `module "<name>"` of one root.
VARIANTS = {
    "minimal": {
        "issuer_url": "https://broker.example.com",
        "roles": {"deploy": {}},
    },
    "assume_role": {
        "issuer_url": "https://broker-ar.example.com",
        "mode": "assume_role",
        "broker_principal_arn": f"arn:aws:iam::{ACCOUNT}:role/ci-broker",
        "role_path": "/ci-broker/",
        "roles": {
            "deploy-prod": {
                "managed_policy_arns": [f"arn:aws:iam::{ACCOUNT}:policy/deploy-prod"],
                "inline_policies": {"s3-read": S3_READ},
                "permissions_boundary": BOUNDARY,
                "max_session_duration": 43200,
                "duration": 43200,
                "region": "eu-west-1",
                "session_tags": {"repository": "{repository}"},
            },
        },
        "allow_rules": {"deploy-prod": GITHUB_RULE},
        "tags": {"owner": "platform"},
    },
    "web_identity_everything": {
        "issuer_url": "https://ci.example.com/broker/v1",
        "thumbprint_list": ["9e99a48a9960b14926bb7f3b02e22da2b0ab7280"],
        "role_name_prefix": "cib-",
        "role_path": "/ci/broker/",
        "roles": {
            "Plan.v2_x-1": {"iam_role_name": "plan-v2", "duration": 900},
            "deploy": {
                "description": "Deploys main",
                "inline_policies": {"s3-read": S3_READ},
                "permissions_boundary": BOUNDARY,
                "session_tags": {"repository": "{repository}", "ref": "{ref}"},
            },
        },
        "allow_rules": {"deploy": GITHUB_RULE},
        "tags": {"owner": "platform", "cost-center": "ci"},
    },
}


@pytest.fixture(scope="module")
def tree(aws_provider_mirror, tmp_path_factory):
    return copy_terraform_tree(tmp_path_factory.mktemp("aws-plan")), aws_provider_mirror


@pytest.fixture(scope="module")
def example(tree):
    root, mirror = tree
    workspace = Workspace(root / "examples" / "aws", mirror)
    workspace.override_provider(PLAN_ONLY_PROVIDER)
    return workspace.init()


@pytest.fixture(scope="module")
def matrix_plan(tree):
    root, mirror = tree
    path = root / "variants"
    path.mkdir()
    versions = (root / "modules" / "aws-trust" / "versions.tf").read_text()
    (path / "versions.tf").write_text(versions)
    (path / "main.tf.json").write_text(
        json.dumps(
            {
                "provider": {"aws": PLAN_ONLY_PROVIDER},
                "module": {
                    name: {"source": "../modules/aws-trust", **inputs} for name, inputs in VARIANTS.items()
                },
            },
            indent=2,
        )
    )
    return Workspace(path, mirror).init().planned()


def test_the_example_validates(example):
    result = example.run("validate", "-json", "-no-color")
    report = json.loads(result.stdout)
    assert result.returncode == 0 and report["valid"], result.stdout + result.stderr
    assert report["error_count"] == 0 and report["warning_count"] == 0, report["diagnostics"]


def test_the_example_plans_cleanly_with_its_tfvars(example):
    output = example.checked("plan", "-input=false", "-var-file=example.tfvars")
    # The OIDC provider, two roles and their two managed policy attachments.
    assert "Plan: 5 to add, 0 to change, 0 to destroy." in output, output


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_each_variant_plans_its_roles_as_given(matrix_plan, variant):
    inputs = VARIANTS[variant]
    planned = planned_resources(matrix_plan, f"module.{variant}")
    prefix = inputs.get("role_name_prefix", "ci-broker-")
    for name, role in inputs["roles"].items():
        iam_role = planned[f'aws_iam_role.broker["{name}"]']
        assert iam_role["name"] == role.get("iam_role_name", f"{prefix}{name}")
        assert iam_role["path"] == inputs.get("role_path", "/")
        assert iam_role["max_session_duration"] == role.get("max_session_duration", 3600)
        assert iam_role["permissions_boundary"] == role.get("permissions_boundary")
        assert iam_role["tags"] == {**inputs.get("tags", {}), "ci-broker-role": name}
        for policy_name, document in role.get("inline_policies", {}).items():
            inline = planned[f'aws_iam_role_policy.inline["{name} {policy_name}"]']
            assert json.loads(inline["policy"]) == json.loads(document)
        for arn in role.get("managed_policy_arns", []):
            assert planned[f'aws_iam_role_policy_attachment.managed["{name} {arn}"]']["policy_arn"] == arn
    assert sum(address.startswith("aws_iam_role.") for address in planned) == len(inputs["roles"])


@pytest.mark.parametrize("variant", sorted(v for v in VARIANTS if VARIANTS[v].get("mode") != "assume_role"))
def test_web_identity_variants_plan_one_oidc_provider_for_the_issuer(matrix_plan, variant):
    inputs = VARIANTS[variant]
    provider = planned_resources(matrix_plan, f"module.{variant}")[
        "aws_iam_openid_connect_provider.broker[0]"
    ]
    assert provider["url"] == inputs["issuer_url"]
    assert provider["client_id_list"] == ["sts.amazonaws.com"]
    # Left out unless given: IAM then checks the issuer's chain against its own CAs.
    assert provider.get("thumbprint_list") == inputs.get("thumbprint_list")


def test_assume_role_variant_trusts_the_brokers_principal_and_nothing_else(matrix_plan):
    planned = planned_resources(matrix_plan, "module.assume_role")
    assert not any(address.startswith("aws_iam_openid_connect_provider") for address in planned)
    policy = json.loads(planned['aws_iam_role.broker["deploy-prod"]']["assume_role_policy"])
    [statement] = policy["Statement"]
    assert statement["Effect"] == "Allow"
    assert statement["Principal"] == {"AWS": VARIANTS["assume_role"]["broker_principal_arn"]}
    assert set(statement["Action"]) == {"sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"}
    assert "Condition" not in statement
