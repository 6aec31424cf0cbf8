"""The trust each cloud places in the broker: one exact subject per role, nothing looser.

checkov cannot see most of this (it does not evaluate ``role:${each.key}`` or follow a
subject built from a Terraform reference, and knows nothing of the broker), so these tests
are the real guard. Each scans every module and every example, so trust written anywhere
under terraform/ is held to the same rules.
"""

import json
import re

from .tf import ROLE_NAME_PATTERN, as_list, expr, parse_file

ROLE_SUBJECT = "role:${each.key}"

# Operators that match more than one value; trust in the broker must never use them.
LOOSE_OPERATORS = re.compile(r"StringLike|StringNotEquals|ForAnyValue|ForAllValues|ArnLike|IfExists", re.I)


def _trust_documents(every_config):
    """Every aws_iam_policy_document that some assume_role_policy points at."""
    for config in every_config:
        for _, role in config.typed_blocks("resource", "aws_iam_role"):
            referenced = set(re.findall(r"data\.aws_iam_policy_document\.(\w+)", role["assume_role_policy"]))
            assert referenced, (
                f"{config.name}: an aws_iam_role trust policy is not an aws_iam_policy_document"
            )
            documents = dict(config.typed_blocks("data", "aws_iam_policy_document"))
            for name in sorted(referenced):
                yield config, name, documents[name]


def _conditions(statement):
    return {c["variable"]: c for c in statement.get("condition", [])}


def test_all_iam_trust_goes_through_policy_documents(every_config):
    for config in every_config:
        for _, role in config.typed_blocks("resource", "aws_iam_role"):
            # A jsonencode()d or heredoc trust policy would escape every check below.
            assert re.fullmatch(
                r"\$\{\(?(local\.web_identity\?)?data\.aws_iam_policy_document\.\w+\[each\.key\]\.json"
                r"(:data\.aws_iam_policy_document\.\w+\[each\.key\]\.json)?\)?\}",
                expr(role["assume_role_policy"]),
            ), config.name


def test_aws_web_identity_trust_pins_aud_and_sub_with_string_equals(every_config):
    seen = 0
    for config, name, document in _trust_documents(every_config):
        for statement in document["statement"]:
            principals = statement.get("principals", [])
            if not any(p["type"] == "Federated" for p in principals):
                continue
            seen += 1
            assert "sts:AssumeRoleWithWebIdentity" in statement["actions"], (config.name, name)
            conditions = _conditions(statement)
            assert set(conditions) == {"${local.issuer_host}:aud", "${local.issuer_host}:sub"}, (
                config.name,
                name,
            )
            aud = conditions["${local.issuer_host}:aud"]
            sub = conditions["${local.issuer_host}:sub"]
            assert aud["test"] == "StringEquals" and aud["values"] == ["sts.amazonaws.com"], (
                config.name,
                name,
            )
            assert sub["test"] == "StringEquals" and sub["values"] == [ROLE_SUBJECT], (config.name, name)
            # One role per statement: for_each over the roles, keyed by broker role name.
            assert expr(document["for_each"]) in ("${local.web_identity?var.roles:{}}", "${var.roles}"), name
            assert [expr(i) for p in principals for i in p["identifiers"]] == ["${local.oidc_provider_arn}"]
    assert seen, "no web identity trust statement found: the checks above checked nothing"


def test_aws_condition_keys_are_named_after_the_issuer_host(modules):
    config = modules["aws"]
    assert expr(config.locals()["issuer_host"]) == '${trimprefix(var.issuer_url,"https://")}'
    provider = dict(config.typed_blocks("resource", "aws_iam_openid_connect_provider"))["broker"]
    assert provider["url"] == "${var.issuer_url}"
    assert provider["client_id_list"] == ["sts.amazonaws.com"]
    # Optional since AWS provider 5.81: IAM checks the issuer's chain against its own CAs.
    assert provider["thumbprint_list"] == "${var.thumbprint_list}"
    assert config.variables()["thumbprint_list"]["default"] is None


