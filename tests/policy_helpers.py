"""Configs for the policy-as-code tests (`ci-broker test`, `diff`, and check's automata findings)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from broker.config import Config, build_config

GITHUB = "https://token.actions.githubusercontent.com"
GITLAB = "https://gitlab.com"


def policy(
    roles: dict[str, list[dict[str, Any]]],
    *,
    deny: list[dict[str, Any]] | None = None,
    providers: dict[str, dict[str, str]] | None = None,
) -> dict[str, Any]:
    """A config dict: each role an AWS role with the given allow rules."""
    data: dict[str, Any] = {
        "server": {"issuer": "https://broker.example.com", "signing_keys": ["signing.pem"]},
        "providers": copy.deepcopy(
            providers
            or {
                "github": {"issuer": GITHUB, "type": "github"},
                "gitlab": {"issuer": GITLAB, "type": "gitlab"},
            }
        ),
        "roles": {
            name: {
                "cloud": "aws",
                "aws": {"role_arn": f"arn:aws:iam::123456789012:role/{name}"},
                "allow": copy.deepcopy(rules),
            }
            for name, rules in roles.items()
        },
    }
    if deny:
        data["deny"] = copy.deepcopy(deny)
    return data


def build(data: dict[str, Any], key_file: Path, name: str = "<config>") -> Config:
    return build_config(copy.deepcopy(data), base_dir=key_file.parent, file=name)


def write(data: dict[str, Any], path: Path) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def rule(provider: str = "github", **claims: Any) -> dict[str, Any]:
    return {"provider": provider, "claims": claims}
