"""Role policy: conditions compiled once at load, evaluated per request with a full trace.

A role grants when any of its rules holds; a rule holds when every one of its conditions holds.
A rule with no conditions cannot be built (the loader refuses it), so "allow everything" is never
the result of an empty or mistyped rule. Each evaluation returns the reason every condition held
or failed, for `ci-broker explain` and the operator's audit log; the caller learns only allow/deny.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from broker.claims import ABSENT, CLAIM_PATH, ClaimSchema, claim_text, resolve


def glob_to_regex(pattern: str) -> str:
    """`*` is any run of characters other than `/` and `:`; `**` is anything; the rest is literal.

    `**` is split off first, left to right, so `***` is `**` then `*`. Escaping whole literal runs
    instead of one character at a time gives the same regex (re.escape maps each character on its
    own) at a fifth of the cost, which a config of thousands of globs pays at every load.
    """
    return ".*".join("[^/:]*".join(map(re.escape, part.split("*"))) for part in pattern.split("**"))


@functools.lru_cache(maxsize=16384)
def compile_pattern(pattern: str, flags: int = 0) -> re.Pattern[str]:
    """re.compile, once per distinct (pattern, flags): large configs repeat a glob across many roles
    (one workflow for every environment), more distinct patterns than re's own cache of 512 holds.
    Compiled patterns are immutable, so sharing one between conditions is safe."""
    return re.compile(pattern, flags)


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
        value = claims.get(self.claim, ABSENT)
        if value is ABSENT and "." in self.claim:  # a nested claim's path
            value = resolve(claims, self.claim)
        if isinstance(value, list) and self.claim in schema.list_claims:
            return any(self._holds_for(item, schema) for item in value)
        return self._holds_for(value, schema)

    def _holds_for(self, value: Any, schema: ClaimSchema) -> bool:
        # ABSENT, null, objects and lists have no text: they never match.
        text = claim_text(value)
        return text is not None and self.matches_text(schema.normalize(self.claim, text))

    def check(self, claims: Mapping[str, Any], schema: ClaimSchema) -> tuple[bool, str]:
        value = resolve(claims, self.claim)
        if value is ABSENT:
            return False, f"{self.claim}: absent from the token (wanted {self.describe()})"
        if value is None:
            return False, f"{self.claim}: is null, which matches no condition (wanted {self.describe()})"
        if isinstance(value, list) and self.claim in schema.list_claims:
            ok = any(self._holds_for(item, schema) for item in value)
            shown = [claim_text(item) for item in value[:10]]
            verb = "has an element that" if ok else "has no element that"
            return ok, f"{self.claim}: {shown!r} {verb} matches {self.describe()}"
        text = claim_text(value)
        if text is None:
            return False, f"{self.claim}: is not a string, number or boolean"
        text = schema.normalize(self.claim, text)
        if self.matches_text(text):
            return True, f"{self.claim}: {text!r} {self.describe()}"
        return False, f"{self.claim}: {text!r} does not match {self.describe()}"


def compile_condition(claim: str, raw: Any, schema: ClaimSchema) -> Condition:
    """Build a condition from its config form; raises ValueError with the reason."""
    if not CLAIM_PATH.fullmatch(claim):
        raise ValueError(
            f"{claim!r} is not a claim name: dot-separated parts, none empty, no spaces "
            "(a nested claim is its path, e.g. kubernetes.io.namespace)"
        )
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
            return Condition(claim, "glob", (pattern,), compile_pattern(glob_to_regex(source), flags))
        try:
            # Matched with fullmatch, so every alternative of `a|b` is anchored at both ends
            # (unlike `^a|b$`, the mistake anchoring by hand invites).
            compiled = compile_pattern(pattern, flags)
        except re.error as exc:
            raise ValueError(f"invalid regex: {exc}") from None
        return Condition(claim, "regex", (pattern,), compiled)
    if isinstance(raw, (bool, int, float)):
        raise ValueError(f'must be a string; quote it: "{claim_text(raw) or raw}"')
    raise ValueError("must be a string, a list of strings, {glob: PATTERN} or {regex: PATTERN}")


@dataclass(frozen=True)
class Rule:
    """An `allow` rule of a role: it grants when every one of its conditions holds."""

    index: int
    provider: str
    conditions: tuple[Condition, ...]

    def holds(self, provider: str, claims: Mapping[str, Any], schema: ClaimSchema) -> bool:
        return (
            self.provider == provider
            and bool(self.conditions)
            and all(c.holds(claims, schema) for c in self.conditions)
        )

    def trace(self, provider: str, claims: Mapping[str, Any], schema: ClaimSchema) -> RuleResult:
        if self.provider != provider:
            reason = f"rule is for provider {self.provider!r}, token is from {provider!r}"
            return RuleResult(self.index, self.provider, False, ((False, reason),))
        reasons = tuple(c.check(claims, schema) for c in self.conditions)
        return RuleResult(self.index, self.provider, bool(reasons) and all(ok for ok, _ in reasons), reasons)


@dataclass(frozen=True)
class DenyRule(Rule):
    """A top-level `deny` rule: when it holds for a role it covers, no allow rule can grant.

    `roles` are names or globs (`*` any run of characters); empty means every role.
    """

    roles: tuple[str, ...] = ()
    reason: str = ""
    role_patterns: tuple[re.Pattern[str], ...] = ()

    def covers(self, role: str) -> bool:
        return not self.role_patterns or any(p.fullmatch(role) for p in self.role_patterns)


def compile_role_pattern(pattern: str) -> re.Pattern[str]:
    """A `roles` entry of a deny rule: role names hold no '/' or ':', so a glob's `*` spans them."""
    return compile_pattern(glob_to_regex(pattern))


