"""`ci-broker diff`: exactly which identities gain or lose each role between two configs.

An identity is a token: its issuer and its claims. Per claim, a rule admits a set of texts (a
regular language, `broker.automata`) and requires the claim to be present; a claim it does not
name is unconstrained (present with any value, or absent). So a rule is a box: the product of its
conditions, for one issuer. A role is the union of its rule boxes minus the boxes of the deny
rules that cover it; `gained` is NEW's role minus OLD's, `lost` the reverse. Boxes are subtracted
exactly (`_box_minus` splits the difference into disjoint boxes), so each reported difference is
a box too: a set of conditions a reader can check, with an example claims set picked from it and
confirmed through `Config.decide` on both configs before it is reported.

Claims compare after the provider's normalisation (lowercase names, workflow refs): where both
configs normalise a claim alike, languages are over normalised texts (what the reader wrote);
where they differ (a provider whose type changed), over raw texts, through preimages.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from greenery import Fsm

from broker.automata import (
    ANYTHING,
    Normaliser,
    NotRegular,
    all_texts,
    both,
    but,
    example,
    meets,
    pattern_language,
    strings_language,
    within,
)
from broker.claims import ClaimSchema, claim_text, resolve
from broker.config import Config, ProviderConfig
from broker.policy import Condition, Rule

# Texts on which a schema's normalisation must agree with the model before diff trusts it.
_PROBES = ("Octo-Org/Repo/.github/x.yml@refs/heads/Main", "ABC", "a/B", "ΑΣ Σ", "İstanbul/ǅ/K", "plain")
_FINITE_SHOWN = 8


class DiffError(Exception):
    """The diff cannot be decided exactly (or an example failed to confirm): exit 2, never guess."""


# -- per-claim sets --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Term:
    """One conjunct shown to the reader: a condition (`form`, admitting `lang` and requiring the
    claim) or the negation of a conjunction of terms (admitting absence when that requires it)."""

    form: Any = None
    lang: Fsm | None = field(default=None, compare=False)
    negated: tuple[Term, ...] = ()

    @property
    def positive(self) -> bool:
        return not self.negated

    def meaning(self, space: Space) -> ClaimSet:
        if self.positive:
            assert self.lang is not None
            return ClaimSet(self.lang, False)
        inner = _meaning(space, self.negated)
        return ClaimSet(but(space.universe, inner.lang), not inner.absent)


@dataclass(frozen=True)
class ClaimSet:
    """The values one claim may take: texts in `lang`, or absence (and non-text values) if `absent`."""

    lang: Fsm
    absent: bool
    terms: tuple[Term, ...] = ()

    def is_empty(self) -> bool:
        return not self.absent and self.lang.empty()

    def within(self, other: ClaimSet) -> bool:
        return (not self.absent or other.absent) and within(self.lang, other.lang)

    def meets(self, other: ClaimSet) -> bool:
        return (self.absent and other.absent) or meets(self.lang, other.lang)

    def admits(self, present: bool, spelled: str | None) -> bool:
        if not present:
            return self.absent
        return spelled is not None and self.lang.accepts(spelled)


def _and(a: ClaimSet, b: ClaimSet) -> ClaimSet:
    return ClaimSet(both(a.lang, b.lang), a.absent and b.absent, a.terms + b.terms)


def _minus(a: ClaimSet, b: ClaimSet) -> ClaimSet:
    if len(b.terms) == 1 and not b.terms[0].positive:
        excluded = b.terms[0].negated  # not (not X) is X
    else:
        excluded = (Term(negated=b.terms),)
    return ClaimSet(but(a.lang, b.lang), a.absent and not b.absent, a.terms + excluded)


# -- the claim spaces --------------------------------------------------------------------------------


def normaliser(schema: ClaimSchema, claim: str) -> Normaliser:
    """The schema's normalisation of `claim`, from its data; DiffError if the schema does
    something else (a provider type this module does not model yet)."""
    if claim in getattr(schema, "case_insensitive", ()):
        model = Normaliser("lower")
    elif claim in getattr(schema, "repo_prefixed", ()):
        model = Normaliser("repo")
    else:
        model = Normaliser("none")
    for probe in _PROBES:
        if schema.normalize(claim, probe) != model.apply(probe):
            raise DiffError(
                f"provider type {schema.type!r} normalises claim {claim!r} in a way diff does not model; "
                "it cannot decide rules on it"
            )
    return model


@dataclass
class Space:
    """How one claim of one issuer is compared across OLD and NEW."""

    old: Normaliser | None
    new: Normaliser | None

    @property
    def shared(self) -> Normaliser | None:
        """The one normalisation both sides apply, or None when they differ (raw texts then)."""
        sides = {n for n in (self.old, self.new) if n is not None}
        return sides.pop() if len(sides) == 1 else None

    @functools.cached_property
    def universe(self) -> Fsm:
        shared = self.shared
        return shared.universe if shared is not None else ANYTHING

    def side(self, side: str) -> Normaliser:
        norm = self.old if side == "old" else self.new
        assert norm is not None, "a rule's own config has its provider"
        return norm

    def language(self, condition: Condition, side: str) -> Fsm:
        """A condition's language (over texts its side normalised) in this space."""
        shared = self.shared
        if shared is not None:
            return _spelled(shared.kind, False, _key(condition))
        return _spelled(self.side(side).kind, True, _key(condition))

    def key(self, text: str) -> str | None:
        """A raw claim text as the languages of this space spell it (None: outside them all)."""
        shared = self.shared
        return shared.encode(shared.apply(text)) if shared is not None else text

    def text(self, spelled: str) -> str:
        """A text of this space's languages as a claim value."""
        shared = self.shared
        return shared.decode(spelled) if shared is not None else spelled

    def everything(self) -> ClaimSet:
        return ClaimSet(self.universe, True)


