"""Each provider's table against its own documented example payload (broker.sandbox.issuer names
each source): the table requires only what the example carries and knows everything it carries."""

from __future__ import annotations

import pytest

from broker.claims import ABSENT, SCHEMAS, TYPES, resolve
from broker.sandbox.issuer import CI_SHAPES

CONTRACT_TYPES = (
    "github",
    "gitlab",
    "buildkite",
    "circleci",
    "bitbucket",
    "azure-devops",
    "jenkins",
    "kubernetes",
    "terraform-cloud",
    "oidc",
)


def leaf_paths(claims: dict, prefix: str = "") -> set[str]:
    out: set[str] = set()
    for key, value in claims.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= leaf_paths(value, path + ".")
        else:
            out.add(path)
    return out


def test_the_types_are_the_contracts():
    assert TYPES == CONTRACT_TYPES
    assert set(CI_SHAPES) == set(SCHEMAS)


@pytest.mark.parametrize("kind", sorted(SCHEMAS))
def test_each_table_names_its_documentation(kind):
    assert SCHEMAS[kind].source.startswith("https://")


@pytest.mark.parametrize("kind", sorted(SCHEMAS))
def test_the_documented_example_carries_every_required_claim(kind):
    schema, example = SCHEMAS[kind], CI_SHAPES[kind].claims()
    for name in schema.required:
        assert resolve(example, name) not in (ABSENT, None), name


@pytest.mark.parametrize("kind", sorted(SCHEMAS))
def test_the_table_knows_every_claim_of_the_documented_example(kind):
    schema, example = SCHEMAS[kind], CI_SHAPES[kind].claims()
    assert {p for p in leaf_paths(example) if not schema.knows(p)} == set()


@pytest.mark.parametrize("kind", sorted(SCHEMAS))
def test_every_claim_a_table_treats_specially_is_one_it_knows(kind):
    schema = SCHEMAS[kind]
    special = (
        schema.required
        | schema.immutable_ids
        | schema.user_controlled
        | set(schema.tenant_claims)
        | schema.case_insensitive
        | schema.list_claims
        | set(schema.neutral.values())
        | set(schema.audited)
    )
    if schema.untrusted is not None:
        special |= {schema.untrusted.claim}
    assert {c for c in special if not schema.knows(c)} == set()
    assert not schema.immutable_ids & schema.user_controlled
    assert set(schema.tenant_claims) <= schema.immutable_ids


@pytest.mark.parametrize("kind", sorted(SCHEMAS))
def test_the_neutral_context_of_the_documented_example_resolves(kind):
    schema, example = SCHEMAS[kind], CI_SHAPES[kind].claims()
    assert resolve(example, schema.neutral["repository"]) not in (ABSENT, None)
    assert schema.identity(example) is not None


def test_shared_issuers_must_be_pinned_to_a_tenant():
    shared = {kind for kind, schema in SCHEMAS.items() if schema.tenant_claims}
    assert shared == {"buildkite", "azure-devops", "terraform-cloud", "bitbucket"}


def test_buildkite_tokens_need_no_jti_and_may_carry_nulls():
    schema = SCHEMAS["buildkite"]
    assert "jti" not in schema.required and "organization_id" not in schema.required
    assert {"step_key", "build_tag"}.isdisjoint(schema.required)
