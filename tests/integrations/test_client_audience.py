"""The shell client sends the job's token only to the broker the token's audience names.

The attack (issue 20): anyone allowed to set a pipeline, project or group variable can point
CI_BROKER_URL at a host of theirs while the job's id_tokens still ask for the real broker's
audience; without this check the job would hand that host a valid, unspent token. The rule: the
URL's scheme://host[:port] (lower case, default port dropped) must equal that of one of the
token's audiences; a token whose audiences are not URLs goes only where
CI_BROKER_OPAQUE_AUDIENCE_URL names. Every refusal happens before any request is made.
"""

from __future__ import annotations

import re
import subprocess

import pytest
from clientrun import FLAVORS, Flavor, busybox_bin, require_tool, run_github, run_gitlab, stub_tool
from endpoints import OIDCRequestEndpoint, ScriptedBroker
from support import AWS, CLIENT, assert_no_secret, jwt_for

FLAVOR_IDS = [f.name for f in FLAVORS]
DASH_CURL = FLAVORS[0]


def gitlab_env(url: str, token: str, **extra: str) -> dict[str, str]:
    return {
        "CI_BROKER_URL": url,
        "CI_BROKER_ROLE": "deploy",
        "CI_BROKER_ID_TOKEN": token,
        "CI_BROKER_MAX_ATTEMPTS": "1",
        **extra,
    }


@pytest.mark.parametrize("flavor", FLAVORS, ids=FLAVOR_IDS)
def test_a_url_changed_by_a_variable_receives_no_request(tmp_path, flavor: Flavor) -> None:
    with (
        ScriptedBroker(ScriptedBroker.granted("aws", AWS)) as real,
        ScriptedBroker(ScriptedBroker.granted("aws", AWS)) as attacker,
    ):
        token = jwt_for(real.url)  # the job's YAML asked for the real broker's audience
        result = run_gitlab(tmp_path, flavor, gitlab_env(attacker.url, token))
    assert result.returncode == 1
    assert attacker.requests == 0 and real.requests == 0
    assert (
        f"this job's token is for '{real.url}', not for {attacker.url}: refusing to send it there."
    ) in result.stderr
    assert "Nothing was sent." in result.stderr
    assert "AWS_ACCESS_KEY_ID" not in result.env
    assert_no_secret(result.log, [token], "the job log")


def test_the_same_attack_in_generic_mode_and_on_github(tmp_path) -> None:
    with (
        ScriptedBroker(ScriptedBroker.granted("aws", AWS)) as real,
        ScriptedBroker(ScriptedBroker.granted("aws", AWS)) as attacker,
        # GitHub's token endpoint mints for the audience asked; here someone set it to the real one.
        OIDCRequestEndpoint(jwt_for) as oidc,
    ):
        github = run_github(
            tmp_path / "gh",
            DASH_CURL,
            {
                "CI_BROKER_URL": attacker.url,
                "CI_BROKER_AUDIENCE": real.url,
                "CI_BROKER_ROLE": "deploy",
                "ACTIONS_ID_TOKEN_REQUEST_URL": oidc.request_url,
                "ACTIONS_ID_TOKEN_REQUEST_TOKEN": oidc.request_token,
            },
        )
        generic = run_gitlab(
            tmp_path / "generic",
            DASH_CURL,
            {
                "CI_BROKER_TARGET": "generic",
                "CI_BROKER_URL": attacker.url,
                "CI_BROKER_ROLE": "deploy",
                "CI_BROKER_TOKEN_VARIABLE": "BUILDKITE_TOKEN",
                "BUILDKITE_TOKEN": jwt_for(real.url),
            },
        )
    assert github.returncode == 1 and generic.returncode == 1
    assert attacker.requests == 0
    assert "::error title=ci-broker::this job's token is for" in github.stdout
    assert "not for " + attacker.url in generic.stderr


def audience_for(template: str | list[str], broker_url: str) -> str | list[str]:
    """{url}, {URL} (upper case) and {port} of the broker in an audience (or a list of them)."""
    names = {"url": broker_url, "URL": broker_url.upper(), "port": broker_url.rsplit(":", 1)[1]}
    return [a.format(**names) for a in template] if isinstance(template, list) else template.format(**names)


