"""The shared client's generic mode (`CI_BROKER_TARGET=generic`), as each CI's job runs it: the
token in a variable the CI names (CircleCI, Bitbucket, HCP Terraform, Jenkins, Azure DevOps,
Buildkite) or in a file (Kubernetes' projected token, Jenkins' file credential), under dash (`sh`
on Debian and Ubuntu), busybox `sh` alone (alpine) and bash; and the Buildkite plugin built on it.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from clientrun import ENV_MARK, FLAVORS, Flavor, Result, stub_tool
from endpoints import ScriptedBroker
from support import AWS, AZURE, CLIENT, JWT, ROOT, assert_no_secret, jwt_for, require_tool

PLUGIN = ROOT / "buildkite-plugin"
# dash + curl, bash + python3, busybox ash + busybox wget: plain sh, bash and busybox sh.
SHELLS = [f for f in FLAVORS if f.name in ("dash-curl", "bash-python3", "busybox-alpine")]
SHELL_IDS = [f.name for f in SHELLS]

# How each CI hands the job its token: (CI, variable the CI sets, or None for a file).
CI_VARIABLES = [
    ("circleci", "CIRCLE_OIDC_TOKEN_V2"),
    ("bitbucket", "BITBUCKET_STEP_OIDC_TOKEN"),
    ("terraform-cloud", "TFC_WORKLOAD_IDENTITY_TOKEN"),
    ("jenkins", "BROKER_ID_TOKEN"),  # the credentials binding's `variable:`
    ("azure-devops", "CI_BROKER_ADO_TOKEN"),  # set from System.OidcRequestUri by the recipe
    ("buildkite", "CI_BROKER_BUILDKITE_OIDC_TOKEN"),  # set by the plugin
]


def run_job(tmp: Path, flavor: Flavor, env: dict[str, str], epilogue: str = "") -> Result:
    """The client sourced into a job's shell under `set -eu`, then the job's environment."""
    argv, shell_env = flavor.command(tmp)
    script = "\n".join(["set -eu", CLIENT.read_text(), epilogue, f"echo '{ENV_MARK}'", "env", ""])
    full = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CI_BROKER_", "GITHUB_", "ACTIONS_", "AWS_", "AZURE_", "ARM_", "CI_"))
    }
    full.update({"CI_BROKER_TARGET": "generic", "CI_BROKER_HTTP_TOOLS": flavor.tools, **shell_env, **env})
    proc = subprocess.run(
        [*argv, "-c", script], env=full, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )
    before, _, after = proc.stdout.partition(ENV_MARK + "\n")
    return Result(
        proc.returncode,
        before,
        proc.stderr,
        dict(line.split("=", 1) for line in after.splitlines() if "=" in line),
    )


def base_env(broker: str, **extra: str) -> dict[str, str]:
    return {"CI_BROKER_URL": broker, "CI_BROKER_ROLE": "deploy", **extra}


@pytest.mark.parametrize("flavor", SHELLS, ids=SHELL_IDS)
@pytest.mark.parametrize("ci,variable", CI_VARIABLES, ids=[c for c, _ in CI_VARIABLES])
def test_the_token_comes_from_the_variable_each_ci_sets(tmp_path, flavor, ci, variable):
    with ScriptedBroker(ScriptedBroker.granted("aws", AWS)) as broker:
        token = jwt_for(broker.url)
        env = base_env(broker.url, CI_BROKER_TOKEN_VARIABLE=variable, **{variable: token})
        result = run_job(tmp_path, flavor, env)
    assert result.returncode == 0, result.log
    (seen,) = broker.seen
    assert seen.authorization == f"Bearer {token}"
    assert json.loads(seen.body) == {"role": "deploy"}
    assert result.env["AWS_ACCESS_KEY_ID"] == AWS["access_key_id"]
    assert result.env["AWS_SESSION_TOKEN"] == AWS["session_token"]
    assert result.env["CI_BROKER_CLOUD"] == "aws"
    assert_no_secret(result.log, [token, AWS["secret_access_key"], AWS["session_token"]], "the job log")
    assert not [name for name in result.env if name.lower().startswith("_cib")]


@pytest.mark.parametrize("flavor", SHELLS, ids=SHELL_IDS)
def test_the_token_comes_from_a_file_kubernetes_projects(tmp_path, flavor):
    token_file = tmp_path / "var-run-secrets-tokens" / "ci-broker"
    token_file.parent.mkdir()
    with ScriptedBroker(ScriptedBroker.granted("azure", AZURE)) as broker:
        token = jwt_for(broker.url)
        token_file.write_text(token)  # a projected token file has no trailing newline
        result = run_job(tmp_path, flavor, base_env(broker.url, CI_BROKER_TOKEN_FILE=str(token_file)))
    assert result.returncode == 0, result.log
    assert broker.seen[0].authorization == f"Bearer {token}"
    assert result.env["AZURE_CLIENT_ID"] == AZURE["client_id"]
    federated = Path(result.env["AZURE_FEDERATED_TOKEN_FILE"])
    assert federated.read_text() == AZURE["federated_token"]
    assert oct(federated.stat().st_mode & 0o777) == "0o600"
    assert_no_secret(result.log, [token, AZURE["access_token"], AZURE["federated_token"]], "the job log")


@pytest.mark.parametrize("flavor", SHELLS, ids=SHELL_IDS)
def test_a_token_file_written_with_a_newline_is_read(tmp_path, flavor):
    """`buildkite-agent oidc request-token > file`, Jenkins' file credential: a trailing newline."""
    token_file = tmp_path / "token"
    with ScriptedBroker(ScriptedBroker.granted("aws", AWS)) as broker:
        token = jwt_for(broker.url)
        token_file.write_text(token + "\r\n")
        result = run_job(tmp_path, flavor, base_env(broker.url, CI_BROKER_TOKEN_FILE=str(token_file)))
    assert result.returncode == 0, result.log
    assert broker.seen[0].authorization == f"Bearer {token}"


