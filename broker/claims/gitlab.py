"""GitLab CI ID tokens (gitlab.com and self-managed instances)."""

from __future__ import annotations

from broker.claims.schema import REGISTERED, ClaimSchema, Untrusted

GITLAB = ClaimSchema(
    type="gitlab",
    source="https://docs.gitlab.com/ci/secrets/id_token_authentication/ (token payload)",
    required=frozenset(
        {"sub", "jti", "project_id", "project_path", "namespace_id", "namespace_path", "ref", "pipeline_id"}
    ),
    known=REGISTERED
    | frozenset(
        {
            "ci_config_ref_uri",
            "ci_config_sha",
            "deployment_tier",
            "environment",
            "environment_action",
            "environment_protected",
            "groups_direct",
            "job_id",
            "job_namespace_id",
            "job_namespace_path",
            "job_project_id",
            "job_project_path",
            "namespace_id",
            "namespace_path",
            "pipeline_id",
            "pipeline_source",
            "project_id",
            "project_path",
            "project_visibility",
            "ref",
            "ref_path",
            "ref_protected",
            "ref_type",
            "runner_environment",
            "runner_id",
            "sha",
            "user_access_level",
            "user_email",
            "user_id",
            "user_identities",
            "user_login",
        }
    ),
    immutable_ids=frozenset({"project_id", "namespace_id"}),
    user_controlled=frozenset({"user_login", "user_email", "environment", "ref", "ref_path"}),
    untrusted=Untrusted(
        "pipeline_source",
        frozenset({"merge_request_event", "external_pull_request_event"}),
        "code from a pull or merge request",
    ),
    neutral={
        "repository": "project_path",
        "repository_id": "project_id",
        "ref": "ref",
        "run_id": "pipeline_id",
        "sha": "sha",
    },
    audited=(
        "project_path",
        "project_id",
        "namespace_path",
        "ref",
        "ref_protected",
        "sha",
        "pipeline_id",
        "job_id",
        "pipeline_source",
        "environment",
        "user_login",
        "runner_environment",
    ),
    case_insensitive=frozenset({"project_path", "namespace_path", "user_login"}),
)