# -- boxes -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Box:
    issuer: str
    claims: Mapping[str, ClaimSet]

    def is_empty(self) -> bool:
        return any(c.is_empty() for c in self.claims.values())


@dataclass
class Universe:
    """Both configs and the claim spaces of every issuer and claim they mention."""

    old: Config
    new: Config
    spaces: dict[tuple[str, str], Space] = field(default_factory=dict)

    def space(self, issuer: str, claim: str) -> Space:
        key = (issuer, claim)
        if key not in self.spaces:
            sides = []
            for config in (self.old, self.new):
                provider = config.provider_for_issuer(issuer)
                sides.append(normaliser(provider.schema, claim) if provider is not None else None)
            self.spaces[key] = Space(*sides)
        return self.spaces[key]

    def full(self, issuer: str, claim: str) -> ClaimSet:
        return self.space(issuer, claim).everything()


def condition_form(condition: Condition) -> Any:
    """A condition as the config spells it."""
    if condition.kind == "exact":
        return condition.values[0]
    if condition.kind == "any_of":
        return list(condition.values)
    return {condition.kind: condition.values[0]}


def condition_language(condition: Condition) -> Fsm:
    """The normalised texts a condition accepts."""
    return _language(_key(condition))


ConditionKey = tuple[str, tuple[str, ...], str | None, int]


def _key(condition: Condition) -> ConditionKey:
    compiled = condition.compiled
    return (
        condition.kind,
        condition.values,
        compiled.pattern if compiled is not None else None,
        compiled.flags if compiled is not None else 0,
    )


def _language(key: ConditionKey) -> Fsm:
    kind, values, pattern, flags = key
    if kind in ("exact", "any_of"):
        return _strings(values)
    if kind in ("glob", "regex") and pattern is not None:
        return pattern_language(pattern, flags)
    raise NotRegular(f"is a {kind!r} condition, which diff does not know")


@functools.lru_cache(maxsize=8192)
def _strings(values: tuple[str, ...]) -> Fsm:
    return strings_language(values)


def normalised_language(norm: Normaliser, condition: Condition) -> Fsm:
    """A condition's language over the encoded texts of a claim `norm` normalises."""
    return _spelled(norm.kind, False, _key(condition))


@functools.lru_cache(maxsize=8192)
def _spelled(normalisation: str, preimage: bool, key: ConditionKey) -> Fsm:
    """A condition's language in a claim space (cached: configs repeat their conditions)."""
    norm = Normaliser(normalisation)
    return norm.preimage(_language(key)) if preimage else norm.language(_language(key))


def rule_box(universe: Universe, side: str, config: Config, rule: Rule, where: str) -> Box | None:
    """A rule as a box (None when it admits nothing, e.g. an `iss` condition its issuer fails)."""
    issuer = config.providers[rule.provider].issuer
    claims: dict[str, ClaimSet] = {}
    for condition in rule.conditions:
        space = universe.space(issuer, condition.claim)
        try:
            if condition.claim == "iss":
                # Every token of this provider carries exactly its issuer: the condition holds or not.
                if not condition_language(condition).accepts(space.side(side).apply(issuer)):
                    return None
                continue
            lang = space.language(condition, side)
        except NotRegular as exc:
            raise DiffError(
                f"{config.file}: {where}.claims.{condition.claim}: {condition.describe()} {exc}; "
                "diff cannot decide this rule"
            ) from None
        claims[condition.claim] = ClaimSet(lang, False, (Term(condition_form(condition), lang),))
    box = Box(issuer, claims)
    return None if box.is_empty() else box


def _disjoint(universe: Universe, s: Box, t: Box) -> bool:
    return s.issuer != t.issuer or any(not s.claims[c].meets(t.claims[c]) for c in t.claims if c in s.claims)


