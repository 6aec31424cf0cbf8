"""The GitLab template and component, run for real by gitlab-ci-local (shell executor, no Docker)
against `ci-broker serve`.

gitlab-ci-local does not implement `id_tokens`, so the job's token is minted by the sandbox's
GitLab-like issuer, with the audience GitLab would give it ($CI_BROKER_AUDIENCE, which defaults
to $CI_BROKER_URL), and passed with --variable CI_BROKER_ID_TOKEN=... as GitLab passes it.
Each job gets its own token, as on GitLab: the broker refuses a token it has already seen.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from clientrun import busybox_bin
from endpoints import ScriptedBroker
from support import (
    AWS,
    COMPONENT,
    TEMPLATE,
    assert_no_secret,
    assert_refresh_refused,
    files_containing,
    git_repo,
    gitlab_ci_local_path,
)

from broker.sandbox.issuer import gitlab_claims

ROLE = "gitlab-deploy"

# The job's script: use the credentials with boto3 against the sandbox STS, hand the values to the
# test through a file outside the project, and never print them.
USE_CREDENTIALS = """
import json, os, pathlib, boto3
arn = boto3.client("sts").get_caller_identity()["Arn"]
print("caller:", arn)
names = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "CI_BROKER_CLOUD"]
pathlib.Path(os.environ["HANDOFF"]).write_text(json.dumps({n: os.environ.get(n) for n in names}))
"""


@dataclass
class PipelineRun:
    returncode: int
    output: str
    job_log: str
    project: Path
    seconds: float


def pipeline(include: list[dict[str, Any]], **jobs: Any) -> str:
    return yaml.safe_dump({"include": include, **jobs}, sort_keys=False)


def run_pipeline(
    tmp: Path, ci_yaml: str, token: str, job: str, variables: dict[str, str] | None = None, *more_jobs: str
) -> PipelineRun:
    """Lay out a project (the template and component under ci/) and run one job in it (or several:
    `job` and `more_jobs`, in one gitlab-ci-local run; `job`'s log is the one returned)."""
    project = tmp / "project"
    (project / "ci" / "templates").mkdir(parents=True)
    shutil.copy(TEMPLATE, project / "ci" / TEMPLATE.name)
    shutil.copy(COMPONENT, project / "ci" / "templates" / COMPONENT.name)
    (project / ".gitlab-ci.yml").write_text(ci_yaml)
    git_repo(project)
    home = tmp / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CI_", "GITLAB_", "AWS_"))}
    env.update(HOME=str(home), NO_COLOR="1", FORCE_COLOR="0")
    started = time.monotonic()
    pipeline_variables = {"CI_BROKER_ID_TOKEN": token, **(variables or {})}
    flags = [arg for name, value in pipeline_variables.items() for arg in ("--variable", f"{name}={value}")]
    proc = subprocess.run(
        [gitlab_ci_local_path(), *flags, job, *more_jobs],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        stdin=subprocess.DEVNULL,
    )
    log_file = project / ".gitlab-ci-local" / "output" / f"{job}.log"
    return PipelineRun(
        proc.returncode,
        proc.stdout + proc.stderr,
        log_file.read_text() if log_file.exists() else "",
        project,
        time.monotonic() - started,
    )


def gitlab_token(served_broker, **claims: Any) -> str:
    return served_broker.box.gitlab.mint(gitlab_claims(aud=served_broker.url, **claims))


def deploy_job(tmp: Path, served_broker, **extra: Any) -> dict[str, Any]:
    tmp.mkdir(parents=True, exist_ok=True)
    script = tmp / "use_credentials.py"
    script.write_text(USE_CREDENTIALS)
    job = {
        "extends": ".ci-broker",
        "variables": {
            "CI_BROKER_URL": served_broker.url,
            "CI_BROKER_ROLE": ROLE,
            "AWS_ENDPOINT_URL_STS": served_broker.box.sts.url,
            "AWS_DEFAULT_REGION": "us-east-1",
            "HANDOFF": str(tmp / "handoff.json"),
        },
        "script": [f"{sys.executable} {script}"],
    }
    job.update(extra)
    return job


TEMPLATE_INCLUDE = [{"local": f"ci/{TEMPLATE.name}"}]


def assert_clean(run: PipelineRun, secrets: list[str]) -> None:
    assert_no_secret(run.output, secrets, "gitlab-ci-local's output")
    assert_no_secret(run.job_log, secrets, "the job log")
    assert files_containing(run.project, secrets) == []


def handoff_secrets(tmp: Path) -> dict[str, str]:
    seen = json.loads((tmp / "handoff.json").read_text())
    assert seen["CI_BROKER_CLOUD"] == "aws"
    return seen


def test_extends_gives_the_job_working_aws_credentials(tmp_path, served_broker):
    token = gitlab_token(served_broker)
    run = run_pipeline(
        tmp_path, pipeline(TEMPLATE_INCLUDE, deploy=deploy_job(tmp_path, served_broker)), token, "deploy"
    )
    assert run.returncode == 0, run.output
    assert re.search(r"caller: arn:aws:sts::123456789012:assumed-role/gitlab-deploy/", run.job_log)
    seen = handoff_secrets(tmp_path)
    secrets = [seen["AWS_ACCESS_KEY_ID"], seen["AWS_SECRET_ACCESS_KEY"], seen["AWS_SESSION_TOKEN"]]
    assert all(secrets)
    assert f"credentials for role '{ROLE}' (aws) expire at" in run.job_log
    assert_clean(run, secrets)
    assert_no_secret(run.job_log, [token], "the job log")


def test_reference_in_the_jobs_own_before_script(tmp_path, served_broker):
    job = deploy_job(tmp_path, served_broker)
    job["before_script"] = ["echo job-setup-ran", "!reference [.ci-broker, before_script]"]
    # PyYAML cannot write a tagged sequence; put the tag in as GitLab users write it.
    text = pipeline(TEMPLATE_INCLUDE, deploy=job).replace(
        "'!reference [.ci-broker, before_script]'", "!reference [.ci-broker, before_script]"
    )
    run = run_pipeline(tmp_path, text, gitlab_token(served_broker), "deploy")
    assert run.returncode == 0, run.output
    assert run.job_log.index("job-setup-ran") < run.job_log.index("credentials for role")
    seen = handoff_secrets(tmp_path)
    assert_clean(run, [seen["AWS_SECRET_ACCESS_KEY"], seen["AWS_SESSION_TOKEN"]])


def test_component_with_inputs(tmp_path, served_broker):
    include = [
        {
            "local": f"ci/templates/{COMPONENT.name}",
            "inputs": {"url": served_broker.url, "role": ROLE, "job": ".deploy-creds"},
        }
    ]
    job = deploy_job(tmp_path, served_broker, extends=".deploy-creds")
    del job["variables"]["CI_BROKER_URL"], job["variables"]["CI_BROKER_ROLE"]
    job["script"].insert(0, 'echo "audience=$CI_BROKER_AUDIENCE"')
    run = run_pipeline(tmp_path, pipeline(include, deploy=job), gitlab_token(served_broker), "deploy")
    assert run.returncode == 0, run.output
    assert f"audience={served_broker.url}" in run.job_log
    seen = handoff_secrets(tmp_path)
    assert_clean(run, [seen["AWS_SECRET_ACCESS_KEY"], seen["AWS_SESSION_TOKEN"]])


def test_403_fails_the_job_with_the_brokers_answer(tmp_path, served_broker):
    token = gitlab_token(served_broker, project_id="99")  # no rule of the role names it
    run = run_pipeline(
        tmp_path, pipeline(TEMPLATE_INCLUDE, deploy=deploy_job(tmp_path, served_broker)), token, "deploy"
    )
    assert run.returncode != 0
    match = re.search(
        rf"the broker denied role '{ROLE}': HTTP 403 access_denied: .+ "
        r"\(request id ([0-9a-f]+)\)",
        run.job_log,
    )
    assert match, run.output
    assert match.group(1) in served_broker.log_text()
    assert f"ci-broker explain --config CONFIG --role {ROLE} --claims CLAIMS.json" in run.job_log
    assert "caller:" not in run.job_log, "the job's script must not run without credentials"
    assert_no_secret(run.job_log, [token], "the job log")


def test_a_replayed_token_is_refused_with_401(tmp_path, served_broker):
    token = gitlab_token(served_broker)
    first = run_pipeline(
        tmp_path / "first",
        pipeline(TEMPLATE_INCLUDE, deploy=deploy_job(tmp_path / "first", served_broker)),
        token,
        "deploy",
    )
    assert first.returncode == 0, first.output
    second = run_pipeline(
        tmp_path / "second",
        pipeline(TEMPLATE_INCLUDE, deploy=deploy_job(tmp_path / "second", served_broker)),
        token,
        "deploy",
    )
    assert second.returncode != 0
    assert re.search(
        r"the broker refused this job's token: HTTP 401 invalid_token: .+ \(request id", second.job_log
    ), second.output


def test_azure_role_exports_the_ids_and_token(tmp_path, served_broker):
    if "azure-deploy" not in served_broker.box.config_dict()["roles"]:
        pytest.skip("the sandbox has no azure-deploy role")
    from broker.sandbox import stack

    check = (
        'test "$ARM_TENANT_ID" = "$AZURE_TENANT_ID" && test "$ARM_CLIENT_ID" = "$AZURE_CLIENT_ID" '
        '&& test -n "$AZURE_ACCESS_TOKEN" && echo "azure ids: $AZURE_TENANT_ID $AZURE_CLIENT_ID '
        '$ARM_SUBSCRIPTION_ID" && printf %s "$AZURE_ACCESS_TOKEN" > "$HANDOFF"'
    )
    job = {
        "extends": ".ci-broker",
        "script": [check],
        "variables": {
            "CI_BROKER_URL": served_broker.url,
            "CI_BROKER_ROLE": "azure-deploy",
            "HANDOFF": str(tmp_path / "token"),
        },
    }
    run = run_pipeline(
        tmp_path, pipeline(TEMPLATE_INCLUDE, deploy=job), gitlab_token(served_broker), "deploy"
    )
    assert run.returncode == 0, run.output
    assert (
        f"azure ids: {stack.AZURE_TENANT_ID} {stack.AZURE_CLIENT_ID} {stack.AZURE_SUBSCRIPTION_ID}"
    ) in run.job_log
    assert_clean(run, [(tmp_path / "token").read_text()])


# A later command of a long job: boto3 through the template's credential_process profile, asking
# three times past the 15-minute refresh window. It hands the session's last refresh token to the
# test through a file outside the project (only so the test can try it after the job).
LONG_JOB = """
import json, os, pathlib, boto3
session = boto3.session.Session()
sts = session.client("sts")
keys = set()
for _ in range(3):
    print("caller:", sts.get_caller_identity()["Arn"])
    keys.add(session.get_credentials().get_frozen_credentials().access_key)
print("distinct keys:", len(keys))
print("no static keys:", not any(k in os.environ for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")))
session_dir = os.environ["CI_BROKER_SESSION_DIR"]
answer = json.loads(pathlib.Path(session_dir, "answer").read_text())
pathlib.Path(os.environ["HANDOFF"]).write_text(
    json.dumps({"dir": session_dir, "refresh_token": answer["session"]["refresh_token"]})
)
"""


def test_a_long_job_refreshes_in_its_script_and_the_session_ends_with_the_job(
    tmp_path, served_session_broker
):
    broker = served_session_broker
    script = tmp_path / "long_job.py"
    script.write_text(LONG_JOB)
    handoff = tmp_path / "handoff.json"
    job = {
        "extends": ".ci-broker",
        "variables": {
            "CI_BROKER_URL": broker.url,
            "CI_BROKER_ROLE": ROLE,
            "CI_BROKER_REFRESH": "true",
            "AWS_ENDPOINT_URL_STS": broker.box.sts.url,
            "AWS_DEFAULT_REGION": "us-east-1",
            "HANDOFF": str(handoff),
        },
        "script": [f"{sys.executable} {script}"],
    }
    token = gitlab_token(broker)
    run = run_pipeline(tmp_path, pipeline(TEMPLATE_INCLUDE, deploy=job), token, "deploy")
    assert run.returncode == 0, run.output
    assert "distinct keys: 3" in run.job_log and "no static keys: True" in run.job_log, run.job_log
    assert run.job_log.count(f"caller: arn:aws:sts::123456789012:assumed-role/{ROLE}/") == 3
    assert (
        "ci-broker: session revoked" in run.job_log and "ci-broker: removed the session files" in run.job_log
    )
    seen = json.loads(handoff.read_text())
    assert not Path(seen["dir"]).exists(), "after_script removed every file"
    assert_refresh_refused(broker.url, seen["refresh_token"])  # after the job
    assert_clean(run, [seen["refresh_token"], token])
    assert_no_secret(broker.log_text(), [seen["refresh_token"]], "the broker's log")


# -- several roles in one job; the before_script order; a redirected URL -------------------------------

# Both AWS roles of one job, each as its named profile, used with boto3 as `aws --profile` would.
TWO_PROFILES = """
import json, os, pathlib, boto3
seen = {}
for profile in ("deploy", "audit"):
    session = boto3.session.Session(profile_name=profile)
    print(profile, "caller:", session.client("sts").get_caller_identity()["Arn"])
    frozen = session.get_credentials().get_frozen_credentials()
    seen[profile] = [frozen.access_key, frozen.secret_key, frozen.token]
print("no AWS keys in the environment:", not any(k in os.environ for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")))
seen["files"] = [os.environ["AWS_CONFIG_FILE"], os.environ["AWS_SHARED_CREDENTIALS_FILE"]]
pathlib.Path(os.environ["HANDOFF"]).write_text(json.dumps(seen))
"""


def tagged(text: str) -> str:
    """PyYAML cannot write GitLab's !reference tag: put it in as users write it."""
    return re.sub(r"'(!reference \[[^]]+\])'", r"\1", text)


def test_several_roles_in_one_job_in_the_documented_order_and_a_redirected_url_gets_nothing(
    tmp_path, served_two_aws_roles
):
    """One gitlab-ci-local run of three jobs (each costs seconds):
    - `deploy`: two AWS roles from the component, each with its own ID token and AWS profile, in
      an image without an HTTP client until its before_script installs one: tools first, then
      each role's `!reference`d before_script. Both profiles work; no AWS_* keys are exported.
      A pipeline variable CI_BROKER_URL (set for the whole run) cannot redirect the component.
    - `wrong-order`: the client's before_script before the install fails, saying what to install.
    - `redirected`: the include template's job, whose CI_BROKER_URL the same pipeline variable
      points at another server: that server receives no request at all.
    """
    broker = served_two_aws_roles
    bare = busybox_bin(tmp_path, without=("wget",))  # the image: busybox, no wget, no curl
    installed = tmp_path / "installed-bin"  # what `apk add curl` would put on PATH
    installed.mkdir()
    (installed / "curl").symlink_to(shutil.which("curl"))
    script = tmp_path / "two_profiles.py"
    script.write_text(TWO_PROFILES)
    handoff = tmp_path / "handoff.json"

    def role(role_name: str, job: str, token: str, profile: str) -> dict[str, Any]:
        inputs = {"url": broker.url, "role": role_name, "job": job, "token": token, "aws_profile": profile}
        return {"local": f"ci/templates/{COMPONENT.name}", "inputs": inputs}

    include = [
        role(ROLE, ".aws-deploy", "DEPLOY_ID_TOKEN", "deploy"),
        role("gitlab-audit", ".aws-audit", "AUDIT_ID_TOKEN", "audit"),
        {"local": f"ci/{TEMPLATE.name}"},
    ]
    bare_image = f'export PATH="{bare}"'
    install_tools = f'export PATH="{installed}:$PATH"  # apt-get/apk add curl'
    jobs = {
        "deploy": {
            "extends": [".aws-deploy", ".aws-audit"],
            "variables": {
                "AWS_ENDPOINT_URL_STS": broker.box.sts.url,
                "AWS_DEFAULT_REGION": "us-east-1",
                "HANDOFF": str(handoff),
            },
            "before_script": [
                bare_image,
                install_tools,
                "!reference [.aws-deploy, before_script]",
                "!reference [.aws-audit, before_script]",
            ],
            "script": [f"{sys.executable} {script}"],
            "after_script": ["!reference [.aws-deploy, after_script]"],
        },
        "wrong-order": {
            "extends": ".ci-broker",
            "variables": {"CI_BROKER_ROLE": ROLE},
            "before_script": [bare_image, "!reference [.ci-broker, before_script]", install_tools],
            "script": ["echo should-not-run"],
            "allow_failure": True,
        },
        "redirected": {
            "extends": ".ci-broker",
            "variables": {"CI_BROKER_URL": broker.url, "CI_BROKER_ROLE": ROLE},
            "script": ["echo should-not-run"],
            "allow_failure": True,
        },
    }
    tokens = {
        "DEPLOY_ID_TOKEN": gitlab_token(broker),
        "AUDIT_ID_TOKEN": gitlab_token(broker),
        "CI_BROKER_ID_TOKEN": gitlab_token(broker),  # the redirected job's, for the real broker
    }
    with ScriptedBroker(ScriptedBroker.granted("aws", AWS)) as attacker:
        run = run_pipeline(
            tmp_path,
            tagged(pipeline(include, **jobs)),
            tokens["CI_BROKER_ID_TOKEN"],
            "deploy",
            {**tokens, "CI_BROKER_URL": attacker.url},
            "wrong-order",
            "redirected",
        )
    assert run.returncode == 0, run.output
    log = run.job_log
    assert log.index("credentials for role 'gitlab-deploy'") < log.index(
        "credentials for role 'gitlab-audit'"
    )
    assert f"deploy caller: arn:aws:sts::123456789012:assumed-role/{ROLE}/" in log
    assert "audit caller: arn:aws:sts::123456789012:assumed-role/gitlab-audit/" in log
    assert "no AWS keys in the environment: True" in log
    seen = json.loads(handoff.read_text())
    assert seen["deploy"] != seen["audit"]
    assert not any(Path(f).exists() for f in seen["files"]), "after_script removed the profiles"
    secrets = [*seen["deploy"], *seen["audit"], *tokens.values()]
    assert_clean(run, secrets)

    outputs = run.project / ".gitlab-ci-local" / "output"
    wrong = (outputs / "wrong-order.log").read_text()
    assert "no HTTP client in this job's image: it needs curl, wget or python3." in wrong
    assert "should-not-run" not in wrong.replace("echo should-not-run", "")

    redirected = (outputs / "redirected.log").read_text()
    assert attacker.requests == 0
    assert (
        f"this job's token is for '{broker.url}', not for {attacker.url}: refusing to send it there."
        in redirected
    )
    assert_no_secret(redirected, secrets, "the redirected job's log")


def test_the_component_refuses_a_job_name_without_a_dot_and_a_plain_http_url(tmp_path, served_broker):
    """spec:inputs:regex, as GitLab applies it when the pipeline is created (no job runs)."""
    for name, inputs, message in [
        ("job", {"url": "https://broker.example.com", "role": ROLE, "job": "ci-broker"}, "`job` input"),
        ("url", {"url": "http://broker.example.com", "role": ROLE}, "`url` input"),
        (
            "duration",
            {"url": "https://broker.example.com", "role": ROLE, "duration": "1h"},
            "`duration` input",
        ),
    ]:
        include = [{"local": f"ci/templates/{COMPONENT.name}", "inputs": inputs}]
        job = {"extends": inputs.get("job", ".ci-broker"), "script": ["echo never"]}
        run = run_pipeline(tmp_path / name, pipeline(include, deploy=job), "x.y.z", "deploy")
        assert run.returncode != 0
        assert message in run.output and "does not match required regex" in run.output, run.output
        assert "never" not in run.job_log
