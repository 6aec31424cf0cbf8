"""The modules' variable validations, run by a real terraform on provider-free copies.

Validation blocks only read variables, so a copy of a module's variables.tf (plus the
snippet file and its stand-ins) plans without any provider. Skipped, and said so, where
terraform is not installed; the structural tests still check the blocks are there.
"""

import json

import pytest
import yaml

from . import snippet
from .tf import CLOUDS, example_dir, load_config, module_dir

GOOD_RULE = '[{provider = "github", claims = {repository_id = "1"}}]'

TERRAFORM_CHECK = "the modules' variable validations, run by terraform"


@pytest.fixture(scope="module")
def stubs(terraform, tmp_path_factory):
    return {
        cloud: snippet.stub_module(cloud, tmp_path_factory.mktemp(f"{cloud}-validation")) for cloud in CLOUDS
    }


def _refused_by_validation(text, variable, message=""):
    # Not just any error: the validation block of the variable the case is about, and where
    # a variable has several, the one whose message is given.
    flat = " ".join(text.split())
    return (
        "This was checked by the validation rule" in text
        and f'variable "{variable}"' in text
        and message in flat
    )


# Predefined roles that let a broker role act as, or grant itself the use of, any service
# account of the project (issue 21, beyond owner and token creator, tested on their own).
GCP_REGRANTING_ROLES = (
    "editor",
    "iam.serviceAccountOpenIdTokenCreator",
    "iam.serviceAccountUser",
    "iam.serviceAccountKeyAdmin",
    "iam.serviceAccountAdmin",
    "iam.workloadIdentityUser",
    "iam.workloadIdentityPoolAdmin",
    "iam.securityAdmin",
    "iam.roleAdmin",
    "resourcemanager.projectIamAdmin",
    "resourcemanager.folderAdmin",
    "resourcemanager.organizationAdmin",
)

# The start of the error message each kind of case must produce.
MESSAGES = {
    "duration above max_session_duration": "duration must be a whole number of seconds from 900",
    "duration under 15 minutes": "duration must be a whole number of seconds from 900",
    "max session over 12 hours": "max_session_duration must be",
    "IAM role name too long": "Each IAM role name",
    "inline policy that is not JSON": "inline_policies maps",
    "default compute service account": "service_account must be a user-managed",
    "token creator at project level": "project_roles must not grant",
    **{f"{role} at project level": "project_roles must not grant" for role in GCP_REGRANTING_ROLES},
    "owner at project level": "project_roles must not grant",
    "lifetime over 12 hours": "lifetime must be",
    "lifetime over an hour without extended_lifetime": "lifetime must be",
    "lifetime over an hour without a service account": "lifetime must be",
    "extended_lifetime without a service account": "extended_lifetime applies only",
    "scope without .default": "scope must be",
    "subscription not a GUID": "subscription_id must be a GUID",
    "role assignment with two role definitions": "Each role assignment needs",
    "role names that clash once dots are hyphens": "Each identity name",
    "role names that differ only in case": "Two roles would get the same IAM role name",
    "iam_role_names that differ only in case": "Two roles would get the same IAM role name",
    "iam_role_name equal to another role's default name": "Two roles would get the same IAM role name",
    "assertion audience with a space": "token_exchange_audience must be",
    "authority host with a path": "authority_host must be",
    "authority host over http": "authority_host must be",
    "wildcard role": "must be a broker role name",
    "colon in role": "must be a broker role name",
    "role name too long": "must be a broker role name",
    "role name starting with a dot": "must be a broker role name",
    "no roles": "roles must name at least one",
    "rules for an unknown role": "allow_rules names roles that are not in roles",
    "unquoted number": "quote numbers and booleans",
    "boolean": "quote numbers and booleans",
    "number in a list": "quote numbers and booleans",
    "empty list": "quote numbers and booleans",
    "two patterns": "quote numbers and booleans",
    "unknown form": "quote numbers and booleans",
}


def _plan(stubs, cloud, *overrides):
    code, text = snippet.evaluate(
        stubs[cloud], example_dir(cloud) / "example.tfvars", tuple(f"-var={o}" for o in overrides)
    )
    return code, text


@pytest.mark.parametrize("cloud", CLOUDS)
def test_example_inputs_are_valid(stubs, cloud):
    code, text = _plan(stubs, cloud)
    assert code == 0, text


def _isolated(overrides):
    """Make each case fail for its own reason only: new roles drop the example's rules,
    and rules for role x come with a role x."""
    overrides = list(overrides)
    names = [o.split("=", 1)[0] for o in overrides]
    if "roles" in names and "allow_rules" not in names:
        overrides.insert(0, "allow_rules={}")
    if (
        "allow_rules" in names
        and "roles" not in names
        and any(o.startswith("allow_rules={x") for o in overrides)
    ):
        overrides.insert(0, "roles={x = {}}")
    return overrides


