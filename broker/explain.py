"""`ci-broker explain`: the policy decision for a claims set, rule by rule, with no token.

It asks `Config.decide`, the same question the exchange asks, with the full trace: the deny rules
that cover the role first (the one that fired, if any), then each allow rule's conditions.
"""

from __future__ import annotations

from typing import Any

from broker.config import Config, ProviderConfig, RoleConfig
from broker.policy import Decision, RuleResult

NOT_CHECKED = "(signature, issuer, audience, expiry and replay are not checked here)"


def resolve_provider(config: Config, claims: dict[str, Any], provider_name: str | None) -> ProviderConfig:
    """The named provider, or the one whose issuer equals the claims' `iss`; ValueError if none."""
    if provider_name is not None:
        provider = config.providers.get(provider_name)
        if provider is None:
            raise ValueError(f"unknown provider {provider_name!r}")
        return provider
    issuer = claims.get("iss")
    found = config.provider_for_issuer(issuer) if isinstance(issuer, str) else None
    if found is None:
        raise ValueError("no provider's issuer equals the claims' iss; pass --provider NAME")
    return found


def explain(
    config: Config, role_name: str, claims: dict[str, Any], provider_name: str | None
) -> tuple[str, bool]:
    provider = resolve_provider(config, claims, provider_name)
    role, decision = config.decide(role_name, provider, claims, trace=True)
    return "\n".join([*trace_lines(role, provider, decision), NOT_CHECKED]), decision.allowed


def trace_lines(role: RoleConfig | None, provider: ProviderConfig, decision: Decision) -> list[str]:
    """The decision and its reasons, one line each (also what `ci-broker test` prints on failure)."""
    if role is None:
        return [f"role {decision.role}: DENY (no such role; a caller sees the same 403 as a denial)"]
    if decision.allowed:
        verdict = f"ALLOW by rule {decision.matched_rule}"
    elif decision.denied_by is not None:
        verdict = f"DENY by deny[{decision.denied_by.index}]: {decision.denied_by.reason}"
    else:
        verdict = "DENY"
    lines = [f"role {role.name} ({role.cloud}), provider {provider.name}: {verdict}"]
    for result in decision.denies:
        lines += _result_lines(f"deny[{result.index}]", result, "fires" if result.held else "does not apply")
    for result in decision.rules:
        lines += _result_lines(f"rule {result.index}", result, "holds" if result.held else "fails")
    if decision.denied_by is not None:
        lines.append("  (allow rules not evaluated: a matching deny wins over every allow)")
    return lines


def _result_lines(label: str, result: RuleResult, verdict: str) -> list[str]:
    lines = [f"  {label} ({result.provider}): {verdict}"]
    lines += [f"    [{'ok' if ok else 'FAIL'}] {reason}" for ok, reason in result.reasons]
    return lines