def test_without_a_token_source_the_error_says_what_to_set(tmp_path):
    result = run_job(tmp_path, SHELLS[0], base_env("https://broker.example.com"))
    assert result.returncode == 1
    assert "CI_BROKER_TOKEN_FILE" in result.stderr and "CI_BROKER_TOKEN_VARIABLE" in result.stderr


@pytest.mark.parametrize("flavor", SHELLS, ids=SHELL_IDS)
def test_an_empty_or_unexported_variable_is_named_in_the_error(tmp_path, flavor):
    env = base_env("https://broker.example.com", CI_BROKER_TOKEN_VARIABLE="CIRCLE_OIDC_TOKEN_V2")
    result = run_job(tmp_path, flavor, env)
    assert result.returncode == 1
    assert "CIRCLE_OIDC_TOKEN_V2 is empty or not exported" in result.stderr


def test_a_token_given_where_a_variable_name_belongs_is_refused_and_not_echoed(tmp_path):
    result = run_job(
        tmp_path, SHELLS[0], base_env("https://broker.example.com", CI_BROKER_TOKEN_VARIABLE=JWT)
    )
    assert result.returncode == 1
    assert "must be a variable's name, not its value" in result.stderr
    assert_no_secret(result.log, [JWT], "the job log")


@pytest.mark.parametrize(
    "name",
    ["A;id", "$(id)", "A B", "1ABC", "ENV[0]", "a-b"],
    ids=["semicolon", "subst", "space", "digit", "bracket", "dash"],
)
def test_a_variable_name_with_shell_syntax_is_refused(tmp_path, name):
    marker = tmp_path / "ran"
    env = base_env(
        "https://broker.example.com", CI_BROKER_TOKEN_VARIABLE=name.replace("id", f"touch {marker}")
    )
    result = run_job(tmp_path, SHELLS[0], env)
    assert result.returncode == 1
    assert "must be a variable's name" in result.stderr
    assert not marker.exists()


def test_a_missing_token_file_is_refused(tmp_path):
    env = base_env("https://broker.example.com", CI_BROKER_TOKEN_FILE=str(tmp_path / "nope"))
    result = run_job(tmp_path, SHELLS[0], env)
    assert result.returncode == 1
    assert "is not a readable file" in result.stderr


