"""`ci-broker explain`: the policy decision for a claims set, rule by rule, with no token."""

from __future__ import annotations

from typing import Any

from broker.config import Config
from broker.policy import evaluate


def explain(
    config: Config, role_name: str, claims: dict[str, Any], provider_name: str | None
) -> tuple[str, bool]:
    if provider_name is None:
        provider = (
            config.provider_for_issuer(claims.get("iss", "")) if isinstance(claims.get("iss"), str) else None
        )
        if provider is None:
            raise ValueError("no provider's issuer equals the claims' iss; pass --provider NAME")
    else:
        provider = config.providers.get(provider_name)
        if provider is None:
            raise ValueError(f"unknown provider {provider_name!r}")
    role = config.roles.get(role_name)
    if role is None:
        return f"role {role_name}: DENY (no such role; a caller sees the same 403 as a denial)", False
    decision = evaluate(role_name, role.rules, provider.name, provider.schema, claims)
    lines = [
        f"role {role_name} ({role.cloud}), provider {provider.name}: "
        f"{'ALLOW by rule ' + str(decision.matched_rule) if decision.allowed else 'DENY'}"
    ]
    for result in decision.rules:
        lines.append(f"  rule {result.index} ({result.provider}): {'holds' if result.held else 'fails'}")
        for ok, reason in result.reasons:
            lines.append(f"    [{'ok' if ok else 'FAIL'}] {reason}")
    lines.append("(signature, issuer, audience, expiry and replay are not checked here)")
    return "\n".join(lines), decision.allowed
