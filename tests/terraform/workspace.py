"""Root modules run by terraform with the real hashicorp/aws provider from a local mirror.

Each workspace is a copy of terraform/ in a temporary directory (the examples find the modules
at ../../modules), so nothing is written into the repository. The provider is pointed either at
nothing (plan only: fake keys, no account lookups) or at a local moto behind the verifying STS.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3

from .tf import TERRAFORM, diagnostics, isolated_aws_env, run_terraform

# For plan only: the provider needs a region and some keys, and must not look anything up.
PLAN_ONLY_PROVIDER = {
    "region": "us-east-1",
    "access_key": "plan-only",
    "secret_key": "plan-only",
    "skip_credentials_validation": True,
    "skip_requesting_account_id": True,
    "skip_metadata_api_check": True,
}


def local_aws_provider(endpoint: str) -> dict[str, Any]:
    """The provider talking to moto's IAM and the verifying STS at `endpoint` (moto takes any key)."""
    return {
        "region": "us-east-1",
        "access_key": "moto",
        "secret_key": "moto",
        "skip_metadata_api_check": True,
        "endpoints": {"iam": endpoint, "sts": endpoint},
    }


def moto_client(service: str, endpoint: str, **credentials: str) -> Any:
    """A boto3 client for moto behind the verifying STS at `endpoint` (moto's keys unless given)."""
    keys = credentials or {"aws_access_key_id": "moto", "aws_secret_access_key": "moto"}
    return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1", **keys)


def copy_terraform_tree(into: Path) -> Path:
    """terraform/ copied under `into`, without anything a local run may have left in it."""
    target = into / "terraform"
    shutil.copytree(TERRAFORM, target, ignore=shutil.ignore_patterns(".terraform*", "*.tfstate*"))
    return target


@dataclass
class Workspace:
    path: Path
    mirror: Path

    def run(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return run_terraform(list(args), cwd=self.path, timeout=timeout, env=isolated_aws_env())

    def checked(self, *args: str, timeout: float = 600, expected: tuple[str, ...] = ()) -> str:
        """Run a command that must succeed without a single error or warning (other than the
        `expected` ones); its output."""
        result = self.run(*args, "-no-color", timeout=timeout)
        output = result.stdout + result.stderr
        assert result.returncode == 0, f"terraform {args[0]} failed in {self.path}:\n{output}"
        unexpected = [line for line in diagnostics(output) if not line.endswith(expected)]
        assert not unexpected, f"terraform {args[0]} in {self.path}: {unexpected}\n{output}"
        return output

    def init(self) -> Workspace:
        # A lock file made from a local mirror holds this platform's checksums only, and init
        # says so; a user's init from the registry does not.
        self.checked(
            "init",
            f"-plugin-dir={self.mirror}",
            "-input=false",
            expected=("Warning: Incomplete lock file information for providers",),
        )
        return self

    def override_provider(self, provider: dict[str, Any]) -> None:
        """Configure the root's aws provider for the test, without touching its .tf files."""
        (self.path / "ci_override.tf.json").write_text(json.dumps({"provider": {"aws": provider}}, indent=2))

    def write_vars(self, name: str, values: dict[str, Any]) -> Path:
        path = self.path / f"{name}.tfvars.json"
        path.write_text(json.dumps(values, indent=2))
        return path

    def outputs(self) -> dict[str, Any]:
        result = self.run("output", "-json", "-no-color")
        assert result.returncode == 0, result.stderr
        return {name: output["value"] for name, output in json.loads(result.stdout).items()}

    def planned(self, *plan_args: str) -> dict[str, Any]:
        """`terraform plan` (which must be clean), then the plan as `terraform show -json` gives it."""
        self.checked("plan", "-input=false", "-out=ci.tfplan", *plan_args)
        result = self.run("show", "-json", "ci.tfplan")
        assert result.returncode == 0, result.stderr
        plan: dict[str, Any] = json.loads(result.stdout)
        return plan


def planned_resources(plan: dict[str, Any], module: str) -> dict[str, dict[str, Any]]:
    """Planned values of the resources in one child module, by address within it."""
    for child in plan["planned_values"]["root_module"].get("child_modules", []):
        if child["address"] == module:
            return {r["address"].removeprefix(f"{module}."): r["values"] for r in child.get("resources", [])}
    raise AssertionError(f"no {module} in the plan")
