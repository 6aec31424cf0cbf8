"""The documentation cannot drift from the code.

- docs/configuration.md has one table row per config key. The keys the loader reads are found by
  loading a skeleton config (one role per cloud this build has) with `Section` instrumented: each
  read records its key path, whether it is required, its default, its type and its bounds. The test
  then requires the doc's rows and the loader's reads to be the same set, each row's default, type
  and bounds to match, and each row's example value to load without an error at that key.
- Every YAML block in docs/configuration.md, docs/policies.md and the README loads; the cookbook's
  rules pass `ci-broker check` with no warning unless marked as a mistake.
- examples/broker.yaml passes `ci-broker check` with a generated key.
"""

from __future__ import annotations

import ast
import copy
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from broker import clouds
from broker.config import ConfigError, build_config
from broker.keys import write_private_key
from broker.lint import lint
from broker.schema import _MISSING, Section, join
from tests.helpers import ci_broker

ROOT = Path(__file__).resolve().parent.parent
CONFIGURATION = ROOT / "docs" / "configuration.md"
POLICIES = ROOT / "docs" / "policies.md"
README = ROOT / "README.md"
EXAMPLE = ROOT / "examples" / "broker.yaml"
LOADER_SOURCES = [
    ROOT / "broker" / "config.py",
    ROOT / "broker" / "providers.py",
    *sorted((ROOT / "broker" / "clouds").glob("*.py")),
]
TYPED_READERS = ("string", "integer", "choice", "boolean", "string_list", "url", "section")
ALL_CLOUDS = ("aws", "gcp", "azure")
# Keys that are two spellings of one setting: the loader refuses both at once.
ALIASES = {
    "server.store": ("server.replay_store",),
    "server.replay_store": ("server.store",),
}  # the contract's; a build may not have all of them yet


# -- what the loader reads ------------------------------------------------------------------------


@dataclass
class Read:
    required: bool = False
    default: Any = None
    method: str = "raw"
    choices: tuple[str, ...] = ()
    minimum: int | None = None
    maximum: int | None = None


def doc_path(path: str) -> str:
    """A concrete key path as the doc spells it: names become <name>, list indexes [], claims <claim>."""
    parts = path.split(".")
    if parts[0] in ("providers", "roles") and len(parts) > 1:
        parts[1] = "<name>"
    parts = [re.sub(r"\[\d+\]$", "[]", p) for p in parts]
    if "claims" in parts[:-1]:
        parts = parts[: parts.index("claims") + 1] + ["<claim>"]
    return ".".join(parts)


def skeleton() -> dict[str, Any]:
    """Every section present and empty, so the loader reads (and reports) every key it knows."""
    return {
        "server": {"rate_limits": {}},
        "providers": {"p": {"schema": {"untrusted": {}, "context": {}}}},
        "deny": [{"provider": "p", "claims": {"ref": "x"}}],
        "roles": {
            f"r-{cloud}": {"cloud": cloud, "allow": [{"provider": "p", "claims": {"ref": "x"}}]}
            for cloud in clouds.NAMES
        },
    }


def loader_reads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Read]:
    reads: dict[str, Read] = {}
    original_raw = Section.raw

    def raw(self: Section, key: str, default: Any = _MISSING, *, required: bool = False) -> Any:
        read = reads.setdefault(doc_path(join(self.path, key)), Read())
        read.required |= required
        return original_raw(self, key, default, required=required)

    def typed(name: str) -> Callable[..., Any]:
        original = getattr(Section, name)

        def reader(self: Section, key: str, *args: Any, **kwargs: Any) -> Any:
            result = original(self, key, *args, **kwargs)
            read = reads.setdefault(doc_path(join(self.path, key)), Read())
            # Inner calls (choice -> string) record first; the outermost reader has the last word.
            read.method = name
            if name == "choice":
                read.choices = tuple(args[0])
            if name == "integer":
                read.minimum, read.maximum = kwargs.get("minimum"), kwargs.get("maximum")
            if key not in self:
                read.default = result if name != "section" else None
            return result

        return reader

    monkeypatch.setattr(Section, "raw", raw)
    for name in TYPED_READERS:
        monkeypatch.setattr(Section, name, typed(name))
    with pytest.raises(ConfigError):
        build_config(skeleton(), base_dir=tmp_path)
    monkeypatch.undo()
    return reads