def test_aws_every_trust_statement_allows_tag_session(every_config):
    seen = 0
    for config, name, document in _trust_documents(every_config):
        for statement in document["statement"]:
            seen += 1
            assert "sts:TagSession" in statement["actions"], (config.name, name)
            assert statement.get("effect", "Allow") == "Allow"
    assert seen


def test_aws_assume_role_mode_trusts_only_the_brokers_principal(modules):
    config = modules["aws"]
    document = dict(config.typed_blocks("data", "aws_iam_policy_document"))["trust_assume_role"]
    assert expr(document["for_each"]) == "${local.web_identity?{}:var.roles}"
    [statement] = document["statement"]
    assert set(statement["actions"]) == {"sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"}
    [principal] = statement["principals"]
    assert principal["type"] == "AWS"
    assert principal["identifiers"] == ["${var.broker_principal_arn}"]
    condition = " ".join(v["condition"] for v in config.variables()["broker_principal_arn"]["validation"])
    # An exact role or user ARN: no account root (which would trust every principal of the
    # account) and no wildcard.
    assert r":(role|user)/[\\w+=,.@/-]+$" in condition


def test_no_loose_match_anywhere_in_iam_conditions(every_config):
    for config in every_config:
        for _, document in config.typed_blocks("data", "aws_iam_policy_document"):
            for statement in document.get("statement", []):
                assert "not_principals" not in statement and "not_actions" not in statement, config.name
                for condition in statement.get("condition", []):
                    assert condition["test"] == "StringEquals", (config.name, condition)
                for principal in statement.get("principals", []):
                    assert principal["type"] != "*" and "*" not in principal["identifiers"], config.name
        # Comments are not parsed, so they may still name these operators.
        assert not LOOSE_OPERATORS.search(json.dumps(config.files)), (
            f"{config.name} uses a loose IAM operator"
        )


def test_gcp_every_provider_has_an_attribute_condition_on_exact_subjects(every_config, modules):
    seen = 0
    for config in every_config:
        for name, provider in config.typed_blocks("resource", "google_iam_workload_identity_pool_provider"):
            seen += 1
            assert provider.get("attribute_condition"), f"{config.name}: {name} has no attribute_condition"
            assert expr(provider["attribute_condition"]) == "assertion.subin${jsonencode(local.subjects)}"
            assert provider["attribute_mapping"] == {"google.subject": "assertion.sub"}
            [oidc] = provider["oidc"]
            assert oidc["issuer_uri"] == "${var.issuer_url}"
            assert oidc["allowed_audiences"] == ["${local.expected_audience}"]
            assert expr(config.locals()["subjects"]) == '${[fornameinsort(keys(var.roles)):"role:${name}"]}'
    assert seen, "no workload identity provider found"


def test_gcp_audience_is_the_providers_own_resource_name(modules):
    local = modules["gcp"].locals()
    assert local["expected_audience"] == (
        "//iam.googleapis.com/projects/${data.google_project.pool.number}/locations/global"
        "/workloadIdentityPools/${var.pool_id}/providers/${var.provider_id}"
    )
    assert (
        local["audience"] == "//iam.googleapis.com/${google_iam_workload_identity_pool_provider.broker.name}"
    )


def test_gcp_bindings_name_one_subject_never_a_principal_set(every_config, modules):
    local = modules["gcp"].locals()
    assert expr(local["principals"]) == (
        '${{fornameinkeys(var.roles):name=>"principal://iam.googleapis.com/'
        '${google_iam_workload_identity_pool.broker.name}/subject/role:${name}"}}'
    )
    bindings = 0
    for config in every_config:
        for kind in ("google_service_account_iam_member", "google_project_iam_member"):
            for name, binding in config.typed_blocks("resource", kind):
                bindings += 1
                assert re.fullmatch(
                    r"\$\{local\.principals\[each\.(key|value\.role)\]\}", expr(binding["member"])
                ), name
        for kind in ("google_service_account_iam_binding", "google_service_account_iam_policy"):
            assert not list(config.typed_blocks("resource", kind)), (
                f"{config.name} replaces a whole IAM policy"
            )
    assert bindings
    sa_binding = dict(modules["gcp"].typed_blocks("resource", "google_service_account_iam_member"))
    assert sa_binding["workload_identity_user"]["role"] == "roles/iam.workloadIdentityUser"
    for config in every_config:
        assert "principalSet:" not in json.dumps(config.files), f"{config.name} grants a principal set"


