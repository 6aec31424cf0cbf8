"""Every CI that issues OIDC tokens, end to end: a local issuer per CI minting tokens with that
CI's documented claims (broker.sandbox.issuer names each source), one broker policy covering them
all, and the sandbox's verifying AWS, GCP and Azure stand-ins behind it (CONTRACT section 11).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from broker.claims import SCHEMAS
from broker.config import ConfigError, build_config
from broker.explain import explain
from broker.lint import lint
from broker.sandbox.issuer import CI_SHAPES, OMIT, LocalIssuer
from broker.sandbox.stack import Sandbox
from tests.adversarial.forge import signature_of, with_signature
from tests.helpers import assert_refused, ci_broker, last_refusal

# One safe rule per type, on the documented examples' values: what docs/policies.md recommends.
SAFE_RULES: dict[str, dict[str, Any]] = {
    "buildkite": {
        "organization_id": "0184990a-477b-4fa8-9968-496074483c77",
        "pipeline_id": "0184990a-4782-42b5-afc1-16715b10b1a0",
        "build_branch": "main",
    },
    "circleci": {
        "oidc.circleci.com/project-id": "5b3f0c8e-2d4a-4b6c-8e9f-1a2b3c4d5e6f",
        "oidc.circleci.com/vcs-ref": "refs/heads/main",
        "oidc.circleci.com/ssh-rerun": "false",
    },
    "bitbucket": {
        "workspaceUuid": "{5d2e8f3a-9b1c-4e7d-a6f0-3c8b2e1d4a9f}",
        "repositoryUuid": "{a1f3c5e7-0b2d-4f6a-8c9e-1d3f5a7c9e0b}",
        "deploymentEnvironmentUuid": "{b7c9d1e3-4f5a-4b6c-8d7e-5f7a9b1c3d4e}",
    },
    "azure-devops": {
        "org_id": "3b0b3a72-5f0c-4c5e-9a58-6d4d0f1b2c3d",
        "prj_id": "6f8e2c1a-7b3d-4e9f-a5c6-8d0b2e4f6a1c",
        "def_id": "42",
        "rpo_ref": "refs/heads/main",
    },
    "jenkins": {"sub": "https://jenkins.example.com/job/platform/job/deploy/"},
    "kubernetes": {
        "kubernetes.io.namespace": "my-namespace",
        "kubernetes.io.serviceaccount.uid": "a087d5a0-e1dd-43ec-93ac-f13d89cd13af",
    },
    "terraform-cloud": {
        "terraform_organization_id": "org-GRNbCjYNpBB6NEH9",
        "terraform_workspace_id": "ws-mbsd5E3Ktt5Rg2Xm",
        "terraform_run_phase": "apply",
    },
    "oidc": {"org_uuid": "org-1", "project_uuid": "prj-1", "branch": "main", "event": "push"},
}
# Another tenant of the same issuer: ids of its own, every other claim the same.
OTHER_TENANT: dict[str, dict[str, Any]] = {
    "buildkite": {
        "organization_id": "0190aaaa-0000-4000-8000-000000000001",
        "pipeline_id": "0190aaaa-0000-4000-8000-000000000002",
    },
    "azure-devops": {
        "org_id": "0190aaaa-0000-4000-8000-000000000003",
        "prj_id": "0190aaaa-0000-4000-8000-000000000004",
    },
    "terraform-cloud": {
        "terraform_organization_id": "org-Mallory00000000",
        "terraform_project_id": "prj-Mallory00000000",
        "terraform_workspace_id": "ws-Mallory000000000",
    },
    "bitbucket": {
        "workspaceUuid": "{0190aaaa-0000-4000-8000-000000000005}",
        "repositoryUuid": "{0190aaaa-0000-4000-8000-000000000006}",
        "deploymentEnvironmentUuid": "{0190aaaa-0000-4000-8000-000000000007}",
    },
    "oidc": {"org_uuid": "org-2", "project_uuid": "prj-2"},
}
OIDC_SCHEMA = {
    "required": ["org_uuid", "project_uuid", "branch", "event"],
    "immutable": ["org_uuid", "project_uuid"],
    "user_controlled": ["branch"],
    "claims": ["build.id"],
    "tenant": ["org_uuid"],
    "untrusted": {"claim": "event", "values": ["merge_request"]},
    "context": {"repository_id": "project_uuid", "run_id": "build.id", "ref": "branch"},
}
TYPES = sorted(SAFE_RULES)
ROLES = {"deploy-prod": "aws", "gcp-deploy": "gcp", "azure-deploy": "azure"}


def oidc_claims(**overrides: Any) -> dict[str, Any]:
    """An in-house CI's token, as its own documentation would describe it: the `oidc` type."""
    import time

    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": "project:prj-1:branch:main",
        "org_uuid": "org-1",
        "project_uuid": "prj-1",
        "branch": "main",
        "event": "push",
        "build": {"id": "77"},
        "iat": now,
        "exp": now + 300,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not OMIT}


