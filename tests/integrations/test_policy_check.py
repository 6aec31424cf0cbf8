"""The policy check for pull and merge requests, run for real: the GitHub Action
(actions/policy-check) under nektos act and the GitLab job (gitlab-templates/policy-check.gitlab-ci.yml)
under gitlab-ci-local, each in a throwaway git repository whose base commit holds the old policy.

The change under review widens `deploy` from `refs/heads/main` to `refs/heads/*`: the check must
show that gain (job summary, merge request artifact), run the policy tests, and fail the job when a
test fails or, when asked, when access is gained.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import ROOT, act_path, gitlab_ci_local_path

ACTION_DIR = ROOT / "actions" / "policy-check"
TEMPLATE = ROOT / "gitlab-templates" / "policy-check.gitlab-ci.yml"
CI_BROKER = str(Path(sys.executable).parent / "ci-broker")
GITHUB = "https://token.actions.githubusercontent.com"
MAIN = {"repository_id": "1", "ref": "refs/heads/main"}


def config(ref: Any) -> str:
    data = {
        # No key file in the repository: the check loads the policy with throwaway keys.
        "server": {"issuer": "https://broker.example.com", "signing_keys": ["keys/signing.pem"]},
        "providers": {"github": {"issuer": GITHUB, "type": "github"}},
        "roles": {
            "deploy": {
                "cloud": "aws",
                "aws": {"role_arn": "arn:aws:iam::123456789012:role/deploy"},
                "allow": [{"provider": "github", "claims": {**MAIN, "ref": ref}}],
            }
        },
    }
    return yaml.safe_dump(data, sort_keys=False)


def policy_tests(dev_allowed: bool) -> str:
    cases = [
        {"name": "main deploys", "provider": "github", "claims": MAIN, "allow": ["deploy"]},
        {
            "name": "a feature branch does not deploy",
            "provider": "github",
            "claims": {**MAIN, "ref": "refs/heads/dev"},
            ("allow" if dev_allowed else "deny"): ["deploy"],
        },
    ]
    return yaml.safe_dump({"cases": cases}, sort_keys=False)


def git(repo: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "ci",
        "GIT_AUTHOR_EMAIL": "ci@example.com",
        "GIT_COMMITTER_NAME": "ci",
        "GIT_COMMITTER_EMAIL": "ci@example.com",
    }
    done = subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True, text=True)
    return done.stdout.strip()


def change(repo: Path, ci_files: dict[str, str], *, tests_expect_dev: bool = False) -> str:
    """A repository whose base commit allows main only and whose head widens it to every
    branch; returns the base commit."""
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    (repo / "broker.yaml").write_text(config("refs/heads/main"))
    (repo / "policy-tests.yaml").write_text(policy_tests(dev_allowed=False))
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "base")
    base = git(repo, "rev-parse", "HEAD")
    (repo / "broker.yaml").write_text(config({"glob": "refs/heads/*"}))
    (repo / "policy-tests.yaml").write_text(policy_tests(dev_allowed=tests_expect_dev))
    for name, text in ci_files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "widen deploy to every branch")
    return base


def clean_env(home: Path, *prefixes: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CI_", "GITHUB_", "GITLAB_", *prefixes))}
    env.update(HOME=str(home), NO_COLOR="1", FORCE_COLOR="0", ACT_DISABLE_VERSION_CHECK="1")
    return env


# -- GitHub: the Action under act -----------------------------------------------------------------


@dataclass
class ActRun:
    returncode: int
    output: str
    handoff: dict[str, Any]

    @property
    def summary(self) -> str:
        """The job summary: act prints what a step appended to GITHUB_STEP_SUMMARY."""
        marker = "⚙  Summary - "
        lines: list[str] = []
        inside = False
        for line in self.output.splitlines():
            if marker in line:
                inside = True
                line = line.split(marker, 1)[1]
            elif line.startswith("["):  # act's next line of its own
                inside = False
            if inside:
                lines.append(line)
        return "\n".join(lines)


def run_action(tmp: Path, inputs: dict[str, str], *, tests_expect_dev: bool = True) -> ActRun:
    handoff = tmp / "handoff.json"
    # After the check (even when it failed): its outputs, as a later step sees them (act removes
    # RUNNER_TEMP when the job ends, so the files are read here).
    collect = (
        f"{sys.executable} -c 'import json, os, pathlib; "
        'report = pathlib.Path(os.environ["REPORT"]) if os.environ["REPORT"] else None; '
        f'pathlib.Path("{handoff}").write_text(json.dumps({{'
        '"gained": os.environ["GAINED"], "junit": pathlib.Path(os.environ["JUNIT"]).read_text(), '
        '"report": report.read_text() if report else ""}))\''
    )
    workflow = {
        "name": "policy",
        "on": "pull_request",
        "permissions": {"contents": "read"},
        "jobs": {
            "policy": {
                "runs-on": "ubuntu-latest",
                "steps": [
                    # act copies the local repository, .git included, as actions/checkout would.
                    {"uses": "actions/checkout@v6", "with": {"fetch-depth": 0}},
                    {
                        "id": "policy",
                        "uses": "example/ci-broker/actions/policy-check@v1",
                        "with": {"ci-broker": CI_BROKER, "tests": "policy-tests.yaml", **inputs},
                    },
                    {
                        "if": "always()",
                        "run": collect,
                        "env": {
                            "GAINED": "${{ steps.policy.outputs.gained }}",
                            "REPORT": "${{ steps.policy.outputs.report }}",
                            "JUNIT": "${{ steps.policy.outputs.junit }}",
                        },
                    },
                ],
            }
        },
    }
    repo = tmp / "repo"
    base = change(
        repo, {".github/workflows/policy.yml": json.dumps(workflow)}, tests_expect_dev=tests_expect_dev
    )
    event = tmp / "event.json"
    event.write_text(json.dumps({"pull_request": {"number": 7, "base": {"sha": base, "ref": "main"}}}))
    action_repo = tmp / "action-repo"
    shutil.copytree(ACTION_DIR, action_repo / "actions" / "policy-check")
    (tmp / "home").mkdir()
    argv = [
        act_path(),
        "pull_request",
        "-e",
        str(event),
        "-W",
        ".github/workflows/policy.yml",
        "-P",
        "ubuntu-latest=-self-hosted",
        "--no-cache-server",
        "--local-repository",
        f"example/ci-broker@v1={action_repo}",
    ]
    proc = subprocess.run(
        argv,
        cwd=repo,
        env=clean_env(tmp / "home", "ACTIONS_"),
        capture_output=True,
        text=True,
        timeout=180,
        stdin=subprocess.DEVNULL,
    )
    data = json.loads(handoff.read_text()) if handoff.exists() else {}
    return ActRun(proc.returncode, proc.stdout + proc.stderr, data)


@pytest.mark.act
def test_action_writes_the_gain_to_the_job_summary_and_passes(tmp_path):
    run = run_action(tmp_path, {})
    assert run.returncode == 0, run.output
    assert run.handoff["gained"] == "true"
    report = run.handoff["report"]
    assert "## ci-broker policy diff" in report
    assert "**gained**" in report and "refs/heads/\\*" in report and 'not "refs/heads/main"' in report
    assert "**gained**" in run.summary and "refs/heads/\\*" in run.summary
    # The policy tests ran and left their JUnit report.
    assert 'tests="2"' in run.handoff["junit"]
    assert "ci-broker check" in run.output and "ok: 1 role(s)" in run.output


@pytest.mark.act
def test_action_fails_on_a_failing_policy_test_and_on_gained_access_when_asked(tmp_path):
    run = run_action(tmp_path, {"fail-on-gained": "true"}, tests_expect_dev=False)
    assert run.returncode != 0
    # The failing case with its explain trace, then both reasons to fail.
    assert "a feature branch does not deploy" in run.output
    assert "refs/heads/dev" in run.output
    assert "policy tests failed" in run.output
    assert "access was gained and fail-on-gained is set" in run.output
    # The summary is written all the same: the reviewer sees what was gained.
    assert "**gained**" in run.summary
    junit = run.handoff["junit"]
    assert 'failures="1"' in junit


# -- GitLab: the template job under gitlab-ci-local -----------------------------------------------


@dataclass
class PipelineRun:
    returncode: int
    output: str
    project: Path


def run_merge_request_pipeline(tmp: Path, variables: dict[str, str]) -> PipelineRun:
    ci = {
        "include": [{"local": "ci/policy-check.gitlab-ci.yml"}],
        "ci-broker-policy-check": {
            "variables": {
                "CI_BROKER_POLICY_COMMAND": CI_BROKER,
                "CI_BROKER_POLICY_TESTS": "policy-tests.yaml",
                **variables,
            }
        },
    }
    project = tmp / "project"
    base = change(
        project,
        {
            ".gitlab-ci.yml": yaml.safe_dump(ci, sort_keys=False),
            "ci/policy-check.gitlab-ci.yml": TEMPLATE.read_text(),
        },
        tests_expect_dev=True,
    )
    (tmp / "home").mkdir()
    argv = [
        gitlab_ci_local_path(),
        # What GitLab sets in a merge request pipeline.
        "--variable",
        "CI_PIPELINE_SOURCE=merge_request_event",
        "--variable",
        f"CI_MERGE_REQUEST_DIFF_BASE_SHA={base}",
        "ci-broker-policy-check",
    ]
    proc = subprocess.run(
        argv,
        cwd=project,
        env=clean_env(tmp / "home", "AWS_"),
        capture_output=True,
        text=True,
        timeout=180,
        stdin=subprocess.DEVNULL,
    )
    return PipelineRun(proc.returncode, proc.stdout + proc.stderr, project)


@pytest.mark.gitlab_ci_local
def test_gitlab_job_leaves_the_diff_and_the_junit_report_as_artifacts(tmp_path):
    run = run_merge_request_pipeline(tmp_path, {})
    assert run.returncode == 0, run.output
    out = run.project / ".ci-broker-policy-check"
    report = (out / "policy-diff.md").read_text()
    assert "**gained**" in report and "refs/heads/\\*" in report
    assert 'failures="0"' in (out / "policy-tests.xml").read_text()
    assert "this change grants some identities roles they did not have" in run.output


@pytest.mark.gitlab_ci_local
def test_gitlab_job_fails_on_gained_access_when_asked(tmp_path):
    run = run_merge_request_pipeline(tmp_path, {"CI_BROKER_POLICY_FAIL_ON_GAINED": "true"})
    assert run.returncode != 0
    assert "access was gained and fail-on-gained is set" in run.output
