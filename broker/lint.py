"""Warnings about rules that load fine but are risky: what `ci-broker check` adds to validation.

Each finding names the rule's key path and what an attacker could do with the gap.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from broker.claims import Untrusted
from broker.config import Config
from broker.policy import Condition, Rule
from broker.policylint import policy_findings
from broker.schema import Finding


def lint(config: Config) -> list[Finding]:
    findings: list[Finding] = list(config.warnings)
    issuer = urlsplit(config.server.issuer)
    if issuer.scheme == "https" and issuer.port is not None:
        findings.append(
            Finding(
                "warning",
                "server.issuer",
                "has a port: AWS IAM OIDC providers only "
                "accept issuer URLs without one, so AWS roles could not trust it",
            )
        )
    for role in config.roles.values():
        for rule in role.rules:
            path = f"roles.{role.name}.allow[{rule.index}]"
            findings.extend(Finding("warning", path, m) for m in rule_warnings(config, rule))
    # Non-regular regexes, rules that can never hold, and sub in its old form (the automata's).
    findings.extend(policy_findings(config))
    return findings


def rule_warnings(config: Config, rule: Rule) -> list[str]:
    schema = config.providers[rule.provider].schema
    by_claim = {c.claim: c for c in rule.conditions}
    out: list[str] = []

    pinned_ids = [
        c for c in rule.conditions if c.claim in schema.immutable_ids and c.kind in ("exact", "any_of")
    ]
    # A schema with no immutable id (Jenkins' defaults) has nothing to bind: no warning to act on.
    if schema.immutable_ids and not pinned_ids:
        ids = " / ".join(sorted(schema.immutable_ids))
        out.append(
            f"binds no immutable id ({ids}) with an exact value: a renamed, deleted or recreated "
            "repository, project or pipeline with the same name would match"
        )
    sub = by_claim.get("sub")
    if sub is not None and sub.kind in ("glob", "regex"):
        out.append(
            "a pattern on sub: sub packs several claims into one string, so a pattern can "
            "match more than intended; match the individual claims instead"
        )
    if schema.untrusted is not None:
        out.extend(_untrusted_warnings(schema.untrusted, by_claim.get(schema.untrusted.claim)))
    for claim in sorted(by_claim):
        if not schema.knows(claim):
            out.append(
                f"claim {claim!r} is not one {schema.type} tokens carry: the rule can never match (typo?)"
            )
    return out


def _untrusted_warnings(untrusted: Untrusted, condition: Condition | None) -> list[str]:
    samples = sorted(untrusted.samples)
    if condition is None:
        return [
            f"no condition on {untrusted.claim}: reachable from {', '.join(samples)} ({untrusted.why}); "
            f"pin {untrusted.claim} to the values that may deploy"
        ]
    reachable = [v for v in samples if condition.matches_text(v)]
    if reachable:
        return [
            f"{untrusted.claim} admits {', '.join(reachable)}: {untrusted.why} could obtain these credentials"
        ]
    return []