@dataclass
class CIs:
    sandbox: Sandbox
    issuers: dict[str, LocalIssuer]

    def audience(self, kind: str) -> str:
        shape = CI_SHAPES.get(kind)
        return shape.audience if shape and shape.audience else self.sandbox.broker_url

    def claims(self, kind: str, **overrides: Any) -> dict[str, Any]:
        factory = CI_SHAPES[kind].claims if kind in CI_SHAPES else oidc_claims
        aud: Any = self.audience(kind)
        if kind == "kubernetes":
            aud = [aud]  # a projected token's aud is a list
        claims = factory(**{"aud": aud, **overrides})
        return SCHEMAS[kind].nest(claims) if kind == "kubernetes" else claims

    def token(self, kind: str, **overrides: Any) -> str:
        return self.issuers[kind].mint(self.claims(kind, **overrides))

    def config(self) -> dict[str, Any]:
        config = self.sandbox.config_dict()
        for kind, issuer in self.issuers.items():
            provider: dict[str, Any] = {"issuer": issuer.url, "type": kind}
            shape = CI_SHAPES.get(kind)
            if shape is not None and shape.audience:
                provider["audience"] = shape.audience
            if kind == "oidc":
                provider.update(schema=copy.deepcopy(OIDC_SCHEMA), algorithms=["ES256"])
            config["providers"][kind] = provider
        # One policy for every CI: the same three roles, one rule per CI on each.
        config["roles"]["deploy-prod"]["aws"]["session_tags"] = {"repository": "{repository}"}
        for role in ROLES:
            config["roles"][role]["allow"] += [
                {"provider": kind, "claims": copy.deepcopy(SAFE_RULES[kind])} for kind in self.issuers
            ]
        return config


@pytest.fixture(scope="module")
def cis(sandbox: Sandbox) -> Iterator[CIs]:
    issuers = {kind: LocalIssuer(path=CI_SHAPES[kind].issuer_path) for kind in TYPES if kind != "oidc"}
    issuers["oidc"] = LocalIssuer("ES256", path="/ci")
    for issuer in issuers.values():
        issuer.start()
    try:
        yield CIs(sandbox, issuers)
    finally:
        for issuer in issuers.values():
            issuer.stop()


@pytest.fixture
def broker(cis: CIs, serve_config: Any) -> Any:
    return serve_config(cis.config())


def exchange(cis: CIs, token: str, role: str = "deploy-prod") -> Any:
    return cis.sandbox.exchange(token, role)


def loaded(cis: CIs, config: dict[str, Any] | None = None) -> Any:
    return build_config(copy.deepcopy(config or cis.config()), base_dir=cis.sandbox.workdir)


def schema_of(cis: CIs, kind: str) -> Any:
    """The schema the broker uses for a provider: the built-in table, or the oidc one declared."""
    return loaded(cis).providers[kind].schema


def with_rule(cis: CIs, kind: str, claims: dict[str, Any]) -> dict[str, Any]:
    config = cis.config()
    config["roles"]["deploy-prod"]["allow"] = [{"provider": kind, "claims": claims}]
    return config


# -- each CI, each cloud, one policy -----------------------------------------------------------------


