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


def run_terraform(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run terraform with no CLI config and no prompts, in ``cwd``.

    Only provider-free configurations are run this way, so no network is needed."""
    binary = terraform_binary()
    assert binary, "terraform is not installed"
    env = dict(os.environ)
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