def test_a_variable_holding_something_other_than_a_jwt_is_refused(tmp_path):
    with ScriptedBroker(ScriptedBroker.granted("aws", AWS)) as broker:
        for value in [JWT + '"\nurl = "http://evil', "$(id).b.c", "not-a-jwt"]:
            env = base_env(broker.url, CI_BROKER_TOKEN_VARIABLE="TFC_WORKLOAD_IDENTITY_TOKEN")
            result = run_job(tmp_path, SHELLS[0], {**env, "TFC_WORKLOAD_IDENTITY_TOKEN": value})
            assert result.returncode == 1
            assert "TFC_WORKLOAD_IDENTITY_TOKEN does not look like a JWT" in result.stderr
        assert broker.seen == []


def test_a_broker_refusal_is_explained_in_generic_mode(tmp_path):
    with ScriptedBroker(
        ScriptedBroker.error(403, "access_denied", "no rule of this role grants it")
    ) as broker:
        env = base_env(
            broker.url,
            CI_BROKER_TOKEN_VARIABLE="BITBUCKET_STEP_OIDC_TOKEN",
            BITBUCKET_STEP_OIDC_TOKEN=jwt_for(broker.url),
        )
        result = run_job(tmp_path, SHELLS[0], env)
    assert result.returncode == 1
    assert "the broker denied role 'deploy': HTTP 403 access_denied" in result.stderr


# -- the Buildkite plugin ----------------------------------------------------------------------------


def test_the_plugins_client_is_the_shared_client():
    assert (PLUGIN / "lib" / "ci-broker.sh").read_bytes() == CLIENT.read_bytes(), (
        "copy actions/credentials/ci-broker.sh to buildkite-plugin/lib/"
    )