@pytest.mark.parametrize("role", sorted(ROLES))
@pytest.mark.parametrize("kind", TYPES)
def test_each_ci_token_gets_each_clouds_credentials_through_one_policy(cis, broker, audit_events, kind, role):
    response = exchange(cis, cis.token(kind), role)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["cloud"] == ROLES[role]
    event = audit_events[-1]
    assert (event["outcome"], event["provider"], event["role"]) == ("granted", kind, role)
    # After the sandbox's own rules (GitHub; GitHub and GitLab on the GCP and Azure roles).
    own = 1 if role == "deploy-prod" else 2
    assert event["matched_rule"] == own + list(cis.issuers).index(kind)


@pytest.mark.parametrize("kind", TYPES)
def test_the_assertion_carries_each_cis_neutral_context(cis, broker, kind):
    before = len(cis.sandbox.sts.accepted)
    assert exchange(cis, cis.token(kind)).status_code == 200
    (assertion,) = cis.sandbox.sts.accepted[before:]
    assert assertion["sub"] == "role:deploy-prod"
    assert assertion["provider"] == kind
    assert assertion["repository_id"] and assertion["repository"]


# -- each condition of each safe rule is load-bearing --------------------------------------------------


def other_value(value: Any) -> Any:
    if value == "false":
        return True
    return value + "-other" if isinstance(value, str) else value


@pytest.mark.parametrize(
    "kind,claim", [(kind, claim) for kind in TYPES for claim in SAFE_RULES[kind]], ids=lambda v: str(v)
)
def test_a_token_failing_any_one_condition_is_denied(cis, broker, audit_events, kind, claim):
    if claim.startswith("kubernetes.io."):
        flat = {claim: other_value(SAFE_RULES[kind][claim])}
        token = cis.issuers[kind].mint(_merge(cis.claims(kind), SCHEMAS[kind].nest(flat)))
    else:
        token = cis.token(kind, **{claim: other_value(SAFE_RULES[kind][claim])})
    before = len(cis.sandbox.sts.calls)
    assert_refused(exchange(cis, token), 403, "access_denied")
    assert len(cis.sandbox.sts.calls) == before
    assert f"{claim}:" in last_refusal(audit_events)["reason"]


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


# -- tenants of a shared issuer ----------------------------------------------------------------------


SHARED = sorted(OTHER_TENANT)


@pytest.mark.parametrize("kind", SHARED)
def test_another_tenant_of_the_same_issuer_is_refused_even_when_every_other_claim_matches(
    cis, broker, audit_events, kind
):
    """Same issuer, same keys, same slugs, branch, step and names: only the tenant's ids differ."""
    token = cis.token(kind, **OTHER_TENANT[kind])
    assert_refused(exchange(cis, token), 403, "access_denied")
    assert "does not match" in last_refusal(audit_events)["reason"]


@pytest.mark.parametrize("kind", SHARED)
def test_a_rule_that_does_not_pin_the_tenant_is_refused_with_its_key_path(cis, kind):
    schema = schema_of(cis, kind)
    tenant = set(schema.tenant_claims)
    rule = {k: v for k, v in SAFE_RULES[kind].items() if k not in tenant}
    rule.setdefault(sorted(schema.immutable_ids - tenant or {"sub"})[0], "x")
    with pytest.raises(ConfigError) as caught:
        loaded(cis, with_rule(cis, kind, rule))
    (finding,) = [f for f in caught.value.findings if "does not pin the tenant" in f.message]
    assert finding.path == "roles.deploy-prod.allow[0]"


@pytest.mark.parametrize("kind", SHARED)
def test_a_tenant_pinned_only_by_a_pattern_is_not_pinned(cis, kind):
    rule = dict(SAFE_RULES[kind])
    for claim in (c for c in schema_of(cis, kind).tenant_claims if c in rule):
        rule[claim] = {"glob": "**"}
    with pytest.raises(ConfigError, match="does not pin the tenant"):
        loaded(cis, with_rule(cis, kind, rule))


# -- what the job's author chooses cannot grant a role ----------------------------------------------


USER_CONTROLLED = sorted(k for k in TYPES if k == "oidc" or SCHEMAS[k].user_controlled)


@pytest.mark.parametrize("kind", USER_CONTROLLED)
def test_a_rule_made_only_of_claims_the_author_controls_is_refused(cis, kind):
    controlled = sorted(schema_of(cis, kind).user_controlled)
    rule = {claim: "main" for claim in controlled}
    with pytest.raises(ConfigError) as caught:
        loaded(cis, with_rule(cis, kind, rule))
    assert any(
        "every condition is on a claim the job's author controls" in f.message
        and f.path == "roles.deploy-prod.allow[0]"
        for f in caught.value.findings
    )


