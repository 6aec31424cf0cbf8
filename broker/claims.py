"""What each CI provider's tokens carry, as data.

Adding a provider type means adding one `ClaimSchema`, not new control flow. The schema drives
three things: how claim values are normalised before matching (GitHub and GitLab names are
case-insensitive; a workflow ref's branch is not), which claims `ci-broker check` considers
immutable or attacker-steerable, and which claims the audit log and the broker's assertion carry.
"""

from __future__ import annotations

from dataclasses import dataclass


def _lower_repo_of_workflow_ref(value: str) -> str:
    """`Owner/Repo/.github/workflows/x.yml@refs/heads/Main` -> owner/repo lowered, rest kept.

    The owner and repository are case-insensitive on GitHub; the path and ref after them are not.
    """
    parts = value.split("/", 2)
    if len(parts) < 3:
        return value
    return f"{parts[0].lower()}/{parts[1].lower()}/{parts[2]}"


@dataclass(frozen=True)
class ClaimSchema:
    type: str
    # Claims a token of this type must carry, beyond the registered ones every token needs.
    required: frozenset[str]
    # Every claim the provider documents; a rule on anything else earns a warning (likely a typo).
    known: frozenset[str]
    # Numeric ids that survive renames and are never reused: what a rule should bind to.
    immutable_ids: frozenset[str]
    # Claims the person triggering the job chooses (branch names, workflow names, actor).
    user_controlled: frozenset[str]
    # The claim naming the triggering event, and the events that run code from forks or PRs.
    event_claim: str
    untrusted_events: frozenset[str]
    # The broker's provider-neutral context names (repository, repository_id, ref, run_id, sha)
    # mapped to this provider's claims: they travel in the broker's assertion and session names,
    # and `repository_id` is the identity that rate limits count against.
    neutral: dict[str, str]
    # Non-secret CI claims copied into audit events as they are.
    audited: tuple[str, ...]
    # Names the provider treats case-insensitively: compared lowered, patterns matched IGNORECASE.
    case_insensitive: frozenset[str] = frozenset()
    # Workflow refs: `owner/repo/` is case-insensitive, the path and branch after it are not.
    repo_prefixed: frozenset[str] = frozenset()

    def normalize(self, claim: str, value: str) -> str:
        if claim in self.case_insensitive:
            return value.lower()
        if claim in self.repo_prefixed:
            return _lower_repo_of_workflow_ref(value)
        return value


REGISTERED = frozenset({"iss", "sub", "aud", "exp", "nbf", "iat", "jti"})

GITHUB = ClaimSchema(
    type="github",
    required=frozenset(
        {"repository", "repository_id", "repository_owner", "repository_owner_id", "ref", "run_id"}
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
    event_claim="event_name",
    untrusted_events=frozenset({"pull_request", "pull_request_target"}),
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

GITLAB = ClaimSchema(
    type="gitlab",
    required=frozenset(
        {"project_id", "project_path", "namespace_id", "namespace_path", "ref", "pipeline_id"}
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
    event_claim="pipeline_source",
    untrusted_events=frozenset({"merge_request_event", "external_pull_request_event"}),
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

SCHEMAS: dict[str, ClaimSchema] = {s.type: s for s in (GITHUB, GITLAB)}


def claim_text(value: object) -> str | None:
    """A claim as the text conditions compare against, or None if it is not a scalar.

    Numbers and booleans compare as their JSON text (`42`, `true`), per the contract.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return None
