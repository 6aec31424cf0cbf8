"""Buildkite Pipelines: `buildkite-agent oidc request-token`.

Source: https://buildkite.com/docs/agent/cli/reference/oidc (Claims, Optional claims, Example token
contents), and a real token's payload published in rubygems/rubygems.org#5412 (with `jti`, which
older agents do not send, and `"step_key": null`, `"build_tag": null`).

One issuer, `https://agent.buildkite.com`, signs for every Buildkite organization, so a rule must
pin the organization's UUID (`organization_id`, sent only when the job asks for it with
`--claim organization_id`) or a pipeline's (`pipeline_id`); slugs can be renamed and reused.
"""

from __future__ import annotations

from broker.claims.schema import REGISTERED, ClaimSchema

BUILDKITE = ClaimSchema(
    type="buildkite",
    source="https://buildkite.com/docs/agent/cli/reference/oidc",
    # Not jti (older agents omit it), not organization_id (only when requested), not step_key or
    # build_tag (null when unset).
    required=frozenset(
        {
            "sub",
            "organization_slug",
            "pipeline_slug",
            "build_number",
            "build_branch",
            "build_commit",
            "job_id",
        }
    ),
    known=REGISTERED
    | frozenset(
        {
            "organization_slug",
            "pipeline_slug",
            "build_number",
            "build_branch",
            "build_tag",
            "build_commit",
            "build_source",
            "step_key",
            "job_id",
            "agent_id",
            "runner_environment",
            # optional claims, sent when the job requests them with --claim
            "organization_id",
            "pipeline_id",
            "build_id",
            "cluster_id",
            "cluster_name",
            "queue_id",
            "queue_key",
        }
    ),
    known_prefixes=("agent_tag:",),
    immutable_ids=frozenset(
        {"organization_id", "pipeline_id", "build_id", "cluster_id", "queue_id", "job_id", "agent_id"}
    ),
    # The branch and tag are whatever was pushed; the step key is in the pipeline YAML the branch
    # carries.
    user_controlled=frozenset({"build_branch", "build_tag", "step_key"}),
    tenant_claims=("organization_id", "pipeline_id"),
    tenant_label="Buildkite organization",
    neutral={
        "repository": "pipeline_slug",
        "repository_id": "pipeline_id",
        "ref": "build_branch",
        "run_id": "build_number",
        "sha": "build_commit",
    },
    audited=(
        "organization_slug",
        "organization_id",
        "pipeline_slug",
        "pipeline_id",
        "build_number",
        "build_branch",
        "build_tag",
        "build_commit",
        "build_source",
        "step_key",
        "job_id",
        "agent_id",
        "cluster_id",
        "queue_key",
        "runner_environment",
    ),
    # UUIDs: the web UI and the API may spell them in either case.
    case_insensitive=frozenset({"organization_id", "pipeline_id", "build_id", "cluster_id", "queue_id"}),
)