IDENTITIES: dict[str, dict[str, Any]] = {
    **OTHER_TENANT,
    "circleci": {"oidc.circleci.com/project-id": "0190aaaa-0000-4000-8000-00000000000a"},
    "kubernetes": {},  # below: another service account
}


@pytest.mark.parametrize("kind", sorted(set(USER_CONTROLLED) - {"kubernetes"}))
def test_matching_every_author_chosen_claim_from_elsewhere_is_denied(cis, broker, kind):
    """The attacker's own pipeline names its branch, step and workspace like ours: still refused."""
    token = cis.token(kind, **IDENTITIES[kind])
    assert_refused(exchange(cis, token), 403, "access_denied")


def test_a_pod_named_like_ours_under_another_service_account_is_denied(cis, broker):
    claims = cis.claims("kubernetes")
    claims["kubernetes.io"]["serviceaccount"] = {"name": "my-workload", "uid": "another-uid"}
    assert_refused(exchange(cis, cis.issuers["kubernetes"].mint(claims)), 403, "access_denied")


# -- what check says about each type -----------------------------------------------------------------


@pytest.mark.parametrize("kind", TYPES)
def test_each_safe_rule_passes_check_with_no_warning(cis, kind):
    config = loaded(cis, with_rule(cis, kind, SAFE_RULES[kind]))
    assert [f.render() for f in lint(config) if f.path.startswith("roles.deploy-prod")] == []


NAME_INSTEAD_OF_ID = {
    "circleci": {"oidc.circleci.com/vcs-origin": "github.com/organization-123/repo-1"},
    "kubernetes": {"kubernetes.io.serviceaccount.name": "my-workload"},
}


@pytest.mark.parametrize("kind", sorted(NAME_INSTEAD_OF_ID))
def test_a_rule_binding_a_name_instead_of_an_immutable_id_is_warned_about(cis, kind):
    rule = {k: v for k, v in SAFE_RULES[kind].items() if k not in SCHEMAS[kind].immutable_ids}
    rule.update(NAME_INSTEAD_OF_ID[kind])
    found = [f.message for f in lint(loaded(cis, with_rule(cis, kind, rule)))]
    assert any("binds no immutable id" in m for m in found), found


def test_jenkins_has_no_immutable_id_until_the_schema_declares_one(cis):
    rule = SAFE_RULES["jenkins"]
    assert not [f for f in lint(loaded(cis, with_rule(cis, "jenkins", rule))) if "immutable" in f.message]
    config = with_rule(cis, "jenkins", rule)
    config["providers"]["jenkins"]["schema"] = {"immutable": ["job_uuid"]}
    found = [f.message for f in lint(loaded(cis, config))]
    assert any("binds no immutable id (job_uuid)" in m for m in found), found
    config["roles"]["deploy-prod"]["allow"][0]["claims"]["job_uuid"] = "1f0e"
    assert not [f for f in lint(loaded(cis, config)) if f.path.startswith("roles.deploy-prod")]


UNTRUSTED = {
    "circleci": ("oidc.circleci.com/ssh-rerun", ["false", "true"], "admits true"),
    "azure-devops": ("rpo_ref", {"glob": "refs/**"}, "admits refs/pull/1/merge"),
    "terraform-cloud": ("terraform_run_phase", ["plan", "apply"], "admits plan"),
    "oidc": ("event", ["push", "merge_request"], "admits merge_request"),
}


@pytest.mark.parametrize("kind", sorted(UNTRUSTED))
def test_a_rule_admitting_untrusted_jobs_is_warned_about(cis, kind):
    claim, condition, expected = UNTRUSTED[kind]
    rule = {**SAFE_RULES[kind], claim: condition}
    found = [f.message for f in lint(loaded(cis, with_rule(cis, kind, rule)))]
    assert any(expected in m for m in found), found
    rule.pop(claim)
    found = [f.message for f in lint(loaded(cis, with_rule(cis, kind, rule)))]
    assert any(f"no condition on {claim}" in m for m in found), found