@dataclass(frozen=True)
class RuleResult:
    index: int
    provider: str
    held: bool
    reasons: tuple[tuple[bool, str], ...]


@dataclass(frozen=True)
class Decision:
    """What the policy decided for one role and one claims set, and why.

    `denied_by` is the index of the top-level deny rule that fired, if one did; `rules` holds each
    allow rule's result when traced, `denies` each covering deny rule's.
    """

    role: str
    allowed: bool
    matched_rule: int | None
    rules: tuple[RuleResult, ...]
    known_role: bool = True
    denied_by: DenyRule | None = None
    denies: tuple[RuleResult, ...] = field(default=())

    def summary(self) -> str:
        """A one-line reason for the audit log: the matched rule, or why the closest rule failed."""
        if self.allowed:
            return f"rule {self.matched_rule} matched"
        if not self.known_role:
            return "no such role"
        if self.denied_by is not None:
            return f"deny[{self.denied_by.index}] matched: {self.denied_by.reason}"
        if not self.rules:
            return "no rule matched"
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
    denies: tuple[DenyRule, ...] = (),
    trace: bool = True,
) -> Decision:
    """Deny rules first, then allow rules: the decision, with every rule's reasons (`trace`).

    Without `trace` a decision carries only what its summary needs: a grant the matched rule, a
    deny the deny rule that fired. A refusal by the allow rules always carries the full trace,
    for the audit log. `denies` must already be the deny rules that cover `role`.
    """
    deny_results: list[RuleResult] = []
    for deny in denies:
        if not trace:
            if deny.holds(provider, claims, schema):
                return Decision(role, False, None, (), denied_by=deny)
            continue
        result = deny.trace(provider, claims, schema)
        deny_results.append(result)
        if result.held:
            return Decision(role, False, None, (), denied_by=deny, denies=tuple(deny_results))
    if not trace:
        for rule in rules:
            if rule.holds(provider, claims, schema):
                return Decision(role, True, rule.index, ())
    results = tuple(rule.trace(provider, claims, schema) for rule in rules)
    matched = next((r.index for r in results if r.held), None)
    return Decision(role, matched is not None, matched, results, denies=tuple(deny_results))


def unknown_role(role: str) -> Decision:
    """The decision for a role the config does not define: a denial like any other to the caller."""
    return Decision(role, False, None, (), known_role=False)