COMMON_REFUSALS = [
    ("http issuer", "issuer_url=http://broker.example.com"),
    ("trailing slash", "issuer_url=https://broker.example.com/"),
    ("port", "issuer_url=https://broker.example.com:8443"),
    ("query", "issuer_url=https://broker.example.com?x=1"),
    ("wildcard role", 'roles={"deploy-*" = {}}'),
    ("colon in role", 'roles={"repo:org/x" = {}}'),
    ("role name too long", f'roles={{"{"a" * 65}" = {{}}}}'),
    ("role name starting with a dot", 'roles={".hidden" = {}}'),
    ("no roles", "roles={}"),
    ("rule with no conditions", 'allow_rules={x = [{provider = "github", claims = {}}]}'),
    ("rule without provider", 'allow_rules={x = [{claims = {repository_id = "1"}}]}'),
    (
        "rule with an unknown key",
        'allow_rules={x = [{provider = "github", claims = {a = "1"}, deny = true}]}',
    ),
    ("rules not a list", 'allow_rules={x = {provider = "github", claims = {a = "1"}}}'),
    ("rules for an unknown role", f"allow_rules={{nope = {GOOD_RULE}}}"),
    ("unquoted number", 'allow_rules={x = [{provider = "github", claims = {repository_id = 892734123}}]}'),
    (
        "boolean",
        'allow_rules={x = [{provider = "gitlab", claims = {project_id = "1", ref_protected = true}}]}',
    ),
    ("number in a list", 'allow_rules={x = [{provider = "github", claims = {repository_id = ["1", 2]}}]}'),
    ("empty list", 'allow_rules={x = [{provider = "github", claims = {repository_id = []}}]}'),
    ("two patterns", 'allow_rules={x = [{provider = "github", claims = {ref = {glob = "a", regex = "b"}}}]}'),
    ("unknown form", 'allow_rules={x = [{provider = "github", claims = {ref = {prefix = "refs/"}}}]}'),
]


@pytest.mark.parametrize("cloud", CLOUDS)
@pytest.mark.parametrize(("case", "override"), COMMON_REFUSALS, ids=[c for c, _ in COMMON_REFUSALS])
def test_module_refuses(stubs, cloud, case, override):
    code, text = _plan(stubs, cloud, *_isolated([override]))
    assert code != 0 and _refused_by_validation(text, override.split("=", 1)[0], MESSAGES.get(case, "")), (
        f"{case}:\n{text}"
    )


# (case, the variable whose validation must refuse it, overrides...)
CLOUD_REFUSALS = {
    "aws": [
        (
            "duration above max_session_duration",
            "roles",
            "roles={x = {duration = 7200, max_session_duration = 3600}}",
        ),
        ("duration under 15 minutes", "roles", "roles={x = {duration = 600}}"),
        ("max session over 12 hours", "roles", "roles={x = {max_session_duration = 50000}}"),
        ("IAM role name too long", "roles", f'roles={{"{"a" * 60}" = {{}}}}'),
        ("assume_role without the broker principal", "broker_principal_arn", "mode=assume_role"),
        ("wildcard broker principal", "broker_principal_arn", "mode=assume_role", "broker_principal_arn=*"),
        (
            "account root as broker principal",
            "broker_principal_arn",
            "mode=assume_role",
            "broker_principal_arn=arn:aws:iam::123456789012:root",
        ),
        (
            "broker principal in web_identity mode",
            "broker_principal_arn",
            "broker_principal_arn=arn:aws:iam::123456789012:role/broker",
        ),
        ("bad thumbprint", "thumbprint_list", 'thumbprint_list=["abc"]'),
        ("inline policy that is not JSON", "roles", 'roles={x = {inline_policies = {p = "not json"}}}'),
        # IAM role names are case-insensitive: these would fail half-way through an apply.
        ("role names that differ only in case", "roles", "roles={Deploy = {}, deploy = {}}"),
        (
            "iam_role_names that differ only in case",
            "roles",
            'roles={a = {iam_role_name = "ci-deploy"}, b = {iam_role_name = "CI-Deploy"}}',
        ),
        (
            "iam_role_name equal to another role's default name",
            "roles",
            'roles={a = {}, b = {iam_role_name = "ci-broker-A"}}',
        ),
    ],
    "gcp": [
        (
            "default compute service account",
            "roles",
            'roles={x = {service_account = "123-compute@developer.gserviceaccount.com"}}',
        ),
        (
            "token creator at project level",
            "roles",
            'roles={x = {project_roles = ["roles/iam.serviceAccountTokenCreator"]}}',
        ),
        ("owner at project level", "roles", 'roles={x = {project_roles = ["roles/owner"]}}'),
        *(
            (f"{role} at project level", "roles", f'roles={{x = {{project_roles = ["roles/{role}"]}}}}')
            for role in GCP_REGRANTING_ROLES
        ),
        (
            "lifetime over 12 hours",
            "roles",
            'roles={x = {service_account = "deployer@my-project.iam.gserviceaccount.com", extended_lifetime = true, lifetime = 50000}}',
        ),
        (
            "lifetime over an hour without extended_lifetime",
            "roles",
            'roles={x = {service_account = "deployer@my-project.iam.gserviceaccount.com", lifetime = 7200}}',
        ),
        ("lifetime over an hour without a service account", "roles", "roles={x = {lifetime = 7200}}"),
        ("extended_lifetime without a service account", "roles", "roles={x = {extended_lifetime = true}}"),
        ("reserved pool id", "pool_id", "pool_id=gcp-broker"),
    ],
    "azure": [
        ("scope without .default", "roles", 'roles={x = {scope = "https://management.azure.com"}}'),
        ("subscription not a GUID", "roles", 'roles={x = {subscription_id = "prod"}}'),
        (
            "role assignment with two role definitions",
            "roles",
            'roles={x = {role_assignments = [{scope = "/subscriptions/s", role_definition_name = "Reader",'
            ' role_definition_id = "/r"}]}}',
        ),
        ("role names that clash once dots are hyphens", "roles", 'roles={"a.b" = {}, "a-b" = {}}'),
        (
            "managed identity without a resource group",
            "resource_group_name",
            "identity_type=user_assigned_identity",
        ),
        ("assertion audience with a space", "token_exchange_audience", "token_exchange_audience=api://a b"),
        (
            "authority host with a path",
            "authority_host",
            "authority_host=https://login.microsoftonline.us/tenant",
        ),
        ("authority host over http", "authority_host", "authority_host=http://login.microsoftonline.us"),
    ],
}


