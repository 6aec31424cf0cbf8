"""Attacks from CI OIDC misconfiguration research, against a policy written the recommended way
(immutable ids, pinned events and refs): each is a 403 `access_denied` with no cloud call. Where the
attack works only because of a risky rule, `ci-broker check` (broker.lint) is shown to warn about
that rule, so an operator hears about it before an attacker does.

GitLab fork merge requests: since GitLab's "job project" claims (gitlab-org/gitlab MR 202241,
issue 563038), a merge-request pipeline from a fork that runs in the parent project carries the
fork's `project_id`/`project_path` and the parent's `job_project_id`/`job_project_path`. A rule
pinned on `project_id` refuses it; a rule pinned only on `job_project_id` would grant it.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from broker.config import ConfigError, build_config
from broker.lint import rule_warnings
from broker.policy import evaluate
from tests.adversarial.forge import gh_claims, gl_claims

FOREIGN = dict(
    repository="evil-org/octo-repo",
    repository_id="666",
    repository_owner="evil-org",
    repository_owner_id="667",
)


def warnings_for(sandbox: Any, provider: str, claims: dict[str, Any]) -> str:
    config = sandbox.config_dict()
    config["roles"]["deploy-prod"]["allow"] = [{"provider": provider, "claims": claims}]
    loaded = build_config(copy.deepcopy(config), base_dir=sandbox.workdir)
    return " | ".join(rule_warnings(loaded, loaded.roles["deploy-prod"].rules[0]))


def grants(sandbox: Any, provider: str, rule_claims: dict[str, Any], token_claims: dict[str, Any]) -> bool:
    """Would a role with just this rule grant these claims (evaluated offline, as `explain` does)?"""
    config = sandbox.config_dict()
    config["roles"]["deploy-prod"]["allow"] = [{"provider": provider, "claims": rule_claims}]
    loaded = build_config(copy.deepcopy(config), base_dir=sandbox.workdir)
    p = loaded.providers[provider]
    return evaluate(
        "deploy-prod", loaded.roles["deploy-prod"].rules, provider, p.schema, token_claims
    ).allowed


# -- audience-only trust ---------------------------------------------------------------------------


def test_any_repository_can_mint_a_token_with_our_audience(sandbox, broker, attack):
    """The audience is chosen by the job; it proves nothing about who the job is."""
    attack(sandbox.github.mint(gh_claims(sandbox, **FOREIGN)), 403, "access_denied")


def test_an_audience_only_rule_is_warned_about(sandbox):
    rule = {"aud": sandbox.broker_url}
    assert grants(sandbox, "github", rule, gh_claims(sandbox, **FOREIGN))
    assert "binds no immutable id" in warnings_for(sandbox, "github", rule)


# -- wildcard subjects -----------------------------------------------------------------------------


def test_a_pull_request_token_does_not_pass_for_the_repository(sandbox, broker, attack):
    token = sandbox.github.mint(
        gh_claims(
            sandbox,
            sub="repo:octo-org/octo-repo:pull_request",
            event_name="pull_request",
            ref="refs/pull/1/merge",
        )
    )
    attack(token, 403, "access_denied")


def test_a_wildcard_subject_rule_admits_pull_requests_and_is_warned_about(sandbox):
    rule = {"sub": {"glob": "repo:octo-org/octo-repo:*"}}
    pr = gh_claims(sandbox, sub="repo:octo-org/octo-repo:pull_request", event_name="pull_request")
    assert grants(sandbox, "github", rule, pr)  # `*` stops at ':', and "pull_request" has none
    text = warnings_for(sandbox, "github", rule)
    assert "a pattern on sub" in text and "no condition on event_name" in text


# -- renamed or recycled repositories --------------------------------------------------------------


def test_a_recreated_repository_with_the_same_name_is_denied(sandbox, broker, attack):
    token = sandbox.github.mint(gh_claims(sandbox, repository_id="987654321", repository_owner_id="99"))
    attack(token, 403, "access_denied", reason="repository_id: '987654321' does not match")


def test_a_name_only_rule_is_warned_about(sandbox):
    rule = {"repository": "octo-org/octo-repo", "ref": "refs/heads/main", "event_name": "push"}
    assert grants(sandbox, "github", rule, gh_claims(sandbox, repository_id="987654321"))
    assert "binds no immutable id" in warnings_for(sandbox, "github", rule)


# -- pull_request_target ---------------------------------------------------------------------------


def test_pull_request_target_runs_on_the_default_branch_and_is_still_denied(sandbox, broker, attack):
    """pull_request_target jobs carry the base branch's ref (refs/heads/main) and may name an
    environment: only the event tells them apart from a push."""
    token = sandbox.github.mint(
        gh_claims(sandbox, event_name="pull_request_target", head_ref="feature", base_ref="main")
    )
    attack(token, 403, "access_denied", reason="event_name: 'pull_request_target' does not match")


def test_a_rule_admitting_pull_request_target_is_warned_about(sandbox):
    rule = {"repository_id": "892734123", "event_name": ["push", "pull_request_target"]}
    assert "admits pull_request_target" in warnings_for(sandbox, "github", rule)


# -- GitLab fork merge requests --------------------------------------------------------------------

FORK_MR = dict(
    project_id="99",
    project_path="attacker/my-project",
    namespace_id="98",
    namespace_path="attacker",
    job_project_id="20",
    job_project_path="my-group/my-project",
    job_namespace_id="72",
    job_namespace_path="my-group",
    pipeline_source="merge_request_event",
    ref="feature",
    ref_path="refs/heads/feature",
    ref_protected="false",
)


def test_a_fork_merge_request_token_is_denied(sandbox, broker, attack):
    attack(
        sandbox.gitlab.mint(gl_claims(sandbox, **FORK_MR)),
        403,
        "access_denied",
        role="gitlab-deploy",
        reason="project_id: '99' does not match",
    )


def test_a_fork_merge_request_with_a_protected_looking_ref_is_still_denied(sandbox, broker, attack):
    claims = {**FORK_MR, "ref": "main", "ref_path": "refs/heads/main", "ref_protected": "true"}
    attack(sandbox.gitlab.mint(gl_claims(sandbox, **claims)), 403, "access_denied", role="gitlab-deploy")


def test_a_rule_on_job_project_id_alone_admits_forks_and_is_warned_about(sandbox):
    rule = {"job_project_id": "20"}
    assert grants(sandbox, "gitlab", rule, gl_claims(sandbox, **FORK_MR))
    text = warnings_for(sandbox, "gitlab", rule)
    assert "binds no immutable id" in text and "pipeline_source" in text


# -- reusable workflows from a foreign owner -------------------------------------------------------

REUSABLE = {
    "repository_owner_id": "65",
    "job_workflow_ref": {"glob": "octo-org/deploy/.github/workflows/*.yml@refs/heads/main"},
    "event_name": "push",
}


@pytest.fixture
def reusable_policy(sandbox: Any, serve_config: Any) -> None:
    config = sandbox.config_dict()
    config["roles"]["deploy-prod"]["allow"] = [{"provider": "github", "claims": REUSABLE}]
    serve_config(config)


def test_the_trusted_reusable_workflow_is_granted(sandbox, reusable_policy):
    token = sandbox.github_token(
        job_workflow_ref="octo-org/deploy/.github/workflows/release.yml@refs/heads/main"
    )
    assert sandbox.exchange(token).status_code == 200


@pytest.mark.parametrize(
    "ref",
    [
        "evil-org/deploy/.github/workflows/release.yml@refs/heads/main",
        "octo-org/deploy-fork/.github/workflows/release.yml@refs/heads/main",
        "octo-org/deploy/.github/workflows/sub/release.yml@refs/heads/main",
        "octo-org/deploy/.github/workflows/release.yml@refs/heads/main-evil",
        "octo-org/deploy/.github/workflows/release.yml@refs/heads/feature",
        "octo-org/deploy/.github/workflows/release.yml@refs/heads/main@refs/heads/evil",
        "evil-org/x/.github/workflows/a.yml@refs/heads/main#octo-org/deploy/.github/workflows/release.yml@refs/heads/main",
        "\u043ecto-org/deploy/.github/workflows/release.yml@refs/heads/main",  # Cyrillic о
    ],
)
def test_a_reusable_workflow_from_elsewhere_is_denied(sandbox, reusable_policy, attack, ref):
    attack(sandbox.github_token(job_workflow_ref=ref), 403, "access_denied", reason="job_workflow_ref")


def test_a_foreign_owners_copy_of_the_workflow_is_denied_by_the_owner_id(sandbox, reusable_policy, attack):
    token = sandbox.github_token(
        repository_owner_id="667",
        job_workflow_ref="octo-org/deploy/.github/workflows/release.yml@refs/heads/main",
    )
    attack(token, 403, "access_denied", reason="repository_owner_id")


# -- self-hosted runners ---------------------------------------------------------------------------


def test_a_self_hosted_runner_is_denied_a_hosted_only_rule(sandbox, serve_config, attack):
    config = sandbox.config_dict()
    config["roles"]["deploy-prod"]["allow"][0]["claims"]["runner_environment"] = "github-hosted"
    serve_config(config)
    assert sandbox.exchange(sandbox.github_token()).status_code == 200
    attack(
        sandbox.github_token(runner_environment="self-hosted"),
        403,
        "access_denied",
        reason="runner_environment: 'self-hosted' does not match",
    )


# -- environments from unprotected refs ------------------------------------------------------------


def test_a_production_environment_from_a_feature_branch_is_denied(sandbox, broker, attack):
    """Environment names are chosen in the workflow file; without protection rules any branch may
    name `production`. The ref (or GitLab's ref_protected) is what binds it."""
    token = sandbox.github_token(environment="production", ref="refs/heads/feature/x", ref_protected="false")
    attack(token, 403, "access_denied", reason="ref: 'refs/heads/feature/x' does not match")


def test_a_gitlab_environment_on_an_unprotected_ref_is_denied(sandbox, broker, attack):
    token = sandbox.gitlab_token(
        environment="production", environment_protected="false", ref="feature", ref_protected="false"
    )
    attack(token, 403, "access_denied", role="gitlab-deploy", reason="ref_protected: 'false' does not match")


def test_an_environment_only_rule_is_refused_by_the_loader(sandbox):
    config = sandbox.config_dict()
    config["roles"]["deploy-prod"]["allow"] = [
        {"provider": "github", "claims": {"environment": "production"}}
    ]
    with pytest.raises(ConfigError) as caught:
        build_config(config, base_dir=sandbox.workdir)
    assert "every condition is on a claim the job's author controls" in str(caught.value)


# -- claim-name and value confusion ----------------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        {"Repository_Id": "892734123"},
        {"REPOSITORY_ID": "892734123"},
        {"repository_id ": "892734123"},
        {"repositоry_id": "892734123"},  # Cyrillic о
        {"ｒｅｐｏｓｉｔｏｒｙ_ｉｄ": "892734123"},  # fullwidth
        {"SUB": "repo:octo-org/octo-repo:environment:production"},
    ],
)
def test_a_look_alike_claim_name_does_not_stand_in_for_the_real_one(sandbox, broker, attack, extra):
    token = sandbox.github.mint(gh_claims(sandbox, repository_id="111", **extra))
    attack(token, 403, "access_denied", reason="repository_id: '111' does not match")


@pytest.mark.parametrize(
    "claim,value",
    [
        ("repository_id", "８９２７３４１２３"),  # fullwidth digits
        ("repository_id", "892734123\u200b"),  # zero-width space
        ("repository_id", "892734123\n"),
        ("ref", "refs/heads/main\x00"),
        ("ref", "refs/heads/Main"),
        ("ref", "refs/heads/mаin"),  # Cyrillic а
        ("event_name", "PUSH"),
        ("environment", "production "),
        ("environment", "Production"),
        ("repository_id", ["892734123"]),
        ("repository_id", {"id": "892734123"}),
    ],
)
def test_a_look_alike_value_does_not_match(sandbox, broker, attack, claim, value):
    attack(sandbox.github.mint(gh_claims(sandbox, **{claim: value})), 403, "access_denied", reason=claim)
