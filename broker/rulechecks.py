"""What makes an allow rule invalid rather than merely risky: the config loader refuses it, so
`ci-broker check` exits 2 and `ci-broker serve` does not start. (Risky rules that load are
`broker.lint`'s warnings.)

- **Tenant pinning.** Where one issuer signs for many tenants (every Buildkite organization, every
  HCP Terraform organization, ...), a rule that does not pin the tenant's immutable id to exact
  values matches jobs of every other tenant that happen to share the other claims: slugs, branch
  names and step keys are anyone's to choose.
- **User-controlled claims alone.** A rule whose every condition is on a claim the job's author
  chooses (branch, step key, actor) is satisfied by anyone who can push.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from broker.policy import Condition
    from broker.providers import ProviderConfig

EXACT_KINDS = ("exact", "any_of")


def allow_rule_problems(provider: ProviderConfig, conditions: Sequence[Condition]) -> list[str]:
    schema = provider.schema
    problems: list[str] = []
    if schema.tenant_claims and not any(
        c.claim in schema.tenant_claims and c.kind in EXACT_KINDS for c in conditions
    ):
        wanted = " or ".join(schema.tenant_claims)
        problems.append(
            f"does not pin the tenant: {provider.name}'s issuer signs for every {schema.tenant_label}, "
            f"so the rule must pin {wanted} to exact values, or a job of any other tenant with the "
            "same names would match"
        )
    if conditions and all(c.claim in schema.user_controlled for c in conditions):
        names = ", ".join(sorted(c.claim for c in conditions))
        problems.append(
            f"every condition is on a claim the job's author controls ({names}): anyone who can "
            "push could match it; pin an immutable id too"
        )
    return problems
