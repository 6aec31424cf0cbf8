"""What `ci-broker check` learns from the automata (`broker.automata`): three findings.

- A regex that is not a regular language (backreferences, lookaround, ...) is an error: nothing,
  `ci-broker diff` included, could say exactly what it admits.
- A rule that can never hold is an error: a condition no value the provider sends can satisfy
  (after the schema's normalisation: `(?-i:Main)` on a lowercased claim), or two conditions that
  contradict each other through a relation between the provider's claims (GitHub's `repository`
  is `repository_owner/NAME`; a `tag` ref is under `refs/tags/`). An allow rule that never holds
  grants nothing; a deny rule that never holds protects nothing. Either is surely a mistake.
- A GitHub rule that matches `sub` only in its old form (`repo:OWNER/REPO:...`) is a warning:
  repositories created or renamed after 2026-07-15 carry the immutable form
  (`repo:OWNER@OWNER_ID/REPO@REPO_ID:...`), which the rule will not match.
"""

from __future__ import annotations

from collections.abc import Iterator

from greenery import Fsm

from broker.automata import Normaliser, NotRegular, both, but, pattern_language, strings_language
from broker.config import Config
from broker.policy import Rule
from broker.policydiff import DiffError, normalised_language, normaliser
from broker.schema import Finding

# (the claim, the claim it begins, what joins them): the second is always FIRST + "/" + one segment.
PREFIX_RELATIONS: dict[str, tuple[tuple[str, str], ...]] = {
    "github": (("repository_owner", "repository"),),
    "gitlab": (("namespace_path", "project_path"),),
}
# (claim, value, claim it constrains, the pattern that claim must then match).
IMPLIED: dict[str, tuple[tuple[str, str, str, str], ...]] = {
    "github": (("ref_type", "tag", "ref", "refs/tags/.+"),),
}
SUB_OLD_FORM = r"repo:[^@/:]+/[^@/:]+:.*"
SUB_NEW_FORM = r"repo:[^@/:]+@[0-9]+/[^@/:]+@[0-9]+:.*"
SUB_WARNING = (
    "matches sub only in its old form repo:OWNER/REPO:...; GitHub issues the immutable form "
    "repo:OWNER@OWNER_ID/REPO@REPO_ID:... for repositories created or renamed after 2026-07-15, "
    "and this rule will not match those: bind repository_id and repository_owner_id (or match "
    "the new form too)"
)


def policy_findings(config: Config) -> list[Finding]:
    findings: list[Finding] = []
    for path, rule in _rules(config):
        findings += _rule_findings(config, path, rule)
    return findings


def _rules(config: Config) -> Iterator[tuple[str, Rule]]:
    for role in config.roles.values():
        for rule in role.rules:
            yield f"roles.{role.name}.allow[{rule.index}]", rule
    for deny in config.deny:
        yield f"deny[{deny.index}]", deny


def _rule_findings(config: Config, path: str, rule: Rule) -> list[Finding]:
    schema = config.providers[rule.provider].schema
    kind = "deny rule" if path.startswith("deny") else "rule"
    findings: list[Finding] = []
    languages: dict[str, tuple[Normaliser, Fsm]] = {}
    related = _related_claims(schema.type, {c.claim for c in rule.conditions})
    for condition in rule.conditions:
        if condition.kind != "regex" and condition.claim not in related:
            # An exact value, a list or a glob is compiled from its normalised text, and that text
            # is a claim value it admits: never empty, and regular by construction. Its automaton
            # is only needed beside a related claim's (seconds for thousands of rules otherwise).
            continue
        where = f"{path}.claims.{condition.claim}"
        try:
            norm = normaliser(schema, condition.claim)
            language = normalised_language(norm, condition)
        except NotRegular as exc:
            findings.append(
                Finding(
                    "error",
                    where,
                    f"{condition.describe()} {exc}: refused, since no one (ci-broker diff included) "
                    "could say exactly what it admits",
                )
            )
            continue
        except DiffError as exc:
            findings.append(Finding("warning", where, str(exc)))
            continue
        languages[condition.claim] = (norm, language)
        if language.empty():
            findings.append(
                Finding(
                    "error",
                    where,
                    f"no value a {schema.type} token can carry matches {condition.describe()} "
                    f"(after normalising{' to lowercase' if norm.kind != 'none' else ''}): "
                    f"the {kind} can never hold",
                )
            )
        if schema.type == "github" and condition.claim == "sub":
            findings += _sub_form(where, norm, language)
    findings += _contradictions(path, kind, schema.type, rule, languages)
    return findings


def _related_claims(provider_type: str, named: set[str]) -> frozenset[str]:
    """The claims of this rule whose conditions the relations below compare (both claims of a
    relation named by the rule), and sub on GitHub (its form)."""
    pairs = [*PREFIX_RELATIONS.get(provider_type, ())]
    pairs += [(claim, implied) for claim, _, implied, _ in IMPLIED.get(provider_type, ())]
    names = {name for pair in pairs if set(pair) <= named for name in pair}
    if provider_type == "github":
        names.add("sub")
    return frozenset(names)


def _sub_form(where: str, norm: Normaliser, language: Fsm) -> list[Finding]:
    old = norm.language(pattern_language(SUB_OLD_FORM))
    new = norm.language(pattern_language(SUB_NEW_FORM))
    if not both(language, old).empty() and both(language, new).empty():
        return [Finding("warning", where, SUB_WARNING)]
    return []


def _contradictions(
    path: str, kind: str, provider_type: str, rule: Rule, languages: dict[str, tuple[Normaliser, Fsm]]
) -> list[Finding]:
    out: list[Finding] = []
    for first, full in PREFIX_RELATIONS.get(provider_type, ()):
        if first in languages and full in languages and languages[first][0] == languages[full][0]:
            norm, owner = languages[first]
            joined = Fsm.concatenate(owner, norm.language(pattern_language("/[^/]+")))
            if both(joined, languages[full][1]).empty():
                out.append(
                    Finding(
                        "error",
                        path,
                        f"{full} is always {first}/NAME, and no {full} this {kind} admits starts "
                        f"with a {first} it admits: the {kind} can never hold",
                    )
                )
    for claim, value, implied, pattern in IMPLIED.get(provider_type, ()):
        if claim in languages and implied in languages:
            norm, language = languages[claim]
            only_value = norm.language(strings_language((value,)))
            if not language.empty() and but(language, only_value).empty():
                allowed = languages[implied][0].language(pattern_language(pattern))
                if both(allowed, languages[implied][1]).empty():
                    out.append(
                        Finding(
                            "error",
                            path,
                            f"{claim} {value} means {implied} matches {pattern!r}, and no {implied} "
                            f"this {kind} admits does: the {kind} can never hold",
                        )
                    )
    return out
