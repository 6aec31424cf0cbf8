"""A config loaded to evaluate its policy only: `ci-broker test`, `diff` and `check --policy-only`.

A pull request's pipeline reviews the policy but does not hold the broker's signing keys, and the
base branch's config read back from git has no files beside it. So every `server.signing_keys`
entry is replaced by a throwaway key made for this load and gone after it; everything else is
validated exactly as the broker's own loader does (`broker.config.build_config`). Nothing loaded
this way can sign for the broker.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from broker import strictyaml
from broker.config import Config, ConfigError, build_config
from broker.keys import write_private_key
from broker.schema import Finding


def load_policy(path: str | Path, *, name: str | None = None) -> Config:
    """Read and validate a config with throwaway signing keys; ConfigError lists every problem.

    `name` is how findings name the file (a base branch's config is read from a temporary copy).
    """
    file = name or str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(file, [Finding("error", "<file>", f"cannot read: {exc}")]) from None
    try:
        data = strictyaml.loads(text)
    except strictyaml.YamlProblem as exc:
        raise ConfigError(file, [Finding("error", exc.path or "<file>", exc.message)]) from None
    with tempfile.TemporaryDirectory(prefix="ci-broker-review-") as tmp:
        _throwaway_keys(data, Path(tmp))
        return build_config(data, base_dir=Path(path).resolve().parent, file=file)


def _throwaway_keys(data: Any, directory: Path) -> None:
    server = data.get("server") if isinstance(data, dict) else None
    keys = server.get("signing_keys") if isinstance(server, dict) else None
    if isinstance(keys, str):
        keys = [keys]
    if not isinstance(keys, list) or not keys:
        return  # the loader reports what is wrong with it
    replaced = []
    for i in range(len(keys)):
        path = directory / f"review-{i}.pem"
        write_private_key(path, "ES256")
        replaced.append(str(path))
    assert isinstance(server, dict)
    server["signing_keys"] = replaced