def test_azure_audience_is_the_public_clouds_unless_set_as_the_broker_assumes(modules):
    from broker.clouds.azure import DEFAULT_ASSERTION_AUDIENCE, DEFAULT_AUTHORITY_HOST

    local = modules["azure"].locals()
    assert local["public_cloud"] == {
        "assertion_audience": DEFAULT_ASSERTION_AUDIENCE,
        "authority_host": DEFAULT_AUTHORITY_HOST,
    }
    assert expr(local["token_exchange_audience"]) == (
        "${coalesce(var.token_exchange_audience,local.public_cloud.assertion_audience)}"
    )
    assert (
        expr(local["authority_host"]) == "${coalesce(var.authority_host,local.public_cloud.authority_host)}"
    )
    # The snippet names them only where the broker's default would be wrong.
    roles = expr(local["broker_roles"])
    assert (
        "assertion_audience=local.token_exchange_audience!=local.public_cloud.assertion_audience"
        "?local.token_exchange_audience:null"
    ) in roles
    assert (
        "authority_host=local.authority_host!=local.public_cloud.authority_host?local.authority_host:null"
        in roles
    )


def test_azure_federated_credentials_pin_issuer_subject_and_audience(every_config, modules):
    seen = 0
    for config in every_config:
        for kind, audience_key in (
            ("azuread_application_federated_identity_credential", "audiences"),
            ("azurerm_federated_identity_credential", "audience"),
        ):
            for _name, credential in config.typed_blocks("resource", kind):
                seen += 1
                assert credential["subject"] == ROLE_SUBJECT, (config.name, kind)
                assert credential["issuer"] == "${var.issuer_url}", (config.name, kind)
                assert credential[audience_key] == ["${local.token_exchange_audience}"], (config.name, kind)
                # Flexible credentials match subjects by expression, wildcards included.
                assert "claims_matching_expression" not in credential, (config.name, kind)
                # One credential per identity: for_each over the identities made per role.
                assert expr(credential["for_each"]) in (
                    "${azuread_application.broker}",
                    "${azurerm_user_assigned_identity.broker}",
                ), (config.name, kind)
    assert seen == 2, "expected one application and one managed identity credential resource"


def test_azure_each_role_gets_its_own_identity(modules):
    config = modules["azure"]
    app = dict(config.typed_blocks("resource", "azuread_application"))["broker"]
    identity = dict(config.typed_blocks("resource", "azurerm_user_assigned_identity"))["broker"]
    assert expr(app["for_each"]) == "${local.use_application?var.roles:{}}"
    assert expr(identity["for_each"]) == "${local.use_application?{}:var.roles}"


def test_no_wildcard_in_any_subject(every_config):
    subjects = []
    for config in every_config:
        for _, document in config.typed_blocks("data", "aws_iam_policy_document"):
            for statement in document.get("statement", []):
                for condition in statement.get("condition", []):
                    if condition["variable"].endswith(":sub"):
                        subjects += as_list(condition["values"])
        for kind in (
            "azuread_application_federated_identity_credential",
            "azurerm_federated_identity_credential",
        ):
            subjects += [c["subject"] for _, c in config.typed_blocks("resource", kind)]
        local = config.locals()
        subjects += [local[k] for k in ("subjects", "principals") if k in local]
    assert subjects
    for subject in subjects:
        text = str(subject)
        assert "*" not in text and "?" not in text, subject
        assert "role:${each.key}" in text or "role:${name}" in text, subject


def test_example_role_names_are_broker_role_names(examples):
    for cloud, config in examples.items():
        values = parse_file(config.path / "example.tfvars")
        for name in values["roles"]:
            assert re.fullmatch(ROLE_NAME_PATTERN, name), (cloud, name)
        assert set(values.get("allow_rules", {})) == set(values["roles"]), (
            f"{cloud}: every example role needs rules"
        )