def literal_keys() -> set[str]:
    """Every key name the loader's source passes to a Section reader, read or not at runtime."""
    names: set[str] = set()
    for source in LOADER_SOURCES:
        for node in ast.walk(ast.parse(source.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in (*TYPED_READERS, "raw")
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                names.add(node.args[0].value)
    return names


# -- what the doc says ----------------------------------------------------------------------------


@dataclass
class Row:
    key: str
    type: str
    default: str
    example: str
    meaning: str
    text: str = field(repr=False)


def cells(line: str) -> list[str]:
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def doc_rows() -> dict[str, Row]:
    rows: dict[str, Row] = {}
    for line in CONFIGURATION.read_text().splitlines():
        # A key row starts with a key path in backticks: `server.issuer`, `roles.<name>.allow[].provider`.
        if not re.match(r"\| `[a-z_]+(\[\])?(\.[a-z_<>\[\]]+)*` \|", line):
            continue
        c = cells(line)
        assert len(c) == 5, f"a key row needs 5 cells (key, type, default, example, meaning): {line}"
        key = c[0].strip("`")
        assert key not in rows, f"{key} is documented twice"
        rows[key] = Row(key, c[1], c[2], c[3], c[4], line)
    return rows


def row_cloud(key: str) -> str | None:
    parts = key.split(".")
    return parts[2] if len(parts) > 2 and parts[0] == "roles" and parts[2] in ALL_CLOUDS else None


def built_rows() -> dict[str, Row]:
    """The rows for keys this build can have (a cloud not yet built has nothing to check against)."""
    return {k: r for k, r in doc_rows().items() if row_cloud(k) in (None, *clouds.NAMES)}


def yaml_blocks(path: Path) -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", path.read_text(), flags=re.S)


# -- loading documented YAML ----------------------------------------------------------------------


def materialise(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Create the files a config names (signing keys, CA bundles) under `base`; drop roles of clouds
    this build does not have yet."""
    data = copy.deepcopy(data)
    keys = (data.get("server") or {}).get("signing_keys") or []
    for name in [keys] if isinstance(keys, str) else keys:
        path = base / name
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            write_private_key(path, "ES256")
    for bundle in find_values(data, "ca_bundle"):
        path = base / bundle
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("-----BEGIN CERTIFICATE-----\n")
    roles = data.get("roles") or {}
    for name in [n for n, r in roles.items() if isinstance(r, dict) and r.get("cloud") not in clouds.NAMES]:
        del roles[name]
    return data


def find_values(node: Any, key: str) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key and isinstance(v, str):
                yield v
            yield from find_values(v, key)
    elif isinstance(node, list):
        for item in node:
            yield from find_values(item, key)


def base_config() -> dict[str, Any]:
    return {
        "server": {"issuer": "https://broker.example.com", "signing_keys": ["keys/broker-1.pem"]},
        "providers": {
            "github": {"issuer": "https://token.actions.githubusercontent.com", "type": "github"},
            "gitlab": {"issuer": "https://gitlab.com", "type": "gitlab"},
        },
        "roles": {},
    }


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    # Relative paths in documented examples resolve against the config's directory (signing keys)
    # or the working directory (ca_bundle); running in tmp_path makes both the same place.
    monkeypatch.chdir(tmp_path)
    yield tmp_path


# -- configuration.md -----------------------------------------------------------------------------


def test_every_key_the_loader_reads_is_documented_and_every_documented_key_is_read(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    reads = loader_reads(monkeypatch, tmp_path)
    rows = built_rows()
    assert sorted(set(reads) - set(rows)) == [], "keys the loader reads that docs/configuration.md lacks"
    assert sorted(set(rows) - set(reads)) == [], "documented keys the loader does not read (unknown keys)"


def test_every_key_name_in_the_loader_source_is_documented() -> None:
    # Catches keys read only on some path (e.g. under one mode) that the skeleton does not reach.
    documented = {key.split(".")[-1] for key in doc_rows()}
    assert sorted(literal_keys() - documented) == []


def test_documented_defaults_types_and_bounds_match_the_loader(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    reads = loader_reads(monkeypatch, tmp_path)
    rows = built_rows()
    problems: list[str] = []
    for key, read in sorted(reads.items()):
        row = rows.get(key)
        if row is None:
            continue
        if read.required != ("required" in row.default.lower()):
            problems.append(f"{key}: required is {read.required}, the doc's default says {row.default!r}")
        if read.default is not None and not read.required:
            # `900`, `memory`, `[RS256]`: each default value must appear inside backticks.
            shown = {
                v.strip()
                for code in re.findall(r"`([^`]*)`", row.default)
                for v in code.strip("[]").split(",")
            }
            values = read.default if isinstance(read.default, tuple) else (read.default,)
            for value in values:
                text = str(value).lower() if isinstance(value, bool) else str(value)
                if text not in shown:
                    problems.append(f"{key}: default is {text!r}, the doc says {row.default!r}")
        wanted = {
            "string": "string",
            "integer": "integer",
            "boolean": "boolean",
            "string_list": "list",
            "url": "URL",
            "section": "mapping",
        }.get(read.method)
        if wanted and wanted not in row.type:
            problems.append(f"{key}: read as {read.method}, the doc's type {row.type!r} lacks {wanted!r}")
        for choice in read.choices:
            if f"`{choice}`" not in row.type:
                problems.append(f"{key}: choice {choice!r} missing from the doc's type {row.type!r}")
        for bound in (read.minimum, read.maximum):
            if bound is not None and str(bound) not in row.type:
                problems.append(f"{key}: bound {bound} missing from the doc's type {row.type!r}")
    assert problems == []


def set_at(config: dict[str, Any], key: str, value: Any) -> str:
    """Put `value` at the documented `key` inside a valid config; returns the concrete path."""
    parts = key.split(".")
    node: Any = config
    concrete: list[str] = []
    for part in parts[:-1]:
        if part == "<name>":
            cloud = row_cloud(key)
            names = [n for n, v in node.items() if cloud is None or v.get("cloud") == cloud]
            # A provider key goes to a provider that already has it (a schema only fits an oidc one).
            name = next((n for n in names if parts[2] in node[n]), names[0])
            node, part = node[name], name
        elif part.endswith("[]"):
            part = part[:-2]
            node = node[part][0]
            part = f"{part}[0]"
        else:
            node = node.setdefault(part, {})
        concrete.append(part)
    last = parts[-1]
    if last == "<claim>":
        last = "ref"
    node[last] = value
    return ".".join(concrete + [last]).replace(".[", "[")


def test_each_documented_example_value_loads(in_tmp: Path) -> None:
    reference = yaml.safe_load(yaml_blocks(CONFIGURATION)[0])
    problems: list[str] = []
    for key, row in built_rows().items():
        if not row.example or row.example in ("-", "—"):
            # A section's example is the reference config itself; every value has its own.
            if not row.type.startswith("mapping"):
                problems.append(f"{key}: no example")
            continue
        example = yaml.safe_load(row.example.strip("`"))
        config = materialise(reference, in_tmp)
        for alias in ALIASES.get(key, ()):  # one spelling at a time
            config["server"].pop(alias.split(".")[-1], None)
        path = set_at(config, key, example)
        config = materialise(config, in_tmp)
        try:
            build_config(config, base_dir=in_tmp)
        except ConfigError as exc:
            mine = [
                f.render()
                for f in exc.findings
                if f.level == "error" and (f.path == path or f.path.startswith((path + ".", path + "[")))
            ]
            others = [f.render() for f in exc.findings if f.level == "error"]
            if mine or others:
                problems.append(f"{key}: example {row.example} -> {mine or others}")
    assert problems == []


def test_the_reference_config_in_configuration_md_loads(in_tmp: Path) -> None:
    blocks = yaml_blocks(CONFIGURATION)
    assert blocks, "configuration.md should open with a complete example"
    for block in blocks:
        # A section's own example (a `deny:` list, say) loads inside the minimal base config.
        data = yaml.safe_load(block)
        config = data if "server" in data else {**base_config(), **data}
        build_config(materialise(config, in_tmp), base_dir=in_tmp)


# -- policies.md ----------------------------------------------------------------------------------


def policy_blocks() -> list[tuple[str, dict[str, Any]]]:
    """(marker, parsed) for each YAML block; the marker is the first line's `# mistake`/`# refused`."""
    out = []
    for block in yaml_blocks(POLICIES):
        first = block.splitlines()[0].strip().lower()
        marker = (
            "mistake"
            if first.startswith("# mistake")
            else "refused"
            if first.startswith("# refused")
            else "safe"
        )
        out.append((marker, yaml.safe_load(block)))
    return out


def policy_config(snippet: dict[str, Any]) -> dict[str, Any]:
    """The snippet's roles (and the providers it declares, for CIs other than GitHub and GitLab)
    inside the base config."""
    config = base_config()
    config["providers"].update(snippet.get("providers") or {})
    config["roles"] = snippet["roles"]
    return config


def test_policies_md_has_recipes_and_mistakes() -> None:
    markers = [m for m, _ in policy_blocks()]
    assert markers.count("safe") >= 5
    assert "mistake" in markers and "refused" in markers
    text = POLICIES.read_text().lower()
    for topic in ("environment", "tag", "job_workflow_ref", "ref_protected", "monorepo"):
        assert topic in text


@pytest.mark.parametrize("index", range(len(yaml_blocks(POLICIES))))
def test_each_policy_example_behaves_as_the_cookbook_says(index: int, in_tmp: Path) -> None:
    marker, snippet = policy_blocks()[index]
    assert "roles" in snippet and set(snippet) <= {"providers", "roles"}, (
        "cookbook blocks are `roles:` snippets, with `providers:` for a CI the base config lacks"
    )
    config_dict = materialise(policy_config(snippet), in_tmp)
    if marker == "refused":
        with pytest.raises(ConfigError):
            build_config(config_dict, base_dir=in_tmp)
        return
    config = build_config(config_dict, base_dir=in_tmp)
    assert config.roles, "the block defines a role of a cloud this build has"
    warnings = [f.render() for f in lint(config)]
    if marker == "safe":
        assert warnings == [], "a recipe must pass `ci-broker check` cleanly"
    else:
        assert warnings, "a mistake the text says `ci-broker check` catches should warn"


# -- README and examples --------------------------------------------------------------------------


def test_readme_has_the_quick_start_and_links_every_doc() -> None:
    text = README.read_text()
    quick_start = text[: text.find("## Configuration")] if "## Configuration" in text else text
    assert "make demo" in quick_start and "make test" in quick_start
    for doc in ("configuration.md", "policies.md", "clouds.md", "operations.md", "security.md"):
        assert f"docs/{doc}" in text
    # Links to this issue's own files must resolve; the rest (other docs, the Action, the Terraform
    # modules) are written for other issues and may land later.
    for target in re.findall(r"\]\(((?:examples/|docs/configuration|docs/policies)[^)#]*)", text):
        assert (ROOT / target).exists(), f"broken link {target}"


def test_the_readme_config_loads(in_tmp: Path) -> None:
    configs = [b for b in map(yaml.safe_load, yaml_blocks(README)) if isinstance(b, dict) and "server" in b]
    assert configs
    for data in configs:
        build_config(materialise(data, in_tmp), base_dir=in_tmp)


def test_the_example_config_passes_ci_broker_check(tmp_path: Path) -> None:
    data = yaml.safe_load(EXAMPLE.read_text())
    config_dir = tmp_path / "etc"
    config_dir.mkdir()
    for name in data["server"]["signing_keys"]:
        (config_dir / name).parent.mkdir(parents=True, exist_ok=True)
        result = ci_broker("keygen", "--alg", "ES256", "--out", str(config_dir / name))
        assert result.returncode == 0, result.stderr
    text = EXAMPLE.read_text()
    if any(role["cloud"] not in clouds.NAMES for role in data["roles"].values()):
        text = yaml.safe_dump(materialise(data, config_dir), sort_keys=False)  # a build without every cloud
    (config_dir / "broker.yaml").write_text(text)
    result = ci_broker("check", "--config", str(config_dir / "broker.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "warning:" not in result.stdout + result.stderr
    assert "0 warning(s)" in result.stdout
