"""The shipped files themselves: one client in both pipelines, and the contract's shape.

CONTRACT section 5 (the Action's inputs and outputs) and section 6 (the template's hidden job,
variables and id_tokens) are checked here; their behaviour is checked by running them.
"""

from __future__ import annotations

import re
import subprocess
import sys

import yaml
from support import ACTION_DIR, CLIENT, COMPONENT, ROOT, TEMPLATE, require_tool

CLIENT_TEXT = CLIENT.read_text()


def test_templates_embed_the_client_byte_for_byte() -> None:
    check = subprocess.run(
        [sys.executable, str(ROOT / "gitlab-templates" / "embed-client.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stderr
    template = yaml.safe_load(TEMPLATE.read_text())
    spec, component = yaml.safe_load_all(COMPONENT.read_text())
    for job in (template[".ci-broker"], component["$[[ inputs.job ]]"]):
        (script,) = job["before_script"]
        # Written verbatim (a quoted here-document expands nothing) beside the project, then sourced.
        head, _, rest = script.partition("<<'CI_BROKER_CLIENT'\n")
        client, _, tail = rest.partition("\nCI_BROKER_CLIENT\n")
        assert client + "\n" == CLIENT_TEXT
        assert head.endswith('cat >"$_cib_self" ')
        assert '_cib_self="${CI_PROJECT_DIR}.tmp/ci-broker/client.sh"' in head
        assert tail == '. "$_cib_self"\n'
        assert "CI_BROKER_CLIENT" not in CLIENT_TEXT.splitlines()
        assert "ci-broker-session end" in job["after_script"][0]


def test_template_matches_contract_section_6() -> None:
    job = yaml.safe_load(TEMPLATE.read_text())[".ci-broker"]
    assert job["id_tokens"] == {"CI_BROKER_ID_TOKEN": {"aud": "$CI_BROKER_AUDIENCE"}}
    assert job["variables"] == {"CI_BROKER_AUDIENCE": "$CI_BROKER_URL"}
    assert set(job) == {"variables", "id_tokens", "before_script", "after_script"}


def test_component_takes_url_role_audience_inputs() -> None:
    spec, component = yaml.safe_load_all(COMPONENT.read_text())
    inputs = spec["spec"]["inputs"]
    assert {"url", "role", "audience"} <= set(inputs)
    assert "default" not in inputs["url"] and "default" not in inputs["role"]
    assert inputs["audience"]["default"] == "$CI_BROKER_URL"
    job = component["$[[ inputs.job ]]"]
    assert job["id_tokens"] == {"CI_BROKER_ID_TOKEN": {"aud": "$CI_BROKER_AUDIENCE"}}
    assert job["variables"]["CI_BROKER_URL"] == "$[[ inputs.url ]]"


def test_action_matches_contract_section_5() -> None:
    action = yaml.safe_load((ACTION_DIR / "action.yml").read_text())
    inputs = action["inputs"]
    assert set(inputs) == {
        "broker-url",
        "role",
        "audience",
        "duration",
        "export-env",
        "output-credentials",
        "refresh",
        "aws-profile",
        "allowed-account-ids",
    }
    assert inputs["refresh"]["default"] == "false"
    assert inputs["broker-url"]["required"] is True and inputs["role"]["required"] is True
    assert inputs["export-env"]["default"] == "true"
    assert inputs["output-credentials"]["default"] == "false"
    assert {
        "cloud",
        "expires-at",
        "access-key-id",
        "secret-access-key",
        "session-token",
        "access-token",
    } <= set(action["outputs"])
    runs = action["runs"]
    assert runs["using"] in {"node20", "node24"}
    for script in (runs["main"], runs["post"]):
        assert (ACTION_DIR / script).is_file()
        node = subprocess.run(
            [require_tool("node"), "--check", str(ACTION_DIR / script)], capture_output=True, text=True
        )
        assert node.returncode == 0, node.stderr


def test_the_action_is_javascript_with_no_shell_and_no_dependencies() -> None:
    """The Action runs on the runner's own node on Linux, macOS and Windows: nothing to install."""
    scripts = sorted(ACTION_DIR.rglob("*.js"))
    assert {p.name for p in scripts} >= {"main.js", "post.js", "session.js"}
    for script in scripts:
        text = script.read_text()
        assert not re.search(r"ci-broker\.sh|/bin/sh|bash|childProcess\.exec|shell: *true", text), script
        required = set(re.findall(r"require\('([^']+)'\)", text))
        assert required <= {"child_process", "crypto", "fs", "os", "path"} | {
            r for r in required if r.startswith("./")
        }, script
        assert b"\r" not in script.read_bytes()
        node = subprocess.run([require_tool("node"), "--check", str(script)], capture_output=True, text=True)
        assert node.returncode == 0, node.stderr
    # The only process it starts is node itself (the Azure token file's refresher).
    spawns = re.findall(r"spawn\(([^,]+),", (ACTION_DIR / "lib" / "session.js").read_text())
    assert spawns == ["node"]
    assert "const node = process.execPath;" in (ACTION_DIR / "lib" / "session.js").read_text()
    assert "*.js text eol=lf" in (ACTION_DIR / ".gitattributes").read_text()
    assert b"\r" not in CLIENT.read_bytes()


def test_client_passes_shellcheck_as_posix_sh() -> None:
    shellcheck = require_tool("shellcheck")
    result = subprocess.run([shellcheck, "-s", "sh", str(CLIENT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_client_never_evaluates_text() -> None:
    code = [line for line in CLIENT_TEXT.splitlines() if not line.lstrip().startswith("#")]
    assert not [line for line in code if re.search(r"\beval\b|\bsource\b|`", line)]


def test_client_removes_every_name_it_defines() -> None:
    """Inlined into a GitLab job's shell, the client must leave nothing of its own behind."""
    assigned = set(re.findall(r"\b(_cib_[a-z_]+)=", CLIENT_TEXT))
    assigned |= set(re.findall(r"\bfor (_cib_[a-z_]+) in", CLIENT_TEXT))
    assigned |= set(re.findall(r"read -r (_cib_[a-z_]+)", CLIENT_TEXT))
    functions = set(re.findall(r"^(_cib_[a-z_]+)\(\) \{", CLIENT_TEXT, re.M))
    tail = CLIENT_TEXT[CLIENT_TEXT.rindex("\n_cib_main\n") :]
    unset_vars, _, rest = tail.partition("unset -f")
    unset_functions = rest.split("\nif ")[0]
    assert assigned - set(re.findall(r"_cib_[a-z_]+", unset_vars)) == {"_cib_xtrace"}
    assert functions == set(re.findall(r"_cib_[a-z_]+", unset_functions))


def test_client_text_is_safe_to_embed_in_yaml_and_components() -> None:
    assert "$[[" not in CLIENT_TEXT  # GitLab would interpolate it as an input
    assert "\t" not in CLIENT_TEXT
    assert all(line == line.rstrip() for line in CLIENT_TEXT.splitlines())
    assert CLIENT_TEXT.splitlines()[0].startswith("# >>> ci-broker client")
    assert CLIENT_TEXT.splitlines()[-1] == "# <<< ci-broker client"
