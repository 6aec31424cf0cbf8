"""docs/policies.md's policy-as-code section says what the commands do: its test file passes
against the cookbook's first recipe and catches the widening, its diff output is the real one,
its workflow uses the Action's real inputs, its GitLab job the template's real job and variables,
and its two new mistakes get the findings the text names."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from policy_helpers import write

from broker.lint import lint
from broker.policyload import load_policy
from tests.helpers import ci_broker

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "policies.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC, flags=re.S)


def recipe_config() -> dict[str, Any]:
    """The cookbook's first recipe (deploy-prod from main through production) as a whole config."""
    roles = yaml.safe_load(blocks("yaml")[0])["roles"]
    return {
        "server": {"issuer": "https://broker.example.com", "signing_keys": ["signing.pem"]},
        "providers": {"github": {"issuer": "https://token.actions.githubusercontent.com", "type": "github"}},
        "roles": roles,
    }


def widened() -> dict[str, Any]:
    config = recipe_config()
    config["roles"]["deploy-prod"]["allow"][0]["claims"]["ref"] = {"glob": "refs/heads/*"}
    return config


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tests_file,) = [b for b in blocks("yml") if b.startswith("# tests/policy.yaml")]
    (tmp_path / "policy.yaml").write_text(tests_file)
    write(recipe_config(), tmp_path / "old.yaml")
    write(widened(), tmp_path / "new.yaml")
    return tmp_path


def test_the_documented_tests_pass_on_the_recipe_and_catch_the_widening(files):
    passed = ci_broker("test", "--config", "old.yaml", "policy.yaml", cwd=files)
    assert passed.returncode == 0, passed.stdout + passed.stderr
    failed = ci_broker("test", "--config", "new.yaml", "policy.yaml", cwd=files)
    assert failed.returncode == 1
    assert "a feature branch does not, even through the production environment" in failed.stdout


def test_the_documented_diff_output_is_what_diff_prints(files):
    result = ci_broker("diff", "old.yaml", "new.yaml", cwd=files)
    assert result.returncode == 0, result.stderr
    (shown,) = [b for b in blocks("text") if b.startswith("$ ci-broker diff")]
    assert shown.split("\n", 1)[1] == result.stdout


def test_the_documented_workflow_uses_the_actions_inputs():
    (workflow,) = [yaml.safe_load(b) for b in blocks("yml") if b.startswith("# .github/")]
    (step,) = [s for s in workflow["jobs"]["policy"]["steps"] if "policy-check" in s.get("uses", "")]
    action = yaml.safe_load((ROOT / "actions" / "policy-check" / "action.yml").read_text())
    assert set(step["with"]) <= set(action["inputs"])
    checkout = workflow["jobs"]["policy"]["steps"][0]
    assert checkout["uses"].startswith("actions/checkout@") and checkout["with"]["fetch-depth"] == 0


def test_the_documented_gitlab_job_extends_the_templates_job():
    (pipeline,) = [yaml.safe_load(b) for b in blocks("yml") if b.startswith("# .gitlab-ci.yml")]
    (include,) = pipeline["include"]
    template = yaml.safe_load((ROOT / include["file"]).read_text())
    job = pipeline["ci-broker-policy-check"]
    assert "ci-broker-policy-check" in template
    assert set(job["variables"]) <= set(template[".ci-broker-policy-check"]["variables"])


@pytest.mark.parametrize(
    ("heading", "finding"),
    [
        ("# mistake: sub matched in its old form only", "repo:OWNER@OWNER_ID/REPO@REPO_ID"),
        ("# mistake: two conditions that contradict each other", "the rule can never hold"),
    ],
)
def test_the_new_mistakes_get_the_findings_the_text_names(tmp_path, heading, finding):
    (block,) = [yaml.safe_load(b) for b in blocks("yaml") if b.startswith(heading)]
    config = {**recipe_config(), "roles": block["roles"]}
    findings = lint(load_policy(write(config, tmp_path / "broker.yaml")))
    assert any(finding in f.message for f in findings), [f.message for f in findings]
