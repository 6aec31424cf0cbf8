"""Schemas written in the config file: `type: oidc` (any other issuer) declares its whole schema;
`type: jenkins` adds to its built-in one what the administrator's claim templates carry."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from broker.claims.schema import REGISTERED, ClaimSchema, Untrusted


@dataclass(frozen=True)
class Declared:
    """A provider's `schema:` section, read and checked by the config loader."""

    required: frozenset[str] = frozenset()
    immutable: frozenset[str] = frozenset()
    case_insensitive: frozenset[str] = frozenset()
    user_controlled: frozenset[str] = frozenset()
    claims: frozenset[str] = frozenset()  # further claims rules may name
    tenant: tuple[str, ...] = ()
    untrusted: Untrusted | None = None
    context: Mapping[str, str] | None = None  # neutral name -> claim

    @property
    def names(self) -> frozenset[str]:
        """Every claim the section names."""
        named = self.required | self.immutable | self.case_insensitive | self.user_controlled | self.claims
        named |= set(self.tenant) | set((self.context or {}).values())
        if self.untrusted is not None:
            named |= {self.untrusted.claim}
        return frozenset(named)


def oidc_schema(declared: Declared) -> ClaimSchema:
    """The schema of an `oidc` provider: only what the operator declared is known."""
    first_id = min(declared.immutable, default="sub")
    neutral = {"repository": "sub", "repository_id": first_id, **(declared.context or {})}
    return ClaimSchema(
        type="oidc",
        source="this provider's schema in the config file",
        required=frozenset({"sub"}) | declared.required,
        known=REGISTERED | declared.names,
        immutable_ids=declared.immutable,
        user_controlled=declared.user_controlled,
        untrusted=declared.untrusted,
        tenant_claims=declared.tenant,
        tenant_label="tenant of this issuer",
        neutral=neutral,
        audited=tuple(sorted(declared.names - REGISTERED)),
        case_insensitive=declared.case_insensitive,
        declared=True,
    )


def extended_schema(base: ClaimSchema, declared: Declared) -> ClaimSchema:
    """A built-in schema plus what the config declares (Jenkins' templated claims)."""
    return replace(
        base,
        source=f"{base.source}, and this provider's schema in the config file",
        required=base.required | declared.required,
        known=base.known | declared.names,
        immutable_ids=base.immutable_ids | declared.immutable,
        user_controlled=base.user_controlled | declared.user_controlled,
        untrusted=declared.untrusted or base.untrusted,
        tenant_claims=declared.tenant or base.tenant_claims,
        tenant_label=base.tenant_label or f"tenant of this {base.type} issuer",
        neutral={**base.neutral, **(declared.context or {})},
        audited=tuple(dict.fromkeys((*base.audited, *sorted(declared.names - REGISTERED - {"sub"})))),
        case_insensitive=base.case_insensitive | declared.case_insensitive,
    )