def _within(universe: Universe, s: Box, t: Box) -> bool:
    return all(s.claims.get(c, universe.full(t.issuer, c)).within(t.claims[c]) for c in t.claims)


def _box_minus(universe: Universe, s: Box, t: Box) -> list[Box]:
    """s minus t as disjoint boxes: for each claim t constrains (in order), the part of s that
    agrees with t on the claims before it and falls outside t on this one."""
    if _disjoint(universe, s, t):
        return [s]
    if _within(universe, s, t):
        return []
    out: list[Box] = []
    prefix = dict(s.claims)
    for claim in sorted(t.claims):
        mine = prefix.get(claim, universe.full(s.issuer, claim))
        outside = _minus(mine, t.claims[claim])
        if not outside.is_empty():
            out.append(Box(s.issuer, {**prefix, claim: outside}))
        prefix[claim] = _and(mine, t.claims[claim])
        if prefix[claim].is_empty():
            break
    return out


def subtract(universe: Universe, boxes: Iterable[Box], minus: Iterable[Box]) -> list[Box]:
    result = list(boxes)
    for t in minus:
        result = [piece for s in result for piece in _box_minus(universe, s, t)]
    return result


# -- roles ------------------------------------------------------------------------------------------


def role_boxes(universe: Universe, side: str, config: Config, name: str) -> list[Box]:
    """What a role grants in one config, as disjoint-from-denies boxes; [] for no such role."""
    role = config.roles.get(name)
    if role is None:
        return []
    allow = [
        box
        for rule in role.rules
        if (box := rule_box(universe, side, config, rule, f"roles.{name}.allow[{rule.index}]")) is not None
    ]
    for rule in role.denies:
        _refuse_list_claims(config, rule, f"deny[{rule.index}]")
    deny = [
        box
        for rule in role.denies
        if (box := rule_box(universe, side, config, rule, f"deny[{rule.index}]")) is not None
    ]
    return subtract(universe, allow, deny)


def _refuse_list_claims(config: Config, rule: Rule, where: str) -> None:
    """A deny rule on a list claim (CircleCI's context_ids) is beyond the box model.

    A token whose list holds several values matches a condition when one value does, so an allow
    rule can hold by one value while a deny rule holds by another: what such a token is granted is
    not decided by single values. Without deny rules on the list it is (a role's rules are a union,
    so a token is granted exactly when one of its values alone would be), and the diff is exact
    over single values.
    """
    schema = config.providers[rule.provider].schema
    for condition in rule.conditions:
        if condition.claim in schema.list_claims:
            raise DiffError(
                f"{config.file}: {where}.claims.{condition.claim}: a deny rule on a list claim; "
                "a token listing several values can match an allow rule by one and this rule by "
                "another, which diff does not model: diff cannot decide this rule"
            )


@dataclass(frozen=True)
class Difference:
    """A set of identities one config grants a role and the other does not."""

    provider: str
    issuer: str
    box: Box = field(repr=False, compare=False)
    conditions: dict[str, Any]
    example: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"provider": self.provider, "conditions": self.conditions, "example": self.example}


@dataclass(frozen=True)
class RoleDiff:
    name: str
    in_old: bool
    in_new: bool
    gained: tuple[Difference, ...]
    lost: tuple[Difference, ...]

    @property
    def changed(self) -> bool:
        return bool(self.gained or self.lost)


@dataclass(frozen=True)
class PolicyDiff:
    old_file: str
    new_file: str
    roles: dict[str, RoleDiff]
    universe: Universe = field(repr=False, compare=False)

    @property
    def gained_anything(self) -> bool:
        return any(r.gained for r in self.roles.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "roles": {
                name: {"gained": [d.to_json() for d in r.gained], "lost": [d.to_json() for d in r.lost]}
                for name, r in self.roles.items()
            }
        }

    def covers(self, role: str, issuer: str, claims: Mapping[str, Any], direction: str) -> bool:
        """Whether `claims` from `issuer` fall in a reported gained (or lost) set of `role`."""
        differences = getattr(self.roles[role], direction) if role in self.roles else ()
        return any(_box_admits(self.universe, d.box, issuer, claims) for d in differences)


def _box_admits(universe: Universe, box: Box, issuer: str, claims: Mapping[str, Any]) -> bool:
    if box.issuer != issuer:
        return False
    for claim, allowed in box.claims.items():
        text = claim_text(resolve(claims, claim))
        spelled = None if text is None else universe.space(issuer, claim).key(text)
        if not allowed.admits(text is not None, spelled):
            return False
    return True