# -- tokens without jti, and null claims ----------------------------------------------------------------


def test_a_buildkite_token_from_an_older_agent_without_jti_is_used_once(cis, broker, audit_events):
    token = cis.token("buildkite", jti=OMIT)
    assert exchange(cis, token).status_code == 200
    assert audit_events[-1]["jti"] is None
    assert_refused(exchange(cis, token), 401, "invalid_token")
    assert "already been used" in exchange(cis, token).json()["message"]


@pytest.mark.parametrize("jti", [None, "", 7])
def test_an_optional_jti_that_is_present_must_still_be_an_identifier(cis, broker, audit_events, jti):
    """Absent is fine for Buildkite; null, empty or a number is a malformed token, not an absent jti."""
    assert_refused(exchange(cis, cis.token("buildkite", jti=jti)), 401, "invalid_token")
    assert "jti is not a non-empty string" in last_refusal(audit_events)["reason"]


def test_two_tokens_without_jti_are_two_tokens(cis, broker):
    assert exchange(cis, cis.token("buildkite", jti=OMIT)).status_code == 200
    assert (
        exchange(
            cis, cis.token("buildkite", jti=OMIT, job_id="0184990a-0000-4000-8000-00000000beef")
        ).status_code
        == 200
    )


@pytest.mark.parametrize("twin_first", [False, True])
def test_an_ecdsa_twin_of_a_token_without_jti_is_the_same_token(cis, broker, audit_events, twin_first):
    """ECDSA's (r, n - s) verifies too: keyed on the whole token, the twin would be a second grant."""
    p256_n = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
    token = cis.token("oidc")
    signature = signature_of(token)
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    twin = with_signature(token, r.to_bytes(32, "big") + (p256_n - s).to_bytes(32, "big"))
    first, second = (twin, token) if twin_first else (token, twin)
    assert exchange(cis, first).status_code == 200
    assert_refused(exchange(cis, second), 401, "invalid_token")
    assert "replayed" in last_refusal(audit_events)["reason"]


def test_a_null_claim_never_matches_and_never_crashes(cis, serve_config, audit_events):
    config = with_rule(cis, "buildkite", {**SAFE_RULES["buildkite"], "step_key": "deploy"})
    config["deny"] = [
        {"provider": "buildkite", "claims": {"build_tag": {"regex": ".*"}}, "reason": "no tag builds"}
    ]
    serve_config(config)
    assert_refused(exchange(cis, cis.token("buildkite", step_key=None)), 403, "access_denied")
    assert "step_key: is null" in last_refusal(audit_events)["reason"]
    # A null build_tag does not fire a deny rule that matches any tag either.
    response = exchange(cis, cis.token("buildkite", step_key="deploy", build_tag=None))
    assert response.status_code == 200, response.text
    assert audit_events[-1]["claims"]["build_tag"] is None


# -- required claims and audiences, per type ----------------------------------------------------------


@pytest.mark.parametrize(
    "kind,claim",
    [
        ("buildkite", "organization_slug"),
        ("circleci", "oidc.circleci.com/project-id"),
        ("azure-devops", "org_id"),
        ("terraform-cloud", "jti"),
        ("bitbucket", "repositoryUuid"),
        ("jenkins", "sub"),
    ],
)
def test_a_token_lacking_a_claim_its_type_requires_is_refused(cis, broker, audit_events, kind, claim):
    assert_refused(exchange(cis, cis.token(kind, **{claim: OMIT})), 401, "invalid_token")
    assert f"missing claim {claim!r}" in last_refusal(audit_events)["reason"]


def test_a_required_nested_claim_is_looked_up_by_its_path(cis, broker, audit_events):
    claims = cis.claims("kubernetes")
    del claims["kubernetes.io"]["serviceaccount"]["uid"]
    assert_refused(exchange(cis, cis.issuers["kubernetes"].mint(claims)), 401, "invalid_token")
    assert "missing claim 'kubernetes.io.serviceaccount.uid'" in last_refusal(audit_events)["reason"]


def test_a_required_claim_that_is_null_is_missing(cis, broker, audit_events):
    assert_refused(exchange(cis, cis.token("buildkite", organization_slug=None)), 401, "invalid_token")
    assert "claim 'organization_slug' is null" in last_refusal(audit_events)["reason"]


