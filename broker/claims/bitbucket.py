"""Bitbucket Pipelines: a step with `oidc: true` gets `$BITBUCKET_STEP_OIDC_TOKEN`.

Source: https://support.atlassian.com/bitbucket-cloud/docs/integrate-pipelines-with-resource-servers-using-oidc/
and the `claims_supported` of a workspace's discovery document
(`https://api.bitbucket.org/2.0/workspaces/WORKSPACE/pipelines-config/identity/oidc/.well-known/openid-configuration`),
as mirrored in gravitational/teleport `lib/bitbucket`. UUIDs come in braces: `{...}`.

The issuer names the workspace by its slug, which an admin can change and someone else can then
take: a rule must pin the workspace's UUID (or a repository's, which only one workspace holds).
"""

from __future__ import annotations

from broker.claims.schema import REGISTERED, ClaimSchema

BITBUCKET = ClaimSchema(
    type="bitbucket",
    source="https://support.atlassian.com/bitbucket-cloud/docs/integrate-pipelines-with-resource-servers-using-oidc/",
    required=frozenset({"sub", "workspaceUuid", "repositoryUuid", "pipelineUuid", "stepUuid"}),
    known=REGISTERED
    | frozenset(
        {
            "accountUuid",
            "workspaceUuid",
            "repositoryUuid",
            "pipelineUuid",
            "stepUuid",
            "deploymentEnvironmentUuid",
            "branchName",
            "compliant",
        }
    ),
    immutable_ids=frozenset({"workspaceUuid", "repositoryUuid", "deploymentEnvironmentUuid"}),
    user_controlled=frozenset({"branchName"}),
    tenant_claims=("workspaceUuid", "repositoryUuid"),
    tenant_label="Bitbucket workspace (the issuer URL names it by a slug that can be renamed and reused)",
    neutral={
        "repository": "repositoryUuid",
        "repository_id": "repositoryUuid",
        "ref": "branchName",
        "run_id": "pipelineUuid",
    },
    audited=(
        "workspaceUuid",
        "repositoryUuid",
        "pipelineUuid",
        "stepUuid",
        "deploymentEnvironmentUuid",
        "branchName",
        "accountUuid",
    ),
    case_insensitive=frozenset(
        {
            "accountUuid",
            "workspaceUuid",
            "repositoryUuid",
            "pipelineUuid",
            "stepUuid",
            "deploymentEnvironmentUuid",
        }
    ),
)