def diff_configs(old: Config, new: Config) -> PolicyDiff:
    """Every role's gained and lost identities, each with a confirmed example; DiffError if a rule
    cannot be decided exactly."""
    universe = Universe(old, new)
    roles: dict[str, RoleDiff] = {}
    for name in sorted(set(old.roles) | set(new.roles)):
        if _unchanged(old, new, name):
            roles[name] = RoleDiff(name, True, True, (), ())
            continue
        before = role_boxes(universe, "old", old, name)
        after = role_boxes(universe, "new", new, name)
        gained = [_difference(universe, name, box, "gained") for box in subtract(universe, after, before)]
        lost = [_difference(universe, name, box, "lost") for box in subtract(universe, before, after)]
        roles[name] = RoleDiff(name, name in old.roles, name in new.roles, tuple(gained), tuple(lost))
    return PolicyDiff(old.file, new.file, roles, universe)


def _unchanged(old: Config, new: Config, name: str) -> bool:
    """Whether both configs decide `name` alike for every token without computing it: the same
    allow and covering deny rules (conditions compare by kind, values, pattern and flags), on
    providers configured the same (issuer, type, claim schema). A token reaches a rule only
    through its provider's issuer, which is unique in a config, so nothing else can tell the two
    apart. Most roles of a reviewed change are these; the others are computed."""
    before, after = old.roles.get(name), new.roles.get(name)
    if before is None or after is None or before.rules != after.rules or before.denies != after.denies:
        return False
    providers = {rule.provider for rule in (*before.rules, *before.denies)}
    return all(old.providers.get(p) == new.providers.get(p) for p in providers)


def _difference(universe: Universe, role: str, box: Box, direction: str) -> Difference:
    granting = universe.new if direction == "gained" else universe.old
    provider = granting.provider_for_issuer(box.issuer)
    assert provider is not None, "a box comes from a rule of a configured provider"
    claims: dict[str, Any] = {"iss": box.issuer}
    conditions: dict[str, Any] = {}
    for claim in sorted(box.claims):
        allowed = box.claims[claim]
        space = universe.space(box.issuer, claim)
        shown = show(space, allowed)
        if shown is not None:
            conditions[claim] = shown
        if not allowed.absent:
            spelled = example(allowed.lang, space.shared)
            if spelled is None:
                raise DiffError(f"role {role}: no example text for claim {claim} (a bug; refusing to guess)")
            claims[claim] = space.text(spelled)
    _confirm(universe, role, provider, claims, direction)
    return Difference(provider.name, box.issuer, box, conditions, claims)


def allowed(config: Config, role: str, issuer: str, claims: Mapping[str, Any]) -> bool:
    provider = config.provider_for_issuer(issuer)
    if provider is None:
        return False
    _, decision = config.decide(role, provider, claims)
    return decision.allowed


def _confirm(
    universe: Universe, role: str, provider: ProviderConfig, claims: Mapping[str, Any], direction: str
) -> None:
    before = allowed(universe.old, role, provider.issuer, claims)
    after = allowed(universe.new, role, provider.issuer, claims)
    if (after and not before) if direction == "gained" else (before and not after):
        return
    raise DiffError(
        f"role {role}: the example for a {direction} set was not decided differently by the two "
        "configs (a bug in diff; refusing to report it)"
    )


# -- what the reader sees ------------------------------------------------------------------------------


def show(space: Space, allowed: ClaimSet) -> Any:
    """A claim's set as condition forms: a value or list when it is a few texts, else the
    conditions that make it up (`all`, `not`), without the ones the others already imply."""
    if not allowed.absent:
        texts = _few(allowed.lang)
        if texts is not None:
            shown = sorted(space.text(t) for t in texts)
            return shown[0] if len(shown) == 1 else shown
    terms = _essential(space, allowed)
    return _render_terms(terms) if terms else None


def _few(lang: Fsm) -> list[str] | None:
    """Every text of a language of at most a few texts; None for a larger or infinite one."""
    try:
        count = lang.cardinality()
    except OverflowError:
        return None
    return all_texts(lang) if 0 < count <= _FINITE_SHOWN else None


def _essential(space: Space, allowed: ClaimSet) -> list[Term]:
    """Drop each term whose absence leaves the set unchanged."""
    terms = list(allowed.terms)
    i = 0
    while i < len(terms):
        rest = terms[:i] + terms[i + 1 :]
        candidate = _meaning(space, rest)
        if candidate.within(allowed) and allowed.within(candidate):
            terms = rest
        else:
            i += 1
    return terms


def _meaning(space: Space, terms: Iterable[Term]) -> ClaimSet:
    result = space.everything()
    for term in terms:
        result = _and(result, term.meaning(space))
    return result


def _render_terms(terms: list[Term]) -> Any:
    rendered = [t.form if t.positive else {"not": _render_terms(list(t.negated))} for t in terms]
    return rendered[0] if len(rendered) == 1 else {"all": rendered}
