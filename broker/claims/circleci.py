"""CircleCI: `$CIRCLE_OIDC_TOKEN_V2` (or `circleci run oidc get` for a custom audience).

Source: https://circleci.com/docs/guides/permissions-authentication/openid-connect-tokens/ (Format of
the OpenID Connect ID token), circleci/circleci-docs `openid-connect-tokens.adoc`.

The issuer is per organization (`https://oidc.circleci.com/org/<organization-id>`) and the default
`aud` is that organization id, so the provider's `audience` is usually the organization id. The
additional claims' names contain dots and a slash (`oidc.circleci.com/project-id`): they are top-level
keys, written in rules exactly as they are. Forked pull requests get tokens only when the project
passes secrets to forks; `vcs-origin` then names the fork.
"""

from __future__ import annotations

from broker.claims.schema import REGISTERED, ClaimSchema, Untrusted

PROJECT_ID = "oidc.circleci.com/project-id"
VCS_ORIGIN = "oidc.circleci.com/vcs-origin"
VCS_REF = "oidc.circleci.com/vcs-ref"
CONTEXT_IDS = "oidc.circleci.com/context-ids"
SSH_RERUN = "oidc.circleci.com/ssh-rerun"

CIRCLECI = ClaimSchema(
    type="circleci",
    source="https://circleci.com/docs/guides/permissions-authentication/openid-connect-tokens/",
    required=frozenset({"sub", PROJECT_ID}),
    known=REGISTERED | frozenset({PROJECT_ID, VCS_ORIGIN, VCS_REF, CONTEXT_IDS, SSH_RERUN}),
    # Contexts can be restricted to security groups: a context id is who may run the job, not only
    # where.
    immutable_ids=frozenset({PROJECT_ID, CONTEXT_IDS}),
    user_controlled=frozenset({VCS_REF}),
    untrusted=Untrusted(
        SSH_RERUN, frozenset({"true"}), "a job rerun with SSH, where a person types commands"
    ),
    neutral={"repository": VCS_ORIGIN, "repository_id": PROJECT_ID, "ref": VCS_REF},
    audited=(PROJECT_ID, VCS_ORIGIN, VCS_REF, CONTEXT_IDS, SSH_RERUN),
    case_insensitive=frozenset({PROJECT_ID, CONTEXT_IDS, VCS_ORIGIN}),
    list_claims=frozenset({CONTEXT_IDS}),
)
