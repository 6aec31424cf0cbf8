"""HCP Terraform and Terraform Enterprise workload identity tokens (`TFC_WORKLOAD_IDENTITY_TOKEN`).

Source: https://developer.hashicorp.com/terraform/cloud-docs/workspaces/dynamic-provider-credentials/workload-identity-tokens
(token structure and example payload).

`https://app.terraform.io` (and `https://app.eu.terraform.io`, and each Terraform Enterprise
instance) signs for every organization on it: a rule must pin the organization's id, or a
project's or workspace's (`prj-...`, `ws-...`), which only one organization holds.
"""

from __future__ import annotations

from broker.claims.schema import REGISTERED, ClaimSchema, Untrusted

TERRAFORM_CLOUD = ClaimSchema(
    type="terraform-cloud",
    source="https://developer.hashicorp.com/terraform/cloud-docs/workspaces/dynamic-provider-credentials/workload-identity-tokens",
    required=frozenset(
        {"sub", "jti", "terraform_organization_id", "terraform_workspace_id", "terraform_run_phase"}
    ),
    known=REGISTERED
    | frozenset(
        {
            "terraform_organization_id",
            "terraform_organization_name",
            "terraform_project_id",
            "terraform_project_name",
            "terraform_workspace_id",
            "terraform_workspace_name",
            "terraform_full_workspace",
            "terraform_run_id",
            "terraform_run_phase",
        }
    ),
    immutable_ids=frozenset({"terraform_organization_id", "terraform_project_id", "terraform_workspace_id"}),
    # Names are chosen (and changed) by whoever may create or rename workspaces and projects.
    user_controlled=frozenset(
        {"terraform_organization_name", "terraform_project_name", "terraform_workspace_name"}
    ),
    untrusted=Untrusted(
        "terraform_run_phase",
        frozenset({"plan"}),
        "a plan, including the speculative plans run for pull requests",
    ),
    tenant_claims=("terraform_organization_id", "terraform_project_id", "terraform_workspace_id"),
    tenant_label="HCP Terraform organization",
    neutral={
        "repository": "terraform_full_workspace",
        "repository_id": "terraform_workspace_id",
        "run_id": "terraform_run_id",
    },
    audited=(
        "terraform_organization_id",
        "terraform_organization_name",
        "terraform_project_id",
        "terraform_workspace_id",
        "terraform_workspace_name",
        "terraform_run_id",
        "terraform_run_phase",
    ),
)
