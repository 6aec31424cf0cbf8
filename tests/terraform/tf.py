"""Reading the Terraform under terraform/ for the structural tests.

python-hcl2 parses HCL without evaluating it: literals come back as Python values and
expressions as their source text wrapped in ``${...}``. That is enough to check the shape
of trust policies, which is what these tests are for; evaluation is left to the tests that
run a real terraform binary when one is installed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hcl2
from hcl2.utils import SerializationOptions

REPO = Path(__file__).resolve().parents[2]
TERRAFORM = REPO / "terraform"
MODULES = TERRAFORM / "modules"
EXAMPLES = TERRAFORM / "examples"
CLOUDS = ("aws", "gcp", "azure")

# The broker's rule for role names (CONTRACT section 2 and broker/config). The modules
# must validate role names with exactly this pattern.
ROLE_NAME_PATTERN = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"

_OPTIONS = SerializationOptions(strip_string_quotes=True, with_comments=False, explicit_blocks=False)


def parse_file(path: Path) -> dict[str, Any]:
    return hcl2.loads(path.read_text(), serialization_options=_OPTIONS)


@dataclass(frozen=True)
class Config:
    """The parsed .tf files of one directory (a Terraform module or root module)."""

    path: Path
    files: dict[str, dict[str, Any]]

    @property
    def name(self) -> str:
        return str(self.path.relative_to(TERRAFORM))

    def blocks(self, kind: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every ``kind`` block (variable, output, module, ...) as (file name, body)."""
        for _file_name, content in self.files.items():
            for entry in content.get(kind, []):
                yield from entry.items()

    def typed_blocks(self, kind: str, type_name: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every resource or data block of one type as (name, body)."""
        for _file_name, content in self.files.items():
            for entry in content.get(kind, []):
                for block_type, named in entry.items():
                    if block_type == type_name:
                        yield from named.items()

    def locals(self) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for content in self.files.values():
            for entry in content.get("locals", []):
                merged.update(entry)
        return merged

    def variables(self) -> dict[str, dict[str, Any]]:
        return dict(self.blocks("variable"))

    def outputs(self) -> dict[str, dict[str, Any]]:
        return dict(self.blocks("output"))


def load_config(path: Path) -> Config:
    files = {p.name: parse_file(p) for p in sorted(path.glob("*.tf"))}
    return Config(path=path, files=files)


def module_dir(cloud: str) -> Path:
    return MODULES / f"{cloud}-trust"


def example_dir(cloud: str) -> Path:
    return EXAMPLES / cloud


def all_config_dirs() -> list[Path]:
    """Every directory under terraform/ that holds .tf files: modules and examples alike."""
    return sorted({p.parent for p in TERRAFORM.rglob("*.tf") if ".terraform" not in p.parts})


def expr(text: str) -> str:
    """An expression's source with all whitespace removed, for comparisons that should not
    depend on how python-hcl2 or terraform fmt lays it out."""
    return re.sub(r"\s+", "", str(text))


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def terraform_binary() -> str | None:
    return shutil.which("terraform")


# Where a local provider mirror may live: the directory `terraform init -plugin-dir` takes,
# holding registry.terraform.io/hashicorp/<name>/<version>/<os_arch>/terraform-provider-<name>_*.
# CI_BROKER_TF_PLUGIN_DIR names one explicitly; otherwise the usual places are searched.
PLUGIN_DIR_CANDIDATES = (
    "/opt/*",
    "/usr/share/terraform/plugins",
    "/usr/local/share/terraform/plugins",
    "~/.terraform.d/plugins",
    "~/.local/share/terraform/plugins",
)


def provider_mirror(name: str) -> Path | None:
    """The root of a local mirror that holds hashicorp/<name>, or None (nothing downloads here)."""
    explicit = os.environ.get("CI_BROKER_TF_PLUGIN_DIR")
    patterns = [explicit] if explicit else list(PLUGIN_DIR_CANDIDATES)
    for pattern in patterns:
        for root in sorted(Path("/").glob(str(Path(pattern).expanduser()).lstrip("/"))):
            if any(root.glob(f"registry.terraform.io/hashicorp/{name}/*/*/terraform-provider-{name}_*")):
                return root
    return None


def isolated_aws_env() -> dict[str, str]:
    """The environment for a real AWS provider in tests: none of the machine's AWS settings or
    credentials can reach it, and it never asks the instance metadata service."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        {
            "AWS_CONFIG_FILE": "/dev/null",
            "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
            "AWS_EC2_METADATA_DISABLED": "true",
        }
    )
    return env


def diagnostics(output: str) -> list[str]:
    """Terraform's error and warning headlines in -no-color output."""
    return [line.strip() for line in output.splitlines() if re.match(r"\s*[│╷]?\s*(Error|Warning):", line)]


def run_terraform(
    args: list[str], cwd: Path, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run terraform with no CLI config and no prompts, in ``cwd``.

    Nothing here reaches a network: configurations are either provider-free or use a provider
    from a local mirror pointed at local endpoints."""
    binary = terraform_binary()
    assert binary, "terraform is not installed"
    env = dict(os.environ if env is None else env)
    env.update(
        {
            "TF_CLI_CONFIG_FILE": "/dev/null",
            "TF_IN_AUTOMATION": "1",
            "TF_INPUT": "0",
            "CHECKPOINT_DISABLE": "1",
            "TF_DATA_DIR": str(cwd / ".terraform"),
        }
    )
    return subprocess.run(
        [binary, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