@pytest.mark.parametrize(
    "audience,sent",
    [
        pytest.param("http://127.0.0.1:{port}0", False, id="another-port"),
        pytest.param("http://localhost:{port}", False, id="another-host-name"),
        pytest.param("https://127.0.0.1:{port}", False, id="another-scheme"),
        pytest.param(["https://vault.example.com", "https://other.example.com"], False, id="none-of-a-list"),
        pytest.param("http://127.0.0.1.evil.example.com:{port}", False, id="a-longer-host"),
        pytest.param("{url}", True, id="exact"),
        pytest.param("{url}/", True, id="trailing-slash"),
        pytest.param("{URL}/ci-broker", True, id="case-and-path"),
        pytest.param(["https://vault.example.com", "{url}"], True, id="one-of-a-list"),
    ],
)
def test_the_token_goes_only_to_the_origin_its_audience_names(tmp_path, audience, sent: bool) -> None:
    with ScriptedBroker(ScriptedBroker.granted("aws", AWS)) as broker:
        token = jwt_for(audience_for(audience, broker.url))
        result = run_gitlab(tmp_path, DASH_CURL, gitlab_env(broker.url, token))
    if sent:
        assert result.returncode == 0, result.log
        assert len(broker.seen) == 1
    else:
        assert result.returncode == 1
        assert broker.requests == 0
        assert f"not for {broker.url}: refusing to send it there." in result.stderr


def test_a_token_without_an_audience_goes_nowhere(tmp_path) -> None:
    with ScriptedBroker(ScriptedBroker.granted("aws", AWS)) as broker:
        result = run_gitlab(tmp_path, DASH_CURL, gitlab_env(broker.url, jwt_for(None)))
    assert result.returncode == 1 and broker.requests == 0
    assert "this job's token names no audience (aud); refusing to send it anywhere." in result.stderr


def test_an_unexpanded_variable_audience_says_which_gitlab_does_that(tmp_path) -> None:
    """GitLab 15.7-16.0 puts `$CI_BROKER_AUDIENCE` in the token as text: no broker accepts it."""
    with ScriptedBroker(ScriptedBroker.granted("aws", AWS)) as broker:
        result = run_gitlab(tmp_path, DASH_CURL, gitlab_env(broker.url, jwt_for("$CI_BROKER_AUDIENCE")))
    assert result.returncode == 1 and broker.requests == 0
    assert (
        "this job's token has the audience '$CI_BROKER_AUDIENCE': the variable was not expanded"
        in result.stderr
    )
    assert "GitLab 15.7 to 16.0 does not expand variables in id_tokens:aud" in result.stderr


def test_an_opaque_audience_needs_the_url_named_explicitly(tmp_path) -> None:
    """CircleCI's default token is for the organization id, Azure DevOps' for api://AzureADTokenExchange."""
    token = jwt_for("api://AzureADTokenExchange")
    with (
        ScriptedBroker(ScriptedBroker.granted("aws", AWS)) as broker,
        ScriptedBroker(ScriptedBroker.granted("aws", AWS)) as other,
    ):
        refused = run_gitlab(tmp_path / "a", DASH_CURL, gitlab_env(broker.url, token))
        elsewhere = run_gitlab(
            tmp_path / "b", DASH_CURL, gitlab_env(broker.url, token, CI_BROKER_OPAQUE_AUDIENCE_URL=other.url)
        )
        assert broker.requests == 0
        allowed = run_gitlab(
            tmp_path / "c",
            DASH_CURL,
            gitlab_env(broker.url, token, CI_BROKER_OPAQUE_AUDIENCE_URL=broker.url + "/"),
        )
    assert refused.returncode == 1 and elsewhere.returncode == 1
    assert "which is not a URL, so the client cannot tell" in refused.stderr
    assert "set" in refused.stderr and f"CI_BROKER_OPAQUE_AUDIENCE_URL to {broker.url}" in refused.stderr
    assert allowed.returncode == 0, allowed.log
    assert "is not a URL; sending it to" in allowed.stderr
    assert len(broker.seen) == 1 and other.requests == 0


def test_an_opaque_audience_beside_a_url_one_does_not_open_the_escape_hatch(tmp_path) -> None:
    with ScriptedBroker(ScriptedBroker.granted("aws", AWS)) as broker:
        token = jwt_for(["ci-broker", "https://broker.example.com"])
        result = run_gitlab(
            tmp_path, DASH_CURL, gitlab_env(broker.url, token, CI_BROKER_OPAQUE_AUDIENCE_URL=broker.url)
        )
    assert result.returncode == 1 and broker.requests == 0


# -- the rule itself, _cib_origin, on the spellings a URL can take --------------------------------

ORIGIN_FUNCTION = re.search(r"^_cib_origin\(\) \{\n.*?^\}\n", CLIENT.read_text(), re.M | re.S).group(0)


