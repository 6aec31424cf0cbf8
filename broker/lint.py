"""Warnings about rules that load fine but are risky: what `ci-broker check` adds to validation.

Each finding names the rule's key path and what an attacker could do with the gap.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from broker.config import Config
from broker.policy import Rule
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
    if not pinned_ids:
        ids = " / ".join(sorted(schema.immutable_ids))
        out.append(
            f"binds no immutable id ({ids}) with an exact value: a renamed, deleted or "
            "recreated repository or namespace with the same name would match"
        )
    if all(c.claim in schema.user_controlled for c in rule.conditions):
        out.append(
            "every condition is on a claim the job's author controls "
            f"({', '.join(sorted(by_claim))}): anyone who can push could match it"
        )
    sub = by_claim.get("sub")
    if sub is not None and sub.kind in ("glob", "regex"):
        out.append(
            "a pattern on sub: sub packs several claims into one string, so a pattern can "
            "match more than intended; match the individual claims instead"
        )
    event = by_claim.get(schema.event_claim)
    untrusted = sorted(schema.untrusted_events)
    if event is None:
        out.append(
            f"no condition on {schema.event_claim}: reachable from {', '.join(untrusted)} "
            f"pipelines; pin {schema.event_claim} to the events that may deploy"
        )
    else:
        reachable = [e for e in untrusted if event.matches_text(e)]
        if reachable:
            out.append(
                f"{schema.event_claim} admits {', '.join(reachable)}: code from a pull or "
                "merge request could obtain these credentials"
            )
    for claim in sorted(by_claim):
        if claim not in schema.known:
            out.append(
                f"claim {claim!r} is not one {schema.type} tokens carry: the rule can never match (typo?)"
            )
    return out
