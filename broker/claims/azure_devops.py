"""Azure DevOps Pipelines: a token from `System.OidcRequestUri` (the oidctoken REST API).

Source: https://learn.microsoft.com/rest/api/azure/devops/distributedtask/oidctoken/create (the
request), the decoded payload in sigstore/fulcio#1803 (claims `org_id`, `prj_id`, `def_id`, `rpo_*`,
`run_id`), and gravitational/teleport `lib/azuredevops` (the same claims, and the fixed audience).

`aud` is always `api://AzureADTokenExchange`: give the provider that `audience`. `sub` is
`p://ORG/PROJECT/PIPELINE` for a pipeline's own token and `sc://ORG/PROJECT/CONNECTION` for a
service connection's. Every organization's tokens are signed with the same keys, so a rule must
pin the organization's UUID (`org_id`) or a project's (`prj_id`), whatever the issuer says.
"""

from __future__ import annotations

from broker.claims.schema import REGISTERED, ClaimSchema, Untrusted

AZURE_DEVOPS = ClaimSchema(
    type="azure-devops",
    source="https://learn.microsoft.com/rest/api/azure/devops/distributedtask/oidctoken/create",
    required=frozenset({"sub", "org_id"}),
    known=REGISTERED
    | frozenset({"org_id", "prj_id", "def_id", "rpo_id", "rpo_uri", "rpo_ver", "rpo_ref", "run_id"}),
    immutable_ids=frozenset({"org_id", "prj_id", "def_id", "rpo_id"}),
    user_controlled=frozenset({"rpo_ref", "rpo_ver"}),
    untrusted=Untrusted(
        "rpo_ref",
        frozenset({"refs/pull/1/merge"}),
        "a pull request validation build, which runs the pull request's code",
    ),
    tenant_claims=("org_id", "prj_id"),
    tenant_label="Azure DevOps organization",
    neutral={
        "repository": "rpo_uri",
        "repository_id": "rpo_id",
        "ref": "rpo_ref",
        "run_id": "run_id",
        "sha": "rpo_ver",
    },
    audited=("org_id", "prj_id", "def_id", "rpo_id", "rpo_uri", "rpo_ref", "rpo_ver", "run_id"),
    # GUIDs compare case-insensitively; organization, project and pipeline names in sub too.
    case_insensitive=frozenset({"sub", "org_id", "prj_id", "rpo_id"}),
)
