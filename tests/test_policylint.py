"""`ci-broker check`'s automata findings: non-regular regexes and rules that can never hold are
errors (exit 2), `sub` matched only in GitHub's old form is a warning."""

from __future__ import annotations

from typing import Any

import pytest
from policy_helpers import build, policy, rule, write

from broker.lint import lint
from tests.helpers import ci_broker

SAFE = {"repository_id": "1", "event_name": "push"}


def findings(
    key_file, claims: dict[str, Any], provider: str = "github", **extra: Any
) -> list[tuple[str, str, str]]:
    config = build(policy({"r": [rule(provider, **claims)]}, **extra), key_file)
    return [(f.level, f.path, f.message) for f in lint(config)]


def errors(key_file, claims: dict[str, Any], provider: str = "github") -> list[str]:
    return [
        f"{path}: {message}"
        for level, path, message in findings(key_file, claims, provider)
        if level == "error"
    ]


@pytest.mark.parametrize(
    "pattern,what",
    [
        (r"refs/heads/(main)\1", "backreference"),
        (r"refs/heads/(?!main).*", "lookahead"),
        (r"(?<=refs/)heads/main", "lookahead or lookbehind"),
        (r"(refs/)?(?(1)heads|tags)", "conditional"),
        (r"refs/heads/\bmain", "anchor or word boundary"),
        (r"refs/heads/(?>main)", "atomic group"),
        (r"refs/heads/ma*+in", "possessive repeat"),
    ],
)
def test_a_regex_the_automata_cannot_represent_is_refused(key_file, pattern, what):
    found = errors(key_file, {**SAFE, "ref": {"regex": pattern}})
    assert len(found) == 1
    assert found[0].startswith("roles.r.allow[0].claims.ref: regex") and what in found[0]


def test_anchors_at_the_ends_are_fine(key_file):
    assert errors(key_file, {**SAFE, "ref": {"regex": r"^refs/heads/main$"}}) == []
    assert errors(key_file, {**SAFE, "ref": {"regex": r"\Arefs/heads/(main|dev)\Z"}}) == []


def test_a_condition_no_token_value_can_match_is_an_error(key_file):
    # `repository` is compared lowercased; a case-sensitive uppercase pattern can never match.
    found = errors(key_file, {**SAFE, "repository": {"regex": "(?-i:Octo)/app"}})
    assert found == [
        "roles.r.allow[0].claims.repository: no value a github token can carry matches regex "
        "'(?-i:Octo)/app' (after normalising to lowercase): the rule can never hold"
    ]
    assert errors(key_file, {**SAFE, "ref": {"regex": "[^\\s\\S]"}})  # empty class


def test_repository_and_a_different_owner_contradict(key_file):
    found = errors(key_file, {**SAFE, "repository_owner": "octo", "repository": "other/app"})
    assert found and "repository is always repository_owner/NAME" in found[0]
    assert errors(key_file, {**SAFE, "repository_owner": "Octo", "repository": "octo/app"}) == []
    assert errors(key_file, {**SAFE, "repository_owner": "octo", "repository": {"glob": "*/app"}}) == []


def test_gitlab_namespace_and_project_path_contradict(key_file):
    claims = {
        "project_id": "1",
        "pipeline_source": "push",
        "namespace_path": "group",
        "project_path": "other/p",
    }
    assert errors(key_file, claims, "gitlab")
    assert errors(key_file, {**claims, "project_path": "group/p"}, "gitlab") == []


def test_a_tag_ref_type_with_a_branch_ref_is_an_error(key_file):
    assert errors(key_file, {**SAFE, "ref_type": "tag", "ref": "refs/heads/main"})
    assert errors(key_file, {**SAFE, "ref_type": "tag", "ref": {"glob": "refs/tags/v*"}}) == []
    assert errors(key_file, {**SAFE, "ref_type": ["tag", "branch"], "ref": "refs/heads/main"}) == []


def test_a_deny_rule_that_can_never_hold_is_an_error_too(key_file):
    deny = [{"provider": "github", "claims": {"repository": {"regex": "(?-i:A)"}}, "reason": "x"}]
    found = [(level, path) for level, path, _ in findings(key_file, SAFE, deny=deny) if level == "error"]
    assert found == [("error", "deny[0].claims.repository")]


def test_sub_in_the_old_form_only_warns_with_the_immutable_form(key_file):
    old_form = {**SAFE, "sub": "repo:octo-org/app:ref:refs/heads/main"}
    warned = [m for level, path, m in findings(key_file, old_form) if path.endswith(".sub")]
    assert warned and "repo:OWNER@OWNER_ID/REPO@REPO_ID:" in warned[0]
    both_forms = {
        **SAFE,
        "sub": [
            "repo:octo-org/app:ref:refs/heads/main",
            "repo:octo-org@65/app@892734123:ref:refs/heads/main",
        ],
    }
    assert not [m for level, path, m in findings(key_file, both_forms) if path.endswith(".sub")]


def test_check_exits_2_on_an_error_and_prints_it(tmp_path):
    path = write(policy({"r": [rule(**{**SAFE, "ref": {"regex": "(a)\\1"}})]}), tmp_path / "broker.yaml")
    result = ci_broker("check", "--config", str(path), "--policy-only")
    assert result.returncode == 2
    assert "error: " in result.stdout and "backreference" in result.stdout
    assert "failed:" in result.stdout and "1 error(s)" in result.stdout


def test_check_without_policy_only_still_needs_the_signing_keys(tmp_path):
    path = write(policy({"r": [rule(**SAFE)]}), tmp_path / "broker.yaml")
    result = ci_broker("check", "--config", str(path))
    assert result.returncode == 2 and "server.signing_keys[0]" in result.stderr
    assert ci_broker("check", "--config", str(path), "--policy-only").returncode == 0