@pytest.mark.parametrize("shell", ["dash", "bash", "busybox"])
def test_origins_are_compared_after_normalising_case_and_default_ports(shell) -> None:
    cases = {
        "https://Broker.Example.COM": "https://broker.example.com",
        "HTTPS://broker.example.com:443/v1/x?y#z": "https://broker.example.com",
        "https://broker.example.com:8443/": "https://broker.example.com:8443",
        "http://127.0.0.1:80": "http://127.0.0.1",
        "http://127.0.0.1:443": "http://127.0.0.1:443",
        "https://[::1]:443/": "https://[::1]",
        "https://broker.example.com:": "https://broker.example.com",
        "https://broker.example.com?x": "https://broker.example.com",
    }
    failures = [
        "ci-broker",
        "api://AzureADTokenExchange",
        "https://",
        "https://:443",
        "https://a@b",
        "ftp://x",
        "",
    ]
    argv = [require_tool("busybox"), "sh"] if shell == "busybox" else [require_tool(shell)]
    script = (
        ORIGIN_FUNCTION
        + 'for u in "$@"; do if _cib_origin "$u"; then echo "$_cib_o"; else echo FAIL; fi; done'
    )
    out = subprocess.run(
        [*argv, "-c", script, "sh", *cases, *failures], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out == [*cases.values(), *["FAIL"] * len(failures)]


# -- what the job shows before the exchange ------------------------------------------------------


def test_the_claims_policies_use_are_shown_in_a_collapsed_section_never_the_token(tmp_path) -> None:
    with ScriptedBroker(ScriptedBroker.granted("aws", AWS)) as broker:
        token = jwt_for(
            broker.url,
            project_path="group/app",
            project_id="42",
            ref="main",
            ref_protected="true",
            environment="production",
            pipeline_source="push",
            user_email="dev@example.com",
            weird="\u001b]0;x\u0007::set-env",
            namespace_id=7,
        )
        result = run_gitlab(tmp_path, DASH_CURL, gitlab_env(broker.url, token))
    assert result.returncode == 0, result.log
    log = result.stderr  # (read as text, so the markers' \r arrives as \n)
    start = re.search(r"\x1b\[0Ksection_start:\d+:ci_broker_claims\[collapsed=true\]\n\x1b\[0K(.*)\n", log)
    end = re.search(r"\x1b\[0Ksection_end:\d+:ci_broker_claims\n\x1b\[0K\n", log)
    assert start and end and start.end() <= end.start(), log
    assert start.group(1) == "ci-broker: this job's token claims, as the broker's rules see them"
    shown = log[start.end() : end.start()].splitlines()
    assert shown == [
        "  sub: project_path:g/p:ref_type:branch:ref:main",
        f"  aud: {broker.url}",
        "  project_path: group/app",
        "  project_id: 42",
        "  namespace_id: 7",
        "  ref: main",
        "  ref_protected: true",
        "  environment: production",
        "  pipeline_source: push",
    ]
    assert log.index("section_end") < log.index("credentials for role 'deploy'")
    assert "dev@example.com" not in log
    assert_no_secret(log + result.stdout, [token, token.split(".")[1]], "the job log")


def test_not_even_the_tls_probe_goes_to_a_redirected_url(tmp_path) -> None:
    """Under busybox wget the client probes /healthz before sending a token (does this wget check
    certificates?): a URL the token is not for must not get that request either."""
    bindir = busybox_bin(tmp_path)
    calls = tmp_path / "wget-calls"
    stub_tool(tmp_path / "stubs", "wget", f'printf "%s\\n" "$*" >> {calls}\necho "  HTTP/1.1 200 OK" >&2\n')
    env = gitlab_env("https://attacker.example.com", jwt_for("https://broker.example.com"))
    env["PATH"] = f"{tmp_path / 'stubs'}:{bindir}"
    result = run_gitlab(tmp_path, Flavor("busybox-wget", "busybox", "wget"), env)
    assert result.returncode == 1
    assert "not for https://attacker.example.com: refusing to send it there." in result.stderr
    assert "attacker.example.com" not in (calls.read_text() if calls.exists() else "")


# -- the payload's decoder (awk, inside ci-broker.sh) under every awk its users have ---------------

B64_PROGRAM = re.search(r"_cib_awk_b64='(.*?)'\n", CLIENT.read_text(), re.S).group(1)
AWKS = [["mawk"], ["gawk"], ["original-awk"], ["busybox", "awk"]]


@pytest.mark.parametrize("awk", AWKS, ids=[a[0] for a in AWKS])
def test_the_payload_decoder_agrees_with_python_byte_for_byte(awk) -> None:
    import base64
    import random

    require_tool(awk[0])
    rng = random.Random(20)
    samples = [bytes(range(1, 256)), "José ☃ 𝄞".encode()] + [
        bytes(rng.randrange(1, 256) for _ in range(rng.randrange(0, 64))) for _ in range(40)
    ]
    for data in samples:
        encoded = base64.urlsafe_b64encode(data).rstrip(b"=")
        proc = subprocess.run(
            [*awk, B64_PROGRAM],
            input=encoded,
            capture_output=True,
            env={"LC_ALL": "C", "PATH": "/usr/bin:/bin"},
        )
        assert (proc.returncode, proc.stdout) == (0, data), data
    for bad in [b"ab+c", b"ab/c", b"abc=", b"a", b"ab c"]:
        proc = subprocess.run([*awk, B64_PROGRAM], input=bad, capture_output=True, env={"LC_ALL": "C"})
        assert proc.returncode == 2, bad