@pytest.mark.parametrize(
    ("cloud", "case", "variable", "overrides"),
    [
        (cloud, case, variable, overrides)
        for cloud, cases in CLOUD_REFUSALS.items()
        for case, variable, *overrides in cases
    ],
    ids=[f"{cloud}-{case}" for cloud, cases in CLOUD_REFUSALS.items() for case, *_ in cases],
)
def test_cloud_specific_refusals(stubs, cloud, case, variable, overrides):
    code, text = _plan(stubs, cloud, *_isolated(overrides))
    assert code != 0 and _refused_by_validation(text, variable, MESSAGES.get(case, "")), f"{case}:\n{text}"


@pytest.mark.parametrize(
    ("cloud", "overrides"),
    [
        ("aws", ["mode=assume_role", "broker_principal_arn=arn:aws:iam::123456789012:role/ci-broker"]),
        ("aws", ["issuer_url=https://broker.example.com/ci/v1"]),
        ("aws", ["allow_rules={}", 'roles={"Plan.v2_x-1" = {iam_role_name = "plan"}}']),
        (
            "gcp",
            [
                "allow_rules={}",
                'roles={x = {project_roles = ["roles/storage.objectViewer"], lifetime = 900}}',
            ],
        ),
        (
            "gcp",
            [
                "allow_rules={}",
                'roles={x = {service_account = "deployer@my-project.iam.gserviceaccount.com", extended_lifetime = true,'
                " lifetime = 43200}}",
            ],
        ),
        (
            "azure",
            ["identity_type=user_assigned_identity", "resource_group_name=rg-ci", "location=westeurope"],
        ),
        (
            "azure",
            [
                "token_exchange_audience=api://AzureADTokenExchangeUSGov",
                "authority_host=https://login.microsoftonline.us",
            ],
        ),
        ("aws", ["allow_rules={}", 'roles={Deploy = {}, Plan = {iam_role_name = "deploy-plan"}}']),
        (
            "gcp",
            [
                "allow_rules={}",
                'roles={x = {project_roles = ["roles/iam.securityReviewer", "roles/viewer"]}}',
            ],
        ),
    ],
)
def test_module_accepts(stubs, cloud, overrides):
    code, text = _plan(stubs, cloud, *_isolated(overrides))
    assert code == 0, text


@pytest.mark.parametrize("cloud", CLOUDS)
def test_null_means_the_default(stubs, cloud, tmp_path):
    """Every input with a default, set to null as the examples pass it when their user leaves it
    unset, behaves as if left out."""
    defaulted = [
        name
        for name, body in load_config(module_dir(cloud)).variables().items()
        if body.get("default") is not None
    ]
    assert defaulted
    values = {name: value for name, value in snippet.example_values(cloud).items() if name not in defaulted}
    nulls = tmp_path / "nulls.tfvars.json"
    nulls.write_text(json.dumps({**values, **dict.fromkeys(defaulted)}))
    code, text = snippet.evaluate(stubs[cloud], nulls)
    assert code == 0, text
    assert yaml.safe_load(text) == snippet.render(cloud, values)
