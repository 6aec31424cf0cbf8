"""GitHub Actions (and GitHub Enterprise Server, whose issuer is `https://HOST/_services/token`)."""

from __future__ import annotations

from broker.claims.schema import REGISTERED, ClaimSchema, Untrusted

GITHUB = ClaimSchema(
    type="github",
    source="https://docs.github.com/en/actions/reference/security/oidc (OIDC token claims)",
    required=frozenset(
        {
            "sub",
            "jti",
            "repository",
            "repository_id",
            "repository_owner",
            "repository_owner_id",
            "ref",
            "run_id",
        }
    ),
    known=REGISTERED
    | frozenset(
        {
            "actor",
            "actor_id",
            "base_ref",
            "check_run_id",
            "enterprise",
            "enterprise_id",
            "environment",
            "environment_node_id",
            "event_name",
            "head_ref",
            "job_workflow_ref",
            "job_workflow_sha",
            "ref",
            "ref_protected",
            "ref_type",
            "repository",
            "repository_id",
            "repository_owner",
            "repository_owner_id",
            "repository_visibility",
            "run_attempt",
            "run_id",
            "run_number",
            "runner_environment",
            "sha",
            "workflow",
            "workflow_ref",
            "workflow_sha",
        }
    ),
    immutable_ids=frozenset({"repository_id", "repository_owner_id", "enterprise_id"}),
    user_controlled=frozenset({"actor", "workflow", "environment", "ref", "head_ref", "base_ref"}),
    untrusted=Untrusted(
        "event_name", frozenset({"pull_request", "pull_request_target"}), "code from a pull or merge request"
    ),
    neutral={
        "repository": "repository",
        "repository_id": "repository_id",
        "ref": "ref",
        "run_id": "run_id",
        "sha": "sha",
    },
    audited=(
        "repository",
        "repository_id",
        "repository_owner",
        "ref",
        "sha",
        "run_id",
        "run_attempt",
        "workflow_ref",
        "job_workflow_ref",
        "event_name",
        "environment",
        "actor",
        "runner_environment",
    ),
    case_insensitive=frozenset({"repository", "repository_owner", "actor", "enterprise"}),
    repo_prefixed=frozenset({"workflow_ref", "job_workflow_ref"}),
)
