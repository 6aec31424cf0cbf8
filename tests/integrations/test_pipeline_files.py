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
        # One directory per role (its token variable), beside the project directory.
        assert (
            '_cib_self="${CI_PROJECT_DIR}.tmp/ci-broker${CI_BROKER_TOKEN_VARIABLE:+-$CI_BROKER_TOKEN_VARIABLE}'
            '/client.sh"'
        ) in head
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
    assert {"url", "role", "audience", "duration", "refresh", "job", "token", "aws_profile"} == set(inputs)
    assert "default" not in inputs["url"] and "default" not in inputs["role"]
    assert inputs["audience"]["default"] == "$CI_BROKER_URL"
    assert inputs["token"]["default"] == "CI_BROKER_ID_TOKEN"
    assert all(i["description"] for i in inputs.values())
    job = component["$[[ inputs.job ]]"]
    # each role its own ID token, with its own audience (several roles in one job)
    assert job["id_tokens"] == {"$[[ inputs.token ]]": {"aud": "$[[ inputs.audience ]]"}}
    assert job["variables"]["CI_BROKER_URL"] == "$[[ inputs.url ]]"
    # The settings the client reads are text in the script, not variables a pipeline can override.
    (script,) = job["before_script"]
    for name, key in [
        ("URL", "url"),
        ("ROLE", "role"),
        ("DURATION", "duration"),
        ("REFRESH", "refresh"),
        ("TOKEN_VARIABLE", "token"),
        ("AWS_PROFILE", "aws_profile"),
    ]:
        assert f"\nCI_BROKER_{name}='$[[ inputs.{key} ]]'\n" in "\n" + script


# The component's input rules (spec:inputs:regex, checked by GitLab when the pipeline is created;
# gitlab-ci-local applies the same rules, test_gitlab_template.py runs that). GitLab's RE2 and
# Python's re agree on these patterns: anchors, classes, counted repeats, alternation.
INPUT_CASES = {
    "url": (
        [
            "https://broker.example.com",
            "https://broker.example.com:8443/base",
            "http://127.0.0.1:8080",
            "http://localhost",
            "http://[::1]:9000/x",
        ],
        [
            "http://broker.example.com",
            "http://10.0.0.1",
            "ftp://127.0.0.1",
            "broker.example.com",
            "https://a b",
            "https://x'y",
            'https://x"y',
            "https://$EVIL",
            "https://user@evil.example.com",
            "http://localhost:80@evil.example.com",
            "http://127.0.0.1.nip.io",
            "https://broker.example.com\n",
            "",
        ],
    ),
    "role": (["deploy-prod", "a", "x" * 64, "r.1_2"], ["", "-x", "a b", "a/b", "x" * 65, "r'", "$(id)"]),
    "audience": (
        ["https://broker.example.com", "$CI_BROKER_URL", "api://AzureADTokenExchange"],
        ["", "a b", "x'y", 'x"y', "a\\b", "`id`"],
    ),
    "duration": (["", "900", "43200", "999999"], ["0", "-1", "9.5", "1e3", "1234567", " 900", "900s"]),
    "job": ([".ci-broker", ".aws-deploy", ".a.b_c-1"], ["ci-broker", "", ".", "..x", ".a b", '.a"', ".a:b"]),
    "token": (
        ["CI_BROKER_ID_TOKEN", "AWS_ID_TOKEN", "_T1"],
        ["", "1ABC", "A-B", "A B", "$X", "A;id", "x" * 65],
    ),
    "aws_profile": (["", "deploy", "audit.prod-1_x"], ["a b", "a]", "[x]", "a\nb", "x" * 65]),
}


def test_the_components_input_rules_accept_good_values_and_refuse_bad_ones() -> None:
    spec, _ = yaml.safe_load_all(COMPONENT.read_text())
    inputs = spec["spec"]["inputs"]
    assert set(INPUT_CASES) | {"refresh"} == set(inputs)
    assert inputs["refresh"]["options"] == ["true", "false"]
    for name, (good, bad) in INPUT_CASES.items():
        rule = re.compile(inputs[name]["regex"])
        assert inputs[name]["regex"].startswith("^") and inputs[name]["regex"].endswith("$")
        for value in good:
            assert rule.search(value), (name, value)
        for value in bad:
            # search, as GitLab does; the anchors make it a whole-value match ($ must not
            # accept a final newline either: Python's $ does, RE2's does not, so \n cases use \Z)
            assert not re.search(inputs[name]["regex"].removesuffix("$") + r"\Z", value), (name, value)
        if "default" in inputs[name]:
            assert rule.search(inputs[name]["default"]), f"{name}'s default breaks its own rule"


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


def test_the_component_projects_readme_has_no_link_out_of_its_tree() -> None:
    """gitlab-templates/ becomes the component project's root (`git subtree split`), whose README
    the CI/CD catalog shows: a relative link out of the directory would break there."""
    readme = ROOT / "gitlab-templates" / "README.md"
    text = readme.read_text()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"https?://", target) or target.startswith("#"):
            continue
        resolved = (readme.parent / target.split("#")[0]).resolve()
        assert resolved.is_relative_to(readme.parent.resolve()) and resolved.exists(), target
    assert "../" not in text
