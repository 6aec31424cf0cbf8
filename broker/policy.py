"""Role policy: conditions compiled once at load, evaluated per request with a full trace.

A role grants when any of its rules holds; a rule holds when every one of its conditions holds.
A rule with no conditions cannot be built (the loader refuses it), so "allow everything" is never
the result of an empty or mistyped rule. Each evaluation returns the reason every condition held
or failed, for `ci-broker explain` and the operator's audit log; the caller learns only allow/deny.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from broker.claims import ClaimSchema, claim_text


def glob_to_regex(pattern: str) -> str:
    """`*` is any run of characters other than `/` and `:`; `**` is anything; the rest is literal."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/:]*")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "".join(out)


@dataclass(frozen=True)
class Condition:
    """One claim's test. `kind` is exact | any_of | glob | regex."""

    claim: str
    kind: str
    values: tuple[str, ...]  # exact / any_of: normalised values; glob / regex: the source pattern
    compiled: re.Pattern[str] | None = None

    def describe(self) -> str:
        if self.kind == "exact":
            return f"== {self.values[0]!r}"
        if self.kind == "any_of":
            return f"in {list(self.values)!r}"
        return f"{self.kind} {self.values[0]!r}"

    def matches_text(self, text: str) -> bool:
        if self.compiled is not None:
            return self.compiled.fullmatch(text) is not None
        return text in self.values

    def holds(self, claims: Mapping[str, Any], schema: ClaimSchema) -> bool:
        """`check` without its reason: what a granted exchange needs."""
        if self.claim not in claims:
            return False
        text = claim_text(claims[self.claim])
        return text is not None and self.matches_text(schema.normalize(self.claim, text))

    def check(self, claims: Mapping[str, Any], schema: ClaimSchema) -> tuple[bool, str]:
        if self.claim not in claims:
            return False, f"{self.claim}: absent from the token (wanted {self.describe()})"
        text = claim_text(claims[self.claim])
        if text is None:
            return False, f"{self.claim}: is not a string, number or boolean"
        text = schema.normalize(self.claim, text)
        if self.matches_text(text):
            return True, f"{self.claim}: {text!r} {self.describe()}"
        return False, f"{self.claim}: {text!r} does not match {self.describe()}"


def compile_condition(claim: str, raw: Any, schema: ClaimSchema) -> Condition:
    """Build a condition from its config form; raises ValueError with the reason."""
    if isinstance(raw, str):
        return Condition(claim, "exact", (schema.normalize(claim, raw),))
    if isinstance(raw, list):
        if not raw or not all(isinstance(v, str) and v for v in raw):
            raise ValueError("a list condition must be a non-empty list of strings (quote numbers)")
        return Condition(claim, "any_of", tuple(schema.normalize(claim, v) for v in raw))
    if isinstance(raw, dict) and len(raw) == 1:
        ((kind, pattern),) = raw.items()
        if kind not in ("glob", "regex"):
            raise ValueError(f"unknown condition form {kind!r}; use glob or regex")
        if not isinstance(pattern, str) or not pattern:
            raise ValueError(f"{kind} needs a non-empty string pattern")
        flags = re.IGNORECASE if claim in schema.case_insensitive else 0
        if kind == "glob":
            source = schema.normalize(claim, pattern)
            return Condition(claim, "glob", (pattern,), re.compile(glob_to_regex(source), flags))
        try:
            # Matched with fullmatch, so every alternative of `a|b` is anchored at both ends
            # (unlike `^a|b$`, the mistake anchoring by hand invites).
            compiled = re.compile(pattern, flags)
        except re.error as exc:
            raise ValueError(f"invalid regex: {exc}") from None
        return Condition(claim, "regex", (pattern,), compiled)
    if isinstance(raw, (bool, int, float)):
        raise ValueError(f'must be a string; quote it: "{claim_text(raw) or raw}"')
    raise ValueError("must be a string, a list of strings, {glob: PATTERN} or {regex: PATTERN}")


@dataclass(frozen=True)
class Rule:
    index: int
    provider: str
    conditions: tuple[Condition, ...]


@dataclass(frozen=True)
class RuleResult:
    index: int
    provider: str
    held: bool
    reasons: tuple[tuple[bool, str], ...]


@dataclass(frozen=True)
class Decision:
    role: str
    allowed: bool
    matched_rule: int | None
    rules: tuple[RuleResult, ...]

    def summary(self) -> str:
        """A one-line reason for the audit log: the matched rule, or why the closest rule failed."""
        if self.allowed:
            return f"rule {self.matched_rule} matched"
        if not self.rules:
            return "no such role"
        failures = [
            f"rule {r.index}: " + "; ".join(reason for ok, reason in r.reasons if not ok) for r in self.rules
        ]
        return " | ".join(failures)


def evaluate(
    role: str,
    rules: tuple[Rule, ...],
    provider: str,
    schema: ClaimSchema,
    claims: Mapping[str, Any],
    *,
    trace: bool = True,
) -> Decision:
    """The decision, with every rule's reasons (`trace`), or for a grant only the matched rule.

    Without `trace` a token that some rule grants gets a decision with no rule results (its
    summary needs none); a refusal always carries the full trace, for the audit log.
    """
    if not trace:
        for rule in rules:
            if (
                rule.provider == provider
                and rule.conditions
                and all(c.holds(claims, schema) for c in rule.conditions)
            ):
                return Decision(role, True, rule.index, ())
    results: list[RuleResult] = []
    matched: int | None = None
    for rule in rules:
        if rule.provider != provider:
            results.append(
                RuleResult(
                    rule.index,
                    rule.provider,
                    False,
                    ((False, f"rule is for provider {rule.provider!r}, token is from {provider!r}"),),
                )
            )
            continue
        reasons = tuple(c.check(claims, schema) for c in rule.conditions)
        held = bool(reasons) and all(ok for ok, _ in reasons)
        results.append(RuleResult(rule.index, rule.provider, held, reasons))
        if held and matched is None:
            matched = rule.index
    return Decision(role, matched is not None, matched, tuple(results))