def test_a_provider_audience_replaces_the_servers_for_that_provider_only(cis, broker, audit_events):
    # Azure DevOps fixes aud: a token for the broker's own audience is not one Azure DevOps makes.
    assert_refused(exchange(cis, cis.token("azure-devops", aud=cis.sandbox.broker_url)), 401, "invalid_token")
    assert "lacks 'api://AzureADTokenExchange'" in last_refusal(audit_events)["reason"]
    # And the provider's audience opens nothing for other providers.
    github = cis.sandbox.github.mint(CI_SHAPES["github"].claims(aud="api://AzureADTokenExchange"))
    assert_refused(exchange(cis, github), 401, "invalid_token")


# -- nested and dotted names: config, policy, explain, audit, session names ------------------------------


def test_nested_claims_through_policy_explain_audit_and_session_names(cis, broker, audit_events):
    before = len(cis.sandbox.sts.calls)
    claims = cis.claims("kubernetes")
    assert exchange(cis, cis.issuers["kubernetes"].mint(claims)).status_code == 200
    event = audit_events[-1]
    assert event["claims"]["kubernetes.io.namespace"] == "my-namespace"
    assert event["claims"]["kubernetes.io.serviceaccount.uid"] == "a087d5a0-e1dd-43ec-93ac-f13d89cd13af"
    (call,) = [c for c in cis.sandbox.sts.calls[before:] if c.get("Action") == "AssumeRoleWithWebIdentity"]
    # <provider>-<run id>-<repository>: the pod's name and the service account's subject.
    assert call["RoleSessionName"].startswith("kubernetes-my-workload-69cbfb9798-jv9gn-system-serviceaccount")
    text, allowed = explain(broker.extensions["broker"].config, "deploy-prod", claims, "kubernetes")
    assert allowed
    assert "[ok] kubernetes.io.serviceaccount.uid: 'a087d5a0-e1dd-43ec-93ac-f13d89cd13af'" in text


def test_dotted_top_level_names_through_policy_explain_and_audit(cis, broker, audit_events):
    claims = cis.claims("circleci")
    assert exchange(cis, cis.issuers["circleci"].mint(claims)).status_code == 200
    assert audit_events[-1]["claims"]["oidc.circleci.com/vcs-ref"] == "refs/heads/main"
    text, allowed = explain(broker.extensions["broker"].config, "deploy-prod", claims, "circleci")
    assert allowed and "[ok] oidc.circleci.com/ssh-rerun: 'false'" in text


def test_a_nested_claim_shadowed_by_a_literal_dotted_key_resolves_to_the_literal_one(cis, broker):
    """Greedy resolution: a top-level key spelled `kubernetes.io.namespace` wins over the nested one,
    so a rule cannot be satisfied by one and audited by the other."""
    claims = cis.claims("kubernetes")
    claims["kubernetes.io.namespace"] = "other-namespace"
    assert_refused(exchange(cis, cis.issuers["kubernetes"].mint(claims)), 403, "access_denied")


def test_a_schemas_nested_context_names_the_session(cis, broker, audit_events):
    before = len(cis.sandbox.sts.calls)
    assert exchange(cis, cis.token("oidc", build={"id": "run-4711"})).status_code == 200
    (call,) = [c for c in cis.sandbox.sts.calls[before:] if c.get("Action") == "AssumeRoleWithWebIdentity"]
    assert call["RoleSessionName"].startswith("oidc-run-4711-")
    assert audit_events[-1]["claims"]["build.id"] == "run-4711"


def test_explain_reads_nested_claims_from_a_claims_file(cis, tmp_path):
    import yaml

    config = cis.config()
    path = tmp_path / "broker.yaml"
    config["server"]["signing_keys"] = [str(cis.sandbox.key_path)]
    path.write_text(yaml.safe_dump(config))
    claims_file = tmp_path / "claims.json"
    claims_file.write_text(json.dumps({**cis.claims("kubernetes"), "iss": cis.issuers["kubernetes"].url}))
    result = ci_broker("explain", "--config", str(path), "--role", "gcp-deploy", "--claims", str(claims_file))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[ok] kubernetes.io.namespace: 'my-namespace'" in result.stdout
