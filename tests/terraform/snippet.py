"""The `roles:` snippet each module outputs, rendered without the cloud providers.

Each module computes its snippet in broker_config.tf from variables plus a few values of
created resources (ARNs, client IDs, the GCP audience). Two renderings are kept here:

* ``render`` mirrors broker_config.tf in Python, with fixed stand-ins for those values, so
  the broker can load the snippet wherever the tests run;
* ``STUBS`` give terraform the same stand-ins, so that where terraform is installed the
  module's own expression is evaluated and compared with ``render``.
"""

from __future__ import annotations

import re
import shutil
import uuid
from pathlib import Path
from typing import Any

from .tf import module_dir, parse_file, run_terraform

ACCOUNT = "123456789012"
PROJECT_NUMBER = "123456789012"
TENANT_ID = "00000000-0000-0000-0000-000000000000"

STUBS = {
    "aws": f"""
locals {{
  role_arns = {{ for name in keys(var.roles) : name => "arn:aws:iam::{ACCOUNT}:role/ci-broker/${{name}}" }}
}}
""",
    "gcp": f"""
locals {{
  audience = "//iam.googleapis.com/projects/{PROJECT_NUMBER}/locations/global/workloadIdentityPools/${{var.pool_id}}/providers/${{var.provider_id}}"
}}
""",
    "azure": f"""
locals {{
  tenant_id  = "{TENANT_ID}"
  client_ids = {{ for name in keys(var.roles) : name => uuidv5("oid", name) }}
}}
""",
}

DEFAULTS = {
    "gcp": {"pool_id": "ci-broker", "provider_id": "broker"},
}

# Entra ID's public cloud, which the broker assumes for azure roles (broker/clouds/azure.py).
AZURE_PUBLIC_CLOUD = {
    "assertion_audience": "api://AzureADTokenExchange",
    "authority_host": "https://login.microsoftonline.com",
}


def stubbed_locals(cloud: str) -> set[str]:
    return set(re.findall(r"^  (\w+)\s*=", STUBS[cloud], re.M))


def render(cloud: str, values: dict[str, Any]) -> dict[str, Any]:
    """The module's broker_roles_yaml, as data, for these input values (see broker_config.tf)."""
    values = {**DEFAULTS.get(cloud, {}), **values}
    allow_rules = values.get("allow_rules", {})
    roles = {}
    for name, role in values["roles"].items():
        if cloud == "aws":
            body = {
                "role_arn": f"arn:aws:iam::{ACCOUNT}:role/ci-broker/{name}",
                "region": role.get("region"),
                "duration": role.get("duration", 3600),
                "mode": "assume_role" if values.get("mode") == "assume_role" else None,
                "session_tags": role.get("session_tags"),
            }
        elif cloud == "gcp":
            body = {
                "audience": (
                    f"//iam.googleapis.com/projects/{PROJECT_NUMBER}/locations/global/workloadIdentityPools/"
                    f"{values['pool_id']}/providers/{values['provider_id']}"
                ),
                "service_account": role.get("service_account"),
                "scopes": role.get("scopes", ["https://www.googleapis.com/auth/cloud-platform"]),
                "lifetime": role.get("lifetime", 3600),
                "extended_lifetime": True if role.get("extended_lifetime") else None,
            }
        elif cloud == "azure":
            audience = values.get("token_exchange_audience") or AZURE_PUBLIC_CLOUD["assertion_audience"]
            authority = values.get("authority_host") or AZURE_PUBLIC_CLOUD["authority_host"]
            body = {
                "tenant_id": TENANT_ID,
                "client_id": str(uuid.uuid5(uuid.NAMESPACE_OID, name)),
                "scope": role.get("scope", "https://management.azure.com/.default"),
                "subscription_id": role.get("subscription_id"),
                # Only where they are not the public cloud's, which the broker assumes.
                "assertion_audience": None
                if audience == AZURE_PUBLIC_CLOUD["assertion_audience"]
                else audience,
                "authority_host": None if authority == AZURE_PUBLIC_CLOUD["authority_host"] else authority,
            }
        else:
            raise ValueError(cloud)
        roles[name] = {
            "cloud": cloud,
            cloud: {key: value for key, value in body.items() if value is not None},
            "allow": allow_rules.get(name, []),
        }
    return {"roles": roles}


def example_values(cloud: str) -> dict[str, Any]:
    from .tf import example_dir

    values = parse_file(example_dir(cloud) / "example.tfvars")
    _no_expressions(values)
    return values


def _no_expressions(value: Any) -> None:
    # python-hcl2 hands expressions back as "${...}" text; the mirror can only render
    # literal values, which is all a .tfvars file may hold anyway.
    if isinstance(value, dict):
        for item in value.values():
            _no_expressions(item)
    elif isinstance(value, list):
        for item in value:
            _no_expressions(item)
    else:
        assert not (isinstance(value, str) and "${" in value), f"example.tfvars holds an expression: {value}"


def stub_module(cloud: str, into: Path) -> Path:
    """A provider-free copy of the module: its variables and broker_config.tf, with the
    resource-derived locals replaced by the stand-ins and the snippet as an output."""
    into.mkdir(parents=True, exist_ok=True)
    for name in ("variables.tf", "broker_config.tf"):
        shutil.copy(module_dir(cloud) / name, into / name)
    (into / "stub.tf").write_text(
        STUBS[cloud] + '\noutput "broker_roles_yaml" {\n  value = local.broker_roles_yaml\n}\n'
    )
    result = run_terraform(["init", "-backend=false", "-no-color"], cwd=into)
    assert result.returncode == 0, result.stdout + result.stderr
    return into


def evaluate(stub: Path, var_file: Path | None = None, extra: tuple[str, ...] = ()) -> tuple[int, str]:
    """Apply the stub (it has no resources) and return (exit code, snippet or errors)."""
    args = ["apply", "-auto-approve", "-no-color", "-input=false"]
    if var_file is not None:
        args.append(f"-var-file={var_file}")
    result = run_terraform([*args, *extra], cwd=stub)
    if result.returncode != 0:
        return result.returncode, result.stderr + result.stdout
    output = run_terraform(["output", "-raw", "broker_roles_yaml"], cwd=stub)
    assert output.returncode == 0, output.stderr
    return 0, output.stdout
