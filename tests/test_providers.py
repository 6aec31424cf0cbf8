"""The `providers:` section (broker/providers.py): types, declared schemas, per-provider audiences.
Each mistake is a `check` error naming its key path, and the loader refuses the whole file, so
`serve` does not start either."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from broker.config import ConfigError, build_config
from tests.helpers import ci_broker

OIDC_SCHEMA = {
    "required": ["org_uuid", "project_uuid"],
    "immutable": ["org_uuid", "project_uuid"],
    "user_controlled": ["branch"],
    "claims": ["event"],
    "tenant": ["org_uuid"],
}
OIDC_RULE = {"org_uuid": "org-1", "project_uuid": "prj-1", "branch": "main"}


def base(key_file: Path) -> dict[str, Any]:
    return {
        "server": {"issuer": "https://broker.example.com", "signing_keys": [str(key_file)]},
        "providers": {
            "ci": {"issuer": "https://ci.example.com", "type": "oidc", "schema": copy.deepcopy(OIDC_SCHEMA)},
            "buildkite": {"issuer": "https://agent.buildkite.com", "type": "buildkite"},
        },
        "roles": {
            "r": {
                "cloud": "aws",
                "aws": {"role_arn": "arn:aws:iam::123456789012:role/r"},
                "allow": [{"provider": "ci", "claims": dict(OIDC_RULE)}],
            }
        },
    }


def errors(data: dict[str, Any], key_file: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        build_config(data, base_dir=key_file.parent)
    return [f"{f.path}: {f.message}" for f in caught.value.findings if f.level == "error"]


def mutated(key_file: Path, change: Any) -> dict[str, Any]:
    data = base(key_file)
    change(data)
    return data


def test_the_base_config_loads_with_its_declared_schema(key_file):
    config = build_config(base(key_file), base_dir=key_file.parent)
    schema = config.providers["ci"].schema
    assert schema.declared and schema.tenant_claims == ("org_uuid",)
    assert schema.neutral["repository_id"] == "org_uuid"  # the first immutable id, by default
    assert config.providers["ci"].audience is None


BAD_INPUT = [
    (
        "an unknown type",
        lambda d: d["providers"]["ci"].update(type="travis"),
        "providers.ci.type: 'travis' is not one of github, gitlab, buildkite",
    ),
    (
        "an oidc provider without a schema",
        lambda d: d["providers"]["ci"].pop("schema"),
        "providers.ci.schema: is required for type oidc",
    ),
    (
        "a schema naming a claim twice",
        lambda d: d["providers"]["ci"]["schema"]["immutable"].append("org_uuid"),
        "providers.ci.schema.immutable[2]: names 'org_uuid' twice",
    ),
    (
        "a rule on a claim the schema does not declare",
        lambda d: d["roles"]["r"]["allow"][0]["claims"].update(enviroment="prod"),
        "roles.r.allow[0].claims.enviroment: 'enviroment' is not a claim this provider's schema declares",
    ),
    (
        "a deny rule on a claim the schema does not declare",
        lambda d: d.update(deny=[{"provider": "ci", "claims": {"evnt": "x"}, "reason": "r"}]),
        "deny[0].claims.evnt: 'evnt' is not a claim this provider's schema declares",
    ),
    (
        "a schema on a type whose schema is built in",
        lambda d: d["providers"]["buildkite"].update(schema={"immutable": ["x"]}),
        "providers.buildkite.schema: buildkite's claim schema is built in",
    ),
    (
        "a claim both immutable and chosen by the author",
        lambda d: d["providers"]["ci"]["schema"]["user_controlled"].append("project_uuid"),
        "providers.ci.schema.user_controlled: 'project_uuid' is also listed as immutable",
    ),
    (
        "a tenant that is not an immutable id",
        lambda d: d["providers"]["ci"]["schema"].update(tenant=["branch"]),
        "providers.ci.schema.tenant[0]: 'branch' must also be listed as immutable",
    ),
    (
        "a claim the verifier checks itself",
        lambda d: d["providers"]["ci"]["schema"]["immutable"].append("aud"),
        "providers.ci.schema.immutable[2]: 'aud' is checked by the verifier itself",
    ),
    (
        "a malformed claim path in a schema",
        lambda d: d["providers"]["ci"]["schema"]["claims"].append("build..id"),
        "providers.ci.schema.claims[1]: 'build..id' is not a claim name",
    ),
    (
        "a malformed claim path in a rule",
        lambda d: d["roles"]["r"]["allow"][0]["claims"].update({"kubernetes..uid": "x"}),
        "roles.r.allow[0].claims.kubernetes..uid: 'kubernetes..uid' is not a claim name",
    ),
    (
        "an unknown key in a schema",
        lambda d: d["providers"]["ci"]["schema"].update(immutables=["x"]),
        "providers.ci.schema.immutables: unknown key",
    ),
    (
        "an unknown context name",
        lambda d: d["providers"]["ci"]["schema"].update(context={"repo": "org_uuid"}),
        "providers.ci.schema.context.repo: unknown key",
    ),
    (
        "an untrusted section without values",
        lambda d: d["providers"]["ci"]["schema"].update(untrusted={"claim": "event"}),
        "providers.ci.schema.untrusted.values: is required",
    ),
    (
        "a rule that does not pin the declared tenant",
        lambda d: d["roles"]["r"]["allow"][0]["claims"].pop("org_uuid"),
        "roles.r.allow[0]: does not pin the tenant: ci's issuer signs for every tenant of this issuer, "
        "so the rule must pin org_uuid",
    ),
    (
        "a Buildkite rule pinning only slugs",
        lambda d: d["roles"]["r"]["allow"].append(
            {"provider": "buildkite", "claims": {"organization_slug": "acme-inc", "pipeline_slug": "deploy"}}
        ),
        "roles.r.allow[1]: does not pin the tenant: buildkite's issuer signs for every Buildkite "
        "organization, so the rule must pin organization_id or pipeline_id",
    ),
    (
        "an empty audience",
        lambda d: d["providers"]["ci"].update(audience=""),
        "providers.ci.audience: must be a non-empty string",
    ),
]


@pytest.mark.parametrize("label,change,expected", BAD_INPUT, ids=[b[0] for b in BAD_INPUT])
def test_each_bad_input_is_an_error_with_its_key_path(key_file, label, change, expected):
    found = errors(mutated(key_file, change), key_file)
    assert any(e.startswith(expected) for e in found), found


def test_jenkins_may_declare_what_its_claim_templates_add(key_file):
    data = base(key_file)
    data["providers"]["jenkins"] = {
        "issuer": "https://jenkins.example.com/oidc",
        "type": "jenkins",
        "schema": {"immutable": ["folder_id"], "tenant": ["folder_id"], "claims": ["branch"]},
    }
    data["roles"]["r"]["allow"].append(
        {"provider": "jenkins", "claims": {"sub": "https://jenkins.example.com/job/a/job/deploy/"}}
    )
    assert any("must pin folder_id" in e for e in errors(data, key_file))
    data["roles"]["r"]["allow"][1]["claims"]["folder_id"] = "f-1"
    schema = build_config(data, base_dir=key_file.parent).providers["jenkins"].schema
    assert schema.knows("build_number") and schema.knows("branch") and schema.tenant_claims == ("folder_id",)


def test_a_provider_audience_is_kept(key_file):
    data = base(key_file)
    data["providers"]["ado"] = {
        "issuer": "https://vstoken.dev.azure.com/3b0b3a72-5f0c-4c5e-9a58-6d4d0f1b2c3d",
        "type": "azure-devops",
        "audience": "api://AzureADTokenExchange",
    }
    assert (
        build_config(data, base_dir=key_file.parent).providers["ado"].audience == "api://AzureADTokenExchange"
    )


# -- as operators run it ------------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return ci_broker(*args)


@pytest.mark.parametrize("label,change,expected", BAD_INPUT[:4], ids=[b[0] for b in BAD_INPUT[:4]])
def test_check_prints_the_error_with_file_and_key_path_and_exits_2(
    tmp_path, key_file, label, change, expected
):
    path = tmp_path / "broker.yaml"
    path.write_text(yaml.safe_dump(mutated(key_file, change)))
    result = run_cli("check", "--config", str(path))
    assert result.returncode == 2
    assert f"error: {path}: {expected}" in result.stderr


def test_serve_refuses_to_start_with_an_unpinned_tenant(tmp_path, key_file):
    data = base(key_file)
    data["roles"]["r"]["allow"] = [
        {"provider": "buildkite", "claims": {"organization_slug": "acme-inc", "build_branch": "main"}}
    ]
    path = tmp_path / "broker.yaml"
    path.write_text(yaml.safe_dump(data))
    result = run_cli("serve", "--config", str(path), "--bind", "127.0.0.1:0")
    assert result.returncode == 2
    assert "does not pin the tenant" in result.stderr
