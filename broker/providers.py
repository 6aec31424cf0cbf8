"""The config's `providers:` section: each CI issuer the broker trusts, its claim schema and audience.

`type` picks a built-in schema (`broker.claims`); `type: oidc` takes its schema from the
provider's own `schema:` section, and `type: jenkins` may add to its built-in one there (claims
that Jenkins administrators template). Every problem is a finding with its key path.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broker.claims import (
    CLAIM_PATH,
    DECLARABLE,
    NEUTRAL_NAMES,
    SCHEMAS,
    TYPES,
    ClaimSchema,
    Declared,
    Untrusted,
    extended_schema,
    oidc_schema,
)
from broker.schema import Section, join

PROVIDER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# Asymmetric algorithms only: HS* would let anyone holding the issuer's public key mint tokens.
PROVIDER_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384")
# The schema lists, in the order `check` reports them.
SCHEMA_LISTS = ("required", "immutable", "case_insensitive", "user_controlled", "claims", "tenant")
# The verifier checks these itself; a schema may only require the optional two.
FIXED_CLAIMS = frozenset({"iss", "aud", "exp", "nbf", "iat", "jti"})
REQUIRABLE = frozenset({"jti", "nbf"})


@dataclass(frozen=True)
class ProviderConfig:
    name: str
    issuer: str
    type: str
    jwks_uri: str | None
    ca_bundle: str | None
    algorithms: tuple[str, ...]
    schema: ClaimSchema
    # The `aud` this provider's tokens must carry; None: the server's audience.
    audience: str | None = None

    def identity(self, claims: Mapping[str, Any]) -> str:
        """provider + repository/project id: what one repository's jobs share, whatever its name.
        What rate limits count, alerts name and blocks' audit trail follows."""
        text = self.schema.identity(claims)
        return f"{self.name}:{text if text is not None else '?'}"


def parse_providers(s: Section) -> dict[str, ProviderConfig]:
    providers: dict[str, ProviderConfig] = {}
    issuers: dict[str, str] = {}
    for name in list(s.keys()):
        p = s.section(name)
        if not isinstance(name, str) or not PROVIDER_NAME.fullmatch(name):
            s.findings.error(p.path, "provider names use letters, digits, '.', '_' and '-'")
            continue
        issuer = p.url("issuer", required=True)
        kind = p.choice("type", TYPES, required=True)
        schema = _schema(p, kind)
        audience = p.string("audience")
        jwks_uri = p.url("jwks_uri")
        ca_bundle = p.string("ca_bundle")
        if ca_bundle and not Path(ca_bundle).is_file():
            s.findings.error(p.at("ca_bundle"), f"{ca_bundle!r} is not a readable file")
        algorithms = p.string_list("algorithms", ("RS256",))
        for i, alg in enumerate(algorithms):
            if alg not in PROVIDER_ALGORITHMS:
                s.findings.error(
                    join(p.at("algorithms"), i),
                    f"{alg!r} is not allowed; use one of {', '.join(PROVIDER_ALGORITHMS)}",
                )
        p.finish()
        if issuer in issuers:
            s.findings.error(p.at("issuer"), f"the same issuer is already provider {issuers[issuer]!r}")
        if issuer and kind and schema is not None:
            issuers[issuer] = name
            providers[name] = ProviderConfig(
                name=name,
                issuer=issuer,
                type=kind,
                jwks_uri=jwks_uri,
                ca_bundle=ca_bundle,
                algorithms=algorithms,
                schema=schema,
                audience=audience,
            )
    if s.valid and not providers and not s.findings.errors:
        s.findings.error(s.path, "at least one provider is required")
    return providers


def _schema(p: Section, kind: str | None) -> ClaimSchema | None:
    """The provider's claim schema: built in, declared (`oidc`), or built in plus declared."""
    present = "schema" in p
    declared = _declared(p.section("schema")) if present else None
    if kind is None:
        return None
    if present and kind not in DECLARABLE:
        p.findings.error(
            p.at("schema"),
            f"{kind}'s claim schema is built in (from its documentation); a schema section is "
            f"only for types {' and '.join(sorted(DECLARABLE))}",
        )
        return None
    if kind == "oidc":
        if not present:
            p.findings.error(
                p.at("schema"),
                "is required for type oidc: declare the claims its tokens carry "
                "(required, immutable, case_insensitive, user_controlled, claims)",
            )
            return None
        return oidc_schema(declared) if declared is not None else None
    base = SCHEMAS[kind]
    if declared is None:
        return None if present else base
    return extended_schema(base, declared)


def _declared(s: Section) -> Declared | None:
    """A `schema:` section; None (with findings) if anything in it is wrong."""
    errors_before = len(s.findings.errors)
    lists: dict[str, tuple[str, ...]] = {}
    for key in SCHEMA_LISTS:
        lists[key] = _claim_list(s, key)
    untrusted = _untrusted(s.section("untrusted")) if "untrusted" in s else None
    context = _context(s.section("context")) if "context" in s else None
    s.finish()
    both = sorted(set(lists["immutable"]) & set(lists["user_controlled"]))
    for claim in both:
        s.findings.error(
            s.at("user_controlled"),
            f"{claim!r} is also listed as immutable: a claim the job's author controls is not an identity",
        )
    for i, claim in enumerate(lists["tenant"]):
        if claim not in lists["immutable"]:
            s.findings.error(
                join(s.at("tenant"), i),
                f"{claim!r} must also be listed as immutable: a tenant is pinned by its immutable id",
            )
    if len(s.findings.errors) > errors_before:
        return None
    return Declared(
        required=frozenset(lists["required"]),
        immutable=frozenset(lists["immutable"]),
        case_insensitive=frozenset(lists["case_insensitive"]),
        user_controlled=frozenset(lists["user_controlled"]),
        claims=frozenset(lists["claims"]),
        tenant=lists["tenant"],
        untrusted=untrusted,
        context=context,
    )


def _claim_list(s: Section, key: str) -> tuple[str, ...]:
    """A list of claim names, each a valid path, none twice, none the verifier's own."""
    names = s.string_list(key)
    seen: set[str] = set()
    for i, name in enumerate(names):
        where = join(s.at(key), i)
        if name in seen:
            s.findings.error(where, f"names {name!r} twice")
        elif not CLAIM_PATH.fullmatch(name):
            s.findings.error(where, f"{name!r} is not a claim name (dot-separated parts, none empty)")
        elif name in FIXED_CLAIMS and not (key == "required" and name in REQUIRABLE):
            s.findings.error(where, f"{name!r} is checked by the verifier itself; leave it out")
        seen.add(name)
    return names


def _untrusted(s: Section) -> Untrusted | None:
    claim = s.string("claim", required=True)
    values = s.string_list("values", required=True)
    s.finish()
    if claim is not None and not CLAIM_PATH.fullmatch(claim):
        s.findings.error(s.at("claim"), f"{claim!r} is not a claim name")
        return None
    if claim is None or not values:
        return None
    return Untrusted(claim, frozenset(values), "jobs this schema marks untrusted")


def _context(s: Section) -> dict[str, str]:
    """Which claims carry the broker's neutral context (assertion, session names, rate limits)."""
    context: dict[str, str] = {}
    for name in NEUTRAL_NAMES:
        claim = s.string(name)
        if claim is not None and not CLAIM_PATH.fullmatch(claim):
            s.findings.error(s.at(name), f"{claim!r} is not a claim name")
        elif claim is not None:
            context[name] = claim
    s.finish()
    return context