def test_the_plugin_hooks_are_executable_and_lint_clean():
    hooks = [PLUGIN / "hooks" / "environment", PLUGIN / "hooks" / "pre-exit"]
    assert all(os.access(h, os.X_OK) for h in hooks)
    shellcheck = require_tool("shellcheck")
    result = subprocess.run([shellcheck, *map(str, hooks)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def fake_agent(bindir: Path, token: str, log: Path) -> None:
    """`buildkite-agent oidc request-token`: records its arguments, prints the token (as the agent does)."""
    token_file = bindir.parent / "agent-token"
    token_file.write_text(token)
    stub_tool(bindir, "buildkite-agent", f'printf "%s\\n" "$*" >> "{log}"\ncat "{token_file}"\n')


def run_plugin(tmp: Path, env: dict[str, str], token: str = JWT) -> tuple[Result, str, Path]:
    """The agent's way: source hooks/environment in bash, dump the environment, then pre-exit."""
    bindir, log, tmpdir = tmp / "agent-bin", tmp / "agent.log", tmp / "agent-tmp"
    tmpdir.mkdir(exist_ok=True)
    fake_agent(bindir, token, log)
    script = (
        f'. "{PLUGIN}/hooks/environment"\n'
        f"echo '{ENV_MARK}'\nenv\n"
        f'echo "---"\n. "{PLUGIN}/hooks/pre-exit"\n'
        'if [ -d "$BUILDKITE_PLUGIN_CI_BROKER_TMPDIR" ]; then echo tmp-left; else echo tmp-removed; fi\n'
    )
    full = {
        k: v for k, v in os.environ.items() if not k.startswith(("CI_BROKER_", "BUILDKITE", "AWS_", "AZURE_"))
    }
    full.update({"PATH": f"{bindir}:{full['PATH']}", "TMPDIR": str(tmpdir), **env})
    proc = subprocess.run(
        [require_tool("bash"), "-c", script],
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    before, _, after = proc.stdout.partition(ENV_MARK + "\n")
    job_env, _, tail = after.partition("---\n")
    parsed = dict(line.split("=", 1) for line in job_env.splitlines() if "=" in line)
    return (
        Result(proc.returncode, before + tail, proc.stderr, parsed),
        log.read_text() if log.exists() else "",
        tmpdir,
    )


def plugin_env(broker: str, **extra: str) -> dict[str, str]:
    return {
        "BUILDKITE": "true",
        "BUILDKITE_PLUGIN_CI_BROKER_BROKER_URL": broker,
        "BUILDKITE_PLUGIN_CI_BROKER_ROLE": "deploy",
        **extra,
    }


def test_the_plugin_requests_a_token_for_the_broker_and_exports_credentials(tmp_path):
    with ScriptedBroker(ScriptedBroker.granted("azure", AZURE)) as broker:
        token = jwt_for(broker.url)
        result, agent_log, tmpdir = run_plugin(tmp_path, plugin_env(broker.url), token)
    assert result.returncode == 0, result.log
    assert (
        agent_log.strip() == f"oidc request-token --audience {broker.url} --claim organization_id,pipeline_id"
    )
    assert broker.seen[0].authorization == f"Bearer {token}"
    assert result.env["AZURE_CLIENT_ID"] == AZURE["client_id"]
    # The federated token file lived in the job's own directory, and pre-exit removed it.
    assert result.env["AZURE_FEDERATED_TOKEN_FILE"].startswith(str(tmpdir / "ci-broker."))
    assert "tmp-removed" in result.stdout
    assert not Path(result.env["AZURE_FEDERATED_TOKEN_FILE"]).exists()
    # Nothing of the plugin's or the client's own is left, the token included.
    assert "CI_BROKER_BUILDKITE_OIDC_TOKEN" not in result.env
    assert not [
        n
        for n in result.env
        if n.startswith(("_cib", "CI_BROKER_")) and n != "CI_BROKER_CLOUD" and n != "CI_BROKER_EXPIRES_AT"
    ]
    assert result.env["TMPDIR"] == str(tmpdir)
    assert_no_secret(result.log, [token, AZURE["access_token"], AZURE["federated_token"]], "the job log")


def test_the_plugin_passes_audience_claims_and_duration(tmp_path):
    with ScriptedBroker(ScriptedBroker.granted("aws", AWS)) as broker:
        # Another spelling of the broker's URL: the same scheme, host and port (the client's rule).
        audience = broker.url.replace("http://", "HTTP://") + "/ci-broker"
        env = plugin_env(
            broker.url,
            BUILDKITE_PLUGIN_CI_BROKER_AUDIENCE=audience,
            BUILDKITE_PLUGIN_CI_BROKER_CLAIMS="organization_id",
            BUILDKITE_PLUGIN_CI_BROKER_DURATION="900",
        )
        result, agent_log, _ = run_plugin(tmp_path, env, jwt_for(audience))
    assert result.returncode == 0, result.log
    assert agent_log.strip() == f"oidc request-token --audience {audience} --claim organization_id"
    assert json.loads(broker.seen[0].body) == {"role": "deploy", "duration": 900}


def test_the_plugin_without_a_role_fails_the_job(tmp_path):
    result, agent_log, _ = run_plugin(
        tmp_path, {"BUILDKITE_PLUGIN_CI_BROKER_BROKER_URL": "https://b.example.com"}
    )
    assert result.returncode == 1
    assert "needs broker-url and role" in result.stderr
    assert agent_log == ""


def test_the_plugin_end_to_end_against_the_broker_and_the_local_sts(tmp_path, sandbox, serve_config):
    """A Buildkite-shaped token from a local issuer, the real broker, the verifying local STS."""
    from broker.sandbox.issuer import LocalIssuer, buildkite_claims

    with LocalIssuer() as issuer:
        config = sandbox.config_dict()
        config["providers"]["buildkite"] = {"issuer": issuer.url, "type": "buildkite"}
        config["roles"]["deploy-prod"]["aws"].pop("session_tags")
        config["roles"]["deploy-prod"]["allow"] = [
            {
                "provider": "buildkite",
                "claims": {"organization_id": "0184990a-477b-4fa8-9968-496074483c77", "build_branch": "main"},
            }
        ]
        serve_config(config)
        token = issuer.mint(buildkite_claims(aud=sandbox.broker_url))
        env = plugin_env(sandbox.broker_url, BUILDKITE_PLUGIN_CI_BROKER_ROLE="deploy-prod")
        result, _, _ = run_plugin(tmp_path, env, token=token)
    assert result.returncode == 0, result.log
    assert result.env["AWS_ACCESS_KEY_ID"].startswith("ASIA")
    assert result.env["AWS_REGION"] == "eu-west-1"
    assert_no_secret(result.log, [token, result.env["AWS_SECRET_ACCESS_KEY"]], "the job log")
