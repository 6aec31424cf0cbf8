"""Jenkins with the OpenID Connect Provider plugin (`oidc-provider`), through credentials binding.

Source: jenkinsci/oidc-provider-plugin, README (Configuring claims) and
`config/IdTokenConfiguration.java`: by default a build's token carries `sub` = `${JOB_URL}` and
`build_number` (an integer), with `iss`, `aud` (only if the credential sets one), `iat` and `exp`
(one hour); no `jti`, no `nbf`. The issuer is `${JENKINS_URL}oidc`, or a folder's own.

Every other claim is a template the Jenkins administrator writes, so nothing is known to be
immutable, or to name a tenant, until the provider's `schema:` says so (see docs/configuration.md).
"""

from __future__ import annotations

from broker.claims.schema import REGISTERED, ClaimSchema

JENKINS = ClaimSchema(
    type="jenkins",
    source="https://plugins.jenkins.io/oidc-provider/",
    required=frozenset({"sub"}),
    known=REGISTERED | frozenset({"build_number"}),
    immutable_ids=frozenset(),
    user_controlled=frozenset(),
    neutral={"repository": "sub", "repository_id": "sub", "run_id": "build_number"},
    audited=("build_number",),
)
