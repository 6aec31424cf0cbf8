"""The config file's YAML: libyaml's parser when present, the pure one otherwise, the same result
from both, duplicate keys refused with their key path and line, and every bad file a clear error.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from broker import strictyaml
from broker.config import ConfigError, load_config
from broker.strictyaml import YamlProblem, loads

ROOT = Path(__file__).resolve().parents[1]
LOADERS = [
    pytest.param(strictyaml.PURE_LOADER, id="pure"),
    pytest.param(
        strictyaml.C_LOADER,
        id="libyaml",
        marks=pytest.mark.skipif(strictyaml.C_LOADER is None, reason="PyYAML without libyaml"),
    ),
]


def _shipped_yaml() -> list[Path]:
    # Walked with the tool and dependency trees pruned, not filtered afterwards: rglob would read
    # all of .venv and .tools at every collection (a second in each test process).
    found = []
    for directory, subdirs, files in os.walk(ROOT):
        subdirs[:] = [d for d in subdirs if d not in {".venv", ".tools", "node_modules", ".git"}]
        found += [Path(directory, name) for name in files if name.endswith((".yaml", ".yml"))]
    return sorted(found)


SHIPPED_YAML = _shipped_yaml()


def problem(text: str, loader: type[yaml.SafeLoader]) -> YamlProblem:
    with pytest.raises(YamlProblem) as info:
        loads(text, loader)
    return info.value


def test_libyamls_parser_is_the_one_used_where_pyyaml_has_it():
    if strictyaml.C_LOADER is None:
        # PyYAML's wheels ship libyaml; CI installs from them, so there it must be present.
        assert not os.environ.get("CI"), "PyYAML was installed without libyaml"
        assert strictyaml.LOADER is strictyaml.PURE_LOADER
    else:
        assert strictyaml.LOADER is strictyaml.C_LOADER


def test_the_pure_parser_stands_in_where_libyaml_is_missing():
    # In a fresh interpreter whose PyYAML has no libyaml (its C classes removed before the import).
    program = (
        "import yaml\n"
        "del yaml.CSafeLoader\n"
        "from broker import strictyaml\n"
        "assert strictyaml.C_LOADER is None and strictyaml.LOADER is strictyaml.PURE_LOADER\n"
        "try:\n"
        "    strictyaml.loads('a: 1\\na: 2\\n')\n"
        "except strictyaml.YamlProblem as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "a: duplicate key 'a' (line 2, column 1)"


@pytest.mark.skipif(strictyaml.C_LOADER is None, reason="PyYAML without libyaml")
@pytest.mark.parametrize("path", SHIPPED_YAML, ids=lambda p: str(p.relative_to(ROOT)))
def test_both_parsers_read_every_yaml_file_the_project_ships_alike(path):
    text = path.read_text()
    results = []
    for loader in (strictyaml.PURE_LOADER, strictyaml.C_LOADER):
        try:
            results.append(loads(text, loader))
        except YamlProblem as exc:  # multi-document manifests: both must refuse them
            results.append(("refused", exc.path))
    assert results[0] == results[1]


@pytest.mark.parametrize("loader", LOADERS)
def test_scalars_resolve_as_yaml_1_1_says_with_either_parser(loader):
    text = "a: yes\nb: off\nc: 012\nd: '012'\ne: 1.5\nf: ~\ng: 2026-01-02\nh: [x, {i: j}]\n"
    assert loads(text, loader) == yaml.load(text, Loader=yaml.SafeLoader)


@pytest.mark.parametrize("loader", LOADERS)
def test_a_duplicate_key_is_refused_with_its_key_path_and_line(loader):
    text = (
        "roles:\n"
        "  deploy:\n"
        "    allow:\n"
        "      - provider: github\n"
        "        claims:\n"
        "          repository_id: '1'\n"
        "          ref: refs/heads/main\n"
        "          repository_id: '2'\n"
    )
    found = problem(text, loader)
    assert found.path == "roles.deploy.allow[0].claims.repository_id"
    assert found.message == "duplicate key 'repository_id' (line 8, column 11)"


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize(
    "text, path, line",
    [
        ("server: {}\nroles: {}\nserver: {}\n", "server", 3),
        ("roles:\n  a: {cloud: aws, cloud: gcp}\n", "roles.a.cloud", 2),
        ("roles:\n  a: 1\n  b: 2\n  a: 3\n", "roles.a", 4),
        # A key a merge (`<<`) brought in and the mapping sets again: refused too, not overridden.
        ("base: &b {ref: main}\nrule: {<<: *b, ref: dev}\n", "rule.ref", 2),
        # Mappings PyYAML builds by itself: inside an ordered map, and a set's members.
        ("a: !!omap [{b: {c: 1, c: 2}}]\n", "a[0].b.c", 1),
        ("a: !!set {x, y, x}\n", "a.x", 1),
    ],
)
def test_duplicates_anywhere_are_refused(loader, text, path, line):
    found = problem(text, loader)
    assert found.path == path and "duplicate key" in found.message and f"(line {line}," in found.message


def test_a_duplicate_key_in_a_config_file_names_the_file_path_and_line(tmp_path, key_file):
    config = tmp_path / "broker.yaml"
    config.write_text(
        "server:\n  issuer: https://b.example.com\n  signing_keys: [signing.pem]\n"
        "providers:\n  github: {issuer: https://token.actions.githubusercontent.com, type: github}\n"
        "roles:\n  r:\n    cloud: aws\n    aws: {role_arn: 'arn:aws:iam::123456789012:role/r'}\n"
        "    allow:\n      - provider: github\n        claims: {repository_id: '1', repository_id: '2'}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert str(info.value) == (
        f"error: {config}: roles.r.allow[0].claims.repository_id: "
        "duplicate key 'repository_id' (line 12, column 38)"
    )


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize(
    "text, line",
    [("server: [unclosed\n", 2), ("a:\n  b: 1\n   c: 2\n", 3), ("a: 'open\n", 2), ("\tserver: {}\n", 1)],
)
def test_syntax_errors_are_invalid_yaml_with_a_line(loader, text, line):
    found = problem(text, loader)
    assert found.path == "" and found.message.startswith("invalid YAML: ")
    assert f"(line {line}, column" in found.message


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize(
    "text",
    [
        "[" * 900 + "]" * 900,
        "".join(f"{'  ' * depth}k:\n" for depth in range(2000)) + "  " * 2000 + "k: v\n",
    ],
    ids=["flow-900", "block-2000"],
)
def test_deep_nesting_is_a_clear_error_not_a_crash(loader, text):
    assert problem(text, loader).message.startswith("invalid YAML: ")


@pytest.mark.parametrize("loader", LOADERS)
def test_an_alias_is_the_same_object_built_once(loader):
    # Ten levels of ten aliases each would be 10**10 lists if each alias were built anew.
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"l{n}: &l{n} [{', '.join([f'*l{n - 1}'] * 10)}]" for n in range(1, 10)]
    data = loads("\n".join(lines) + "\n", loader)
    assert data["l9"][0] is data["l8"] and data["l8"][3] is data["l7"]


@pytest.mark.parametrize("loader", LOADERS)
def test_a_node_that_contains_itself_is_refused(loader):
    assert "recursive" in problem("a: &x [1, *x]\n", loader).message


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize(
    "text",
    ["a: !!python/object/apply:os.system ['true']\n", "a: !!python/name:os.system\n", "a: !custom x\n"],
)
def test_only_yamls_own_tags_are_accepted(loader, text):
    assert "could not determine a constructor" in problem(text, loader).message


@pytest.mark.parametrize("loader", LOADERS)
def test_the_collector_is_left_as_it_was_after_a_good_or_a_bad_file(loader):
    assert gc.isenabled()
    loads("a: 1\n", loader)
    assert gc.isenabled()
    problem("a: 1\na: 2\n", loader)
    assert gc.isenabled()
    gc.disable()
    try:
        loads("a: 1\n", loader)
        assert not gc.isenabled()
    finally:
        gc.enable()


@pytest.mark.parametrize("loader", LOADERS)
def test_an_empty_file_is_no_document(loader):
    assert loads("", loader) is None
    assert loads("# only a comment\n", loader) is None
