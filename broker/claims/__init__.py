"""What each CI provider's tokens carry, as data: one table per provider type.

Each table's module names the documentation it was written from. `schema.py` holds what a table
is and how a claim name is resolved in a token; `declared.py` builds the schema an `oidc` (or
`jenkins`) provider declares in the config file. Adding a provider type means adding one table
here; nothing else changes if its tokens are ordinary OIDC.
"""

from __future__ import annotations

from broker.claims.azure_devops import AZURE_DEVOPS
from broker.claims.bitbucket import BITBUCKET
from broker.claims.buildkite import BUILDKITE
from broker.claims.circleci import CIRCLECI
from broker.claims.declared import Declared, extended_schema, oidc_schema
from broker.claims.github import GITHUB
from broker.claims.gitlab import GITLAB
from broker.claims.jenkins import JENKINS
from broker.claims.kubernetes import KUBERNETES
from broker.claims.schema import (
    ABSENT,
    CLAIM_PATH,
    NEUTRAL_NAMES,
    REGISTERED,
    ClaimSchema,
    Untrusted,
    claim_text,
    resolve,
)
from broker.claims.terraform_cloud import TERRAFORM_CLOUD

SCHEMAS: dict[str, ClaimSchema] = {
    s.type: s
    for s in (
        GITHUB,
        GITLAB,
        BUILDKITE,
        CIRCLECI,
        BITBUCKET,
        AZURE_DEVOPS,
        JENKINS,
        KUBERNETES,
        TERRAFORM_CLOUD,
    )
}
# `oidc`: any other issuer, with its schema in the config (`declared.oidc_schema`).
TYPES: tuple[str, ...] = (*SCHEMAS, "oidc")
# Types whose `schema:` section is required (oidc) or may add to the built-in table (jenkins).
DECLARABLE: frozenset[str] = frozenset({"oidc", "jenkins"})

__all__ = [
    "ABSENT",
    "AZURE_DEVOPS",
    "BITBUCKET",
    "BUILDKITE",
    "CIRCLECI",
    "CLAIM_PATH",
    "DECLARABLE",
    "GITHUB",
    "GITLAB",
    "JENKINS",
    "KUBERNETES",
    "NEUTRAL_NAMES",
    "REGISTERED",
    "SCHEMAS",
    "TERRAFORM_CLOUD",
    "TYPES",
    "ClaimSchema",
    "Declared",
    "Untrusted",
    "claim_text",
    "extended_schema",
    "oidc_schema",
    "resolve",
]
