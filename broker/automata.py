"""Conditions as exact regular languages over a claim's text, for `ci-broker diff` and `check`.

The automata are greenery's `Fsm`: their alphabet is a partition of all of Unicode into character
classes, so a language over arbitrary claim text is represented exactly, not over a sample
alphabet. What no third-party parser reproduces is Python's own reading of a pattern, and the
broker matches with Python's `re` (`fullmatch`). So a pattern is read by `re`'s own parser (the
one `re.compile` uses; `re._parser`, private, kept because it is the only parser that agrees with
the broker by construction), and every single-character item (a literal, a class, `\\d`, `\\w`,
`.`, each under its flags, IGNORECASE included) becomes the set of characters `re` itself matches
with that item: see `_item_chars`. Anything whose language this module cannot build exactly
(backreferences, lookaround, conditionals, atomic groups, possessive repeats, anchors other than
a leading `^`/`\\A` and a trailing `$`/`\\Z`, word boundaries) raises `NotRegular`: the callers
refuse rather than guess.

Claim normalisation (`ClaimSchema.normalize`) is modelled too: `Normaliser` gives, for a claim,
the set of texts a token can present after normalising (`fixed`) and the preimage of a language
(`preimage`: the raw texts whose normalised form is in it), for the three normalisations the
schemas use (none, lowercase, lowercase of a workflow ref's `owner/repo/`).
"""

from __future__ import annotations

import array
import bisect
import functools
import re
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from re import _constants as sre  # type: ignore[attr-defined]
from re import _parser as sre_parse  # type: ignore[attr-defined]
from typing import Any

from greenery import Charclass, Fsm
from greenery.charclass import negate
from greenery.fsm import NULL, from_charclass

# Bounded repeats are unrolled; beyond this the automaton is too large to be worth building.
MAX_REPEAT_UNROLL = 200
LAST_CODE_POINT = 0x10FFFF
# `(?x)` changes only how the pattern is read; the flags below change what a character matches.
_CHAR_FLAGS = re.IGNORECASE | re.DOTALL | re.ASCII
_CATEGORIES = {
    sre.CATEGORY_DIGIT: r"\d",
    sre.CATEGORY_NOT_DIGIT: r"\D",
    sre.CATEGORY_SPACE: r"\s",
    sre.CATEGORY_NOT_SPACE: r"\S",
    sre.CATEGORY_WORD: r"\w",
    sre.CATEGORY_NOT_WORD: r"\W",
}
_LEADING = (sre.AT_BEGINNING, sre.AT_BEGINNING_STRING)
_TRAILING = (sre.AT_END, sre.AT_END_STRING)
_REPEATS = (sre.MAX_REPEAT, sre.MIN_REPEAT)
_NOT_REGULAR = {
    sre.GROUPREF: "a backreference",
    sre.GROUPREF_EXISTS: "a conditional group",
    sre.ASSERT: "a lookahead or lookbehind",
    sre.ASSERT_NOT: "a negative lookahead or lookbehind",
}
# Python 3.11 added these; their language is regular in theory but not what a plain translation
# gives (`a*+a` matches nothing), so they are refused rather than approximated.
for _name, _what in (("ATOMIC_GROUP", "an atomic group"), ("POSSESSIVE_REPEAT", "a possessive repeat")):
    if hasattr(sre, _name):
        _NOT_REGULAR[getattr(sre, _name)] = _what

ANYTHING: Fsm = from_charclass(~Charclass()).star()
NOTHING: Fsm = NULL


class NotRegular(ValueError):
    """A pattern (or normalisation) whose language cannot be built exactly here."""


# -- every Unicode character, for asking `re` which ones an item matches ---------------------------


@functools.cache
def _all_characters() -> str:
    """All 0x110000 code points, in order (lone surrogates included: a str may hold them)."""
    return array.array("I", range(0x110000)).tobytes().decode("utf-32-le", "surrogatepass")


@functools.cache
def _cased() -> tuple[str, Charclass]:
    """Every character that lowercasing, uppercasing or case folding changes, or that one of those
    produces: the only ones IGNORECASE can make match differently (`test_automata` checks this
    against full scans)."""
    everything = _all_characters()
    found: set[str] = set()
    step = 512
    for start in range(0, len(everything), step):
        chunk = everything[start : start + step]
        if chunk.lower() == chunk and chunk.upper() == chunk and chunk.casefold() == chunk:
            continue
        for char in chunk:
            mapped = char.lower() + char.upper() + char.casefold()
            if mapped != char * 3:
                found.add(char)
                found.update(mapped)
    chars = "".join(sorted(found))
    return chars, _charclass_of(ord(c) for c in chars)


@functools.cache
def _lowered() -> dict[str, str]:
    """Each character whose lowercase is not itself, mapped to its lowercase (one or more chars)."""
    everything = _all_characters()
    out: dict[str, str] = {}
    step = 512
    for start in range(0, len(everything), step):
        chunk = everything[start : start + step]
        if chunk.lower() != chunk:
            out.update((c, c.lower()) for c in chunk if c.lower() != c)
    return out


def _canon(chars: Charclass) -> Charclass:
    """One spelling per set: negated exactly when the set holds the last code point.

    greenery compares character classes by spelling, and an Fsm alphabet must unite to its `DOT`
    (a negated empty class), so every class built here goes through this.
    """
    covered = negate(list(chars.ord_ranges)) if chars.negated else list(chars.ord_ranges)
    if covered and covered[-1][1] == LAST_CODE_POINT:
        return Charclass(tuple((chr(a), chr(b)) for a, b in negate(covered)), negated=True)
    return Charclass(tuple((chr(a), chr(b)) for a, b in covered))


def _is_empty(chars: Charclass) -> bool:
    return chars.num_chars() == 0


def _charclass_of(codes: Iterable[int]) -> Charclass:
    ranges: list[tuple[str, str]] = []
    for code in sorted(set(codes)):
        if ranges and ord(ranges[-1][1]) == code - 1:
            ranges[-1] = (ranges[-1][0], chr(code))
        else:
            ranges.append((chr(code), chr(code)))
    return _canon(Charclass(tuple(ranges)))


def _runs(compiled: re.Pattern[str], text: str) -> Charclass:
    """The characters of `text` (consecutive code points) that `compiled`, one character long, matches."""
    runs = re.compile(f"(?:{compiled.pattern})+", compiled.flags)
    return _canon(Charclass(tuple((m.group()[0], m.group()[-1]) for m in runs.finditer(text))))


# -- one character -----------------------------------------------------------------------------------


def _item_source(op: Any, av: Any) -> str:
    """A single-character item as pattern text `re` reads back as the same item."""
    if op is sre.LITERAL:
        return f"\\U{av:08x}"
    if op is sre.NOT_LITERAL:
        return f"[^\\U{av:08x}]"
    if op is sre.ANY:
        return "."
    parts: list[str] = []
    for sub_op, sub_av in av:
        if sub_op is sre.NEGATE:
            parts.insert(0, "^")
        elif sub_op is sre.LITERAL:
            parts.append(f"\\U{sub_av:08x}")
        elif sub_op is sre.RANGE:
            parts.append(f"\\U{sub_av[0]:08x}-\\U{sub_av[1]:08x}")
        elif sub_op is sre.CATEGORY and sub_av in _CATEGORIES:
            parts.append(_CATEGORIES[sub_av])
        else:
            raise NotRegular(f"the character class item {sub_op} is not supported")
    return "[" + "".join(parts) + "]"


def _plain_chars(op: Any, av: Any, flags: int) -> Charclass | None:
    """The item's characters when no flag and no category is involved; None otherwise."""
    if op is sre.ANY:
        return _canon(~Charclass() if flags & re.DOTALL else ~Charclass("\n"))
    if flags & re.IGNORECASE:
        return None
    if op is sre.LITERAL:
        return _canon(Charclass(((chr(av), chr(av)),)))
    if op is sre.NOT_LITERAL:
        return _canon(~Charclass(((chr(av), chr(av)),)))
    ranges: list[tuple[str, str]] = []
    negated = False
    for sub_op, sub_av in av:
        if sub_op is sre.NEGATE:
            negated = True
        elif sub_op is sre.LITERAL:
            ranges.append((chr(sub_av), chr(sub_av)))
        elif sub_op is sre.RANGE:
            ranges.append((chr(sub_av[0]), chr(sub_av[1])))
        else:
            return None
    chars = Charclass(tuple(ranges))
    return _canon(~chars if negated else chars)


@functools.lru_cache(maxsize=4096)
def _item_chars(source: str, flags: int) -> Charclass:
    """The characters `re` matches with one single-character item (written by `_item_source`).

    Without IGNORECASE or a category the set is read off the item. Otherwise `re` decides: with a
    category every code point is tried (in runs, at C speed); with IGNORECASE alone only the cased
    characters can change, so the item's set without IGNORECASE outside them, plus `re`'s answer
    on them.
    """
    ((op, av),) = list(sre_parse.parse(source))
    plain = _plain_chars(op, av, flags)
    if plain is not None:
        return plain
    compiled = re.compile(source, flags)
    if op is sre.IN and any(sub_op is sre.CATEGORY for sub_op, _ in av):
        return _runs(compiled, _all_characters())
    cased_chars, cased = _cased()
    without_case = _plain_chars(op, av, flags & ~re.IGNORECASE)
    assert without_case is not None
    matched = _charclass_of(ord(m.group()) for m in compiled.finditer(cased_chars))
    return _canon((without_case & ~cased) | matched)


# -- a whole pattern -------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def pattern_language(pattern: str, flags: int = 0) -> Fsm:
    """The texts `re.compile(pattern, flags).fullmatch` accepts; NotRegular when not exact here."""
    try:
        parsed = sre_parse.parse(pattern, flags)
    except re.error as exc:
        raise NotRegular(f"invalid regex: {exc}") from None
    nfa = _Nfa()
    start, end = nfa.sequence(list(parsed), parsed.state.flags, at_start=True, at_end=True)
    return nfa.determinised(start, end)


class _Nfa:
    """A Thompson automaton of the pattern (character-class edges and empty moves), made
    deterministic and minimal in one pass: greenery's concatenation determinises at every step
    and its `reduce` is quadratic, seconds for one workflow-ref glob."""

    def __init__(self) -> None:
        self.empty: list[list[int]] = []  # empty moves of each state
        self.edges: list[list[tuple[Charclass, int]]] = []

    def state(self) -> int:
        self.empty.append([])
        self.edges.append([])
        return len(self.empty) - 1

    def sequence(
        self, items: Sequence[tuple[Any, Any]], flags: int, *, at_start: bool, at_end: bool
    ) -> tuple[int, int]:
        first, last = 0, len(items)
        # With fullmatch a leading ^ / \A holds at position 0 and a trailing $ / \Z at the end,
        # with or without MULTILINE: both are no-ops there. Anywhere else they are refused.
        while at_start and first < last and items[first][0] is sre.AT and items[first][1] in _LEADING:
            first += 1
        while at_end and last > first and items[last - 1][0] is sre.AT and items[last - 1][1] in _TRAILING:
            last -= 1
        start = end = self.state()
        for i, (op, av) in enumerate(items[first:last], start=first):
            head, tail = self.item(
                op, av, flags, at_start=at_start and i == first, at_end=at_end and i == last - 1
            )
            self.empty[end].append(head)
            end = tail
        return start, end

    def item(self, op: Any, av: Any, flags: int, *, at_start: bool, at_end: bool) -> tuple[int, int]:
        if op in (sre.LITERAL, sre.NOT_LITERAL, sre.ANY, sre.IN):
            start, end = self.state(), self.state()
            self.edges[start].append((_item_chars(_item_source(op, av), flags & _CHAR_FLAGS), end))
            return start, end
        if op is sre.BRANCH:
            start, end = self.state(), self.state()
            for branch in av[1]:
                head, tail = self.sequence(list(branch), flags, at_start=at_start, at_end=at_end)
                self.empty[start].append(head)
                self.empty[tail].append(end)
            return start, end
        if op is sre.SUBPATTERN:
            _group, add, remove, inner = av
            return self.sequence(list(inner), (flags | add) & ~remove, at_start=at_start, at_end=at_end)
        if op in _REPEATS:
            low, high, inner = av
            high = None if high is sre.MAXREPEAT else high
            if max(low, high or 0) > MAX_REPEAT_UNROLL:
                raise NotRegular(f"has a repeat bound over {MAX_REPEAT_UNROLL}, too large to decide exactly")
            return self.repeat(list(inner), flags, low, high)
        if op in _NOT_REGULAR:
            raise NotRegular(f"uses {_NOT_REGULAR[op]}, which is not a regular language")
        if op is sre.AT:
            raise NotRegular(
                "uses an anchor or word boundary inside the pattern; only a leading ^ or \\A and a "
                "trailing $ or \\Z can be decided exactly"
            )
        raise NotRegular(f"uses {op}, which cannot be decided exactly")

    def repeat(self, body: list[tuple[Any, Any]], flags: int, low: int, high: int | None) -> tuple[int, int]:
        start = end = self.state()
        for _ in range(low):
            head, tail = self.sequence(body, flags, at_start=False, at_end=False)
            self.empty[end].append(head)
            end = tail
        if high is None:  # then any number more: a loop through a hub
            hub = self.state()
            head, tail = self.sequence(body, flags, at_start=False, at_end=False)
            self.empty[end].append(hub)
            self.empty[hub].append(head)
            self.empty[tail].append(hub)
            return start, hub
        optional_end = self.state()
        for _ in range(high - low):  # each further copy may be skipped to the end
            self.empty[end].append(optional_end)
            head, tail = self.sequence(body, flags, at_start=False, at_end=False)
            self.empty[end].append(head)
            end = tail
        self.empty[end].append(optional_end)
        return start, optional_end

    def closure(self, states: Iterable[int]) -> frozenset[int]:
        seen = set(states)
        stack = list(seen)
        while stack:
            for target in self.empty[stack.pop()]:
                if target not in seen:
                    seen.add(target)
                    stack.append(target)
        return frozenset(seen)

    def determinised(self, start: int, end: int) -> Fsm:
        everything = _canon(~Charclass())
        parts = refine([everything, *(cls for edges in self.edges for cls, _ in edges)])
        symbols = parts[everything]
        position = {part: i for i, part in enumerate(symbols)}
        # For each state, the states each symbol leads to.
        moves: list[dict[int, list[int]]] = []
        for edges in self.edges:
            by_symbol: dict[int, list[int]] = {}
            for cls, target in edges:
                for part in parts[cls]:
                    by_symbol.setdefault(position[part], []).append(target)
            moves.append(by_symbol)

        def follow(current: frozenset[int], i: int) -> frozenset[int]:
            return self.closure(t for q in current for t in moves[q].get(i, ()))

        return _build(symbols, self.closure((start,)), lambda current: end in current, follow)


def strings_language(values: Iterable[str]) -> Fsm:
    """A finite set of texts (exact and any-of conditions), as a trie automaton."""
    values = sorted(set(values))
    chars = sorted({c for v in values for c in v})
    classes = [_canon(Charclass(((c, c),))) for c in chars]
    other = _canon(~Charclass(tuple((c, c) for c in chars)))
    alphabet = [*classes, other]
    nodes: dict[str, int] = {"": 0}
    for value in values:
        for end in range(1, len(value) + 1):
            nodes.setdefault(value[:end], len(nodes))
    dead = len(nodes)
    transitions: dict[int, dict[Charclass, int]] = {dead: dict.fromkeys(alphabet, dead)}
    for prefix, state in nodes.items():
        row = dict.fromkeys(alphabet, dead)
        for c, cls in zip(chars, classes, strict=True):
            row[cls] = nodes.get(prefix + c, dead)
        transitions[state] = row
    finals = {nodes[v] for v in values}
    return Fsm(alphabet=alphabet, states=range(dead + 1), initial=0, finals=finals, map=transitions)


# -- normalisation ---------------------------------------------------------------------------------


@functools.cache
def _changed_by_lower() -> tuple[int, ...]:
    return tuple(sorted(ord(c) for c in _lowered()))


@functools.cache
def _fixed_count() -> int:
    return 0x110000 - len(_changed_by_lower())


def _rank(code: int) -> int:
    """The position of an unchanged-by-lowercase character among all of them."""
    return code - bisect.bisect_left(_changed_by_lower(), code)


def _unrank(rank: int) -> int:
    changed = _changed_by_lower()
    code = rank
    while True:
        following = rank + bisect.bisect_right(changed, code)
        if following == code:
            return code
        code = following


def _compress(chars: Charclass, *, keep_slash: bool = True) -> Charclass:
    """The ranks of a class's characters that lowercasing leaves alone (a run of code points maps
    to a run of ranks, so the classes stay as small as they were)."""
    changed = frozenset(_changed_by_lower())
    ranges: list[tuple[str, str]] = []
    for low, high in _covered(chars):
        while low <= high and (low in changed or (not keep_slash and low == SLASH)):
            low += 1
        while high >= low and (high in changed or (not keep_slash and high == SLASH)):
            high -= 1
        if low > high:
            continue
        if not keep_slash and low < SLASH < high:
            ranges += [(chr(_rank(low)), chr(_rank(SLASH - 1))), (chr(_rank(SLASH + 1)), chr(_rank(high)))]
        else:
            ranges.append((chr(_rank(low)), chr(_rank(high))))
    return _canon(Charclass(tuple(ranges)))


@dataclass(frozen=True)
class Normaliser:
    """How a provider's schema normalises one claim before matching: `none`, `lower` (the whole
    text), or `repo` (a workflow ref: `owner/repo/` lowered when the text has two slashes).

    Normalised texts are compared in an encoding that keeps character classes small: the
    characters lowercasing changes never occur in a lowered part, so a lowered part is written as
    the ranks of the characters that remain (`_compress`); `encode`/`decode` convert texts and
    `language` converts automata over normalised texts.
    """

    kind: str

    def apply(self, text: str) -> str:
        if self.kind == "lower":
            return text.lower()
        if self.kind == "repo":
            parts = text.split("/", 2)
            return text if len(parts) < 3 else f"{parts[0].lower()}/{parts[1].lower()}/{parts[2]}"
        return text

    def _lowered_part(self, text: str) -> int:
        """How many leading characters of a normalised text are lowered (and so ranked)."""
        if self.kind == "lower":
            return len(text)
        if self.kind == "repo" and text.count("/") >= 2:
            return text.index("/", text.index("/") + 1)
        return 0

    def encode(self, normalised: str) -> str | None:
        """A normalised text in the encoding; None if no token's claim normalises to it."""
        cut = self._lowered_part(normalised)
        changed = frozenset(_changed_by_lower())
        head = normalised[:cut]
        if any(ord(c) in changed for c in head):
            return None
        return (
            "".join(c if c == "/" and self.kind == "repo" else chr(_rank(ord(c))) for c in head)
            + (normalised[cut:])
        )

    def decode(self, encoded: str) -> str:
        cut = self._lowered_part(encoded)
        head = "".join(c if c == "/" and self.kind == "repo" else chr(_unrank(ord(c))) for c in encoded[:cut])
        return head + encoded[cut:]

    @property
    def universe(self) -> Fsm:
        """Every encoded text some claim normalises to."""
        return _universe(self.kind)

    def language(self, normalised: Fsm) -> Fsm:
        """An automaton over normalised texts as one over their encodings (within `universe`)."""
        if self.kind == "none":
            return normalised
        if self.kind == "lower":
            return both(_relabel(normalised, _compress), self.universe)
        return both(_encode_repo(normalised), self.universe)

    @property
    def preferred(self) -> str:
        """Readable characters as this encoding spells them, for examples."""
        return _preferred(self.kind)

    def preimage(self, language: Fsm) -> Fsm:
        """The raw texts whose normalised form is in `language` (over normalised texts)."""
        if self.kind == "none":
            return language
        if self.kind == "lower":
            return _preimage_lower(language)
        return _preimage_repo(language)


SLASH = ord("/")


@functools.cache
def _preferred(kind: str) -> str:
    if kind == "none":
        return _PREFERRED
    changed = frozenset(_changed_by_lower())
    ranked = "".join(chr(_rank(ord(c))) for c in _PREFERRED if ord(c) not in changed)
    return ranked if kind == "lower" else ranked + _PREFERRED


@functools.cache
def _fewer_than_two_slashes() -> Fsm:
    slash = Charclass("/")
    segment = from_charclass(_canon(~slash)).star()
    return Fsm.union(segment, Fsm.concatenate(segment, from_charclass(slash), segment))


@functools.cache
def _universe(kind: str) -> Fsm:
    if kind == "none":
        return ANYTHING
    valid = _canon(Charclass(((chr(0), chr(_fixed_count() - 1)),)))
    if kind == "lower":
        return from_charclass(valid).star()
    slash = Charclass("/")
    segment = from_charclass(_canon(~slash)).star()
    ranked_segment = from_charclass(_canon(valid & ~slash)).star()
    one = from_charclass(slash)
    return minimal(
        Fsm.union(
            segment,
            Fsm.concatenate(segment, one, segment),
            Fsm.concatenate(ranked_segment, one, ranked_segment, one, ANYTHING),
        )
    )


def _relabel(fsm: Fsm, mapping: Callable[[Charclass], Charclass]) -> Fsm:
    """The same automaton with each class's characters renamed (what no class is renamed to leads
    to a dead state); the renamed classes must stay disjoint."""
    kept = {cls: new for cls in fsm.alphabet if not _is_empty(new := mapping(cls))}
    covered = Charclass()
    for new in kept.values():
        covered = covered | new
    rest = _canon(~covered)
    alphabet = list(kept.values()) + ([] if _is_empty(rest) else [rest])
    dead = max(fsm.states) + 1
    transitions: dict[int, dict[Charclass, int]] = {dead: dict.fromkeys(alphabet, dead)}
    for q in fsm.states:
        row = {new: fsm.map[q][cls] for cls, new in kept.items()}
        if not _is_empty(rest):
            row[rest] = dead
        transitions[q] = row
    return Fsm(
        alphabet=alphabet, states={*fsm.states, dead}, initial=fsm.initial, finals=fsm.finals, map=transitions
    )


def _encode_repo(fsm: Fsm) -> Fsm:
    """Texts with fewer than two slashes as they are; the others with their first two segments
    ranked. The two parts never share a text (the slashes are kept), so their union is exact."""
    slash = Charclass("/")
    short = both(fsm, _fewer_than_two_slashes())
    ranked = {cls: r for cls in fsm.alphabet if not _is_empty(r := _compress(cls, keep_slash=False))}
    pieces = refine([*fsm.alphabet, *ranked.values(), slash]).values()
    symbols = sorted({_canon(piece) for group in pieces for piece in group}, key=_first_code)
    slash_class = _class_of(fsm, "/")
    dead = -1
    # Per symbol, once: is it the slash, whose rank it is (in the ranked segments), whose
    # character (after them). Each symbol lies inside one class of each kind.
    probes = [chr(_first_code(symbol)) for symbol in symbols]
    is_slash = [probe == "/" for probe in probes]
    ranked_owner = [next((cls for cls, r in ranked.items() if r.accepts(p)), None) for p in probes]
    plain_owner = [_class_of(fsm, probe) for probe in probes]

    def follow(state: tuple[int, int], i: int) -> tuple[int, int]:
        slashes, q = state
        if q == dead:
            return state
        if slashes < 2:
            if is_slash[i]:
                return slashes + 1, fsm.map[q][slash_class]
            owner = ranked_owner[i]
            return (slashes, fsm.map[q][owner]) if owner is not None else (slashes, dead)
        return slashes, fsm.map[q][plain_owner[i]]

    long = _build(symbols, (0, fsm.initial), lambda s: s[0] == 2 and s[1] in fsm.finals, follow)
    return _combine((short, long), any)


def _first_code(chars: Charclass) -> int:
    covered = _covered(chars)
    return covered[0][0] if covered else -1


def _step(fsm: Fsm, state: int, text: str) -> int:
    for char in text:
        state = fsm.map[state][_class_of(fsm, char)]
    return state


def _class_of(fsm: Fsm, char: str) -> Charclass:
    for cls in fsm.alphabet:
        if cls.accepts(char):
            return cls
    raise AssertionError("an Fsm alphabet covers every character")


def _lowering_symbols(fsm: Fsm) -> list[tuple[Charclass, Charclass, dict[int, int]]]:
    """A partition of Unicode into (characters, their class in `fsm`, where lowering them leads
    from each state). Characters lowercasing leaves alone keep their class; the others are grouped
    by where their lowercase text leads."""
    sigma_small, sigma_final = _class_of(fsm, "σ"), _class_of(fsm, "ς")
    if any(fsm.map[q][sigma_small] != fsm.map[q][sigma_final] for q in fsm.states):
        # str.lower() turns Σ into σ or ς depending on the letters around it.
        raise NotRegular("tells σ from ς on a case-insensitive claim, which lowercasing Σ decides by context")
    lowered = _lowered()
    changed = _charclass_of(ord(c) for c in lowered)
    symbols: list[tuple[Charclass, Charclass, dict[int, int]]] = []
    for cls in fsm.alphabet:
        kept = _canon(cls & ~changed)
        if not _is_empty(kept):
            symbols.append((kept, cls, {q: fsm.map[q][cls] for q in fsm.states}))
    groups: dict[tuple[Charclass, tuple[int, ...]], list[int]] = {}
    states = sorted(fsm.states)
    for char, low in lowered.items():
        key = (_class_of(fsm, char), tuple(_step(fsm, q, low) for q in states))
        groups.setdefault(key, []).append(ord(char))
    for (cls, targets), codes in groups.items():
        symbols.append((_charclass_of(codes), cls, dict(zip(states, targets, strict=True))))
    return symbols


def _build(
    alphabet: list[Charclass],
    initial: Hashable,
    final: Callable[[Any], bool],
    follow: Callable[[Any, int], Hashable],
) -> Fsm:
    """The minimal Fsm explored from `initial`; `follow(state, i)` moves on `alphabet[i]`."""
    index: dict[Hashable, int] = {initial: 0}
    order = [initial]
    rows: list[list[int]] = []
    while len(rows) < len(order):
        current = order[len(rows)]
        row = []
        for i in range(len(alphabet)):
            target = follow(current, i)
            if target not in index:
                index[target] = len(order)
                order.append(target)
            row.append(index[target])
        rows.append(row)
    return _minimal_table((alphabet, rows, 0, {i for i, state in enumerate(order) if final(state)}))


def _preimage_lower(fsm: Fsm) -> Fsm:
    symbols = _lowering_symbols(fsm)
    return _build(
        [chars for chars, _, _ in symbols],
        fsm.initial,
        lambda q: q in fsm.finals,
        lambda q, i: symbols[i][2][q],
    )


def _preimage_repo(fsm: Fsm) -> Fsm:
    """Raw texts t with repo-normalised t in `fsm`: two runs side by side, one on t as it is (what
    counts while t has fewer than two slashes) and one lowering up to the second slash."""
    slash = Charclass("/")
    symbols = [(_canon(chars & ~slash), cls, moves) for chars, cls, moves in _lowering_symbols(fsm)]
    symbols = [s for s in symbols if not _is_empty(s[0])]
    slash_class = _class_of(fsm, "/")
    alphabet = [chars for chars, _, _ in symbols] + [slash]

    def follow(state: tuple[int, int, int], i: int) -> tuple[int, int, int]:
        slashes, plain, lowered = state
        if i == len(symbols):
            return min(slashes + 1, 2), fsm.map[plain][slash_class], fsm.map[lowered][slash_class]
        _, cls, moves = symbols[i]
        return slashes, fsm.map[plain][cls], moves[lowered] if slashes < 2 else fsm.map[lowered][cls]

    def final(state: tuple[int, int, int]) -> bool:
        slashes, plain, lowered = state
        return (lowered if slashes == 2 else plain) in fsm.finals

    return _build(alphabet, (0, fsm.initial, fsm.initial), final, follow)


def refine(classes: Iterable[Charclass]) -> dict[Charclass, list[Charclass]]:
    """The coarsest partition of Unicode that splits no class, and each class's parts.

    What greenery's `repartition` computes, in one sweep over the classes' ranges rather than a
    test of every class for every elementary range (`\\w` alone has 734 ranges).
    """
    unique = list(dict.fromkeys(classes))
    covered = [_covered(cls) for cls in unique]
    bounds = sorted(
        {0, LAST_CODE_POINT + 1} | {edge for ranges in covered for a, b in ranges for edge in (a, b + 1)}
    )
    members: list[list[int]] = [[] for _ in range(len(bounds) - 1)]
    for k, ranges in enumerate(covered):
        for low, high in ranges:
            for slot in range(bisect.bisect_left(bounds, low), bisect.bisect_left(bounds, high + 1)):
                members[slot].append(k)
    groups: dict[tuple[int, ...], list[tuple[str, str]]] = {}
    for slot, owners in enumerate(members):
        if owners:
            groups.setdefault(tuple(owners), []).append((chr(bounds[slot]), chr(bounds[slot + 1] - 1)))
    parts: dict[Charclass, list[Charclass]] = {cls: [] for cls in unique}
    for owner_set, spans in groups.items():
        part = _canon(Charclass(tuple(spans)))
        for k in owner_set:
            parts[unique[k]].append(part)
    return parts


# An automaton as plain tables: its classes, one row of target states per state (in class
# order), the initial state and the final ones. Products and minimisation work on these and build
# one greenery Fsm at the end (each Fsm checks on construction that its classes partition Unicode).
Table = tuple[list[Charclass], list[list[int]], int, set[int]]


# Tables of the automata asked about lately, by identity (an Fsm is not hashable): the condition
# languages are asked about again and again (every box against every other), and reading an Fsm's
# map hashes a class per cell. Bounded; the entry holds the Fsm so its id cannot be reused.
_TABLES: dict[int, tuple[Fsm, Table]] = {}
_TABLES_KEPT = 2048


def _table(fsm: Fsm) -> Table:
    entry = _TABLES.get(id(fsm))
    if entry is not None and entry[0] is fsm:
        return entry[1]
    table = _read_table(fsm)
    if len(_TABLES) >= _TABLES_KEPT:
        del _TABLES[next(iter(_TABLES))]
    _TABLES[id(fsm)] = (fsm, table)
    return table


def _read_table(fsm: Fsm) -> Table:
    states = sorted(fsm.states)
    index = {q: i for i, q in enumerate(states)}
    alphabet = list(fsm.alphabet)
    rows = [[index[fsm.map[q][cls]] for cls in alphabet] for q in states]
    return alphabet, rows, index[fsm.initial], {index[q] for q in fsm.finals}


def _aligned(fsms: Sequence[Fsm]) -> tuple[list[Table], list[Charclass], list[list[int]]]:
    """The automata as tables on a common refinement of their alphabets: the refined symbols and,
    per automaton, which of its own classes holds each symbol."""
    tables = [_table(fsm) for fsm in fsms]
    parts = refine(cls for alphabet, _, _, _ in tables for cls in alphabet)
    symbols = list(dict.fromkeys(part for group in parts.values() for part in group))
    position = {part: i for i, part in enumerate(symbols)}
    owners: list[list[int]] = []
    for alphabet, _, _, _ in tables:
        owner = [0] * len(symbols)
        for k, cls in enumerate(alphabet):
            for part in parts[cls]:
                owner[position[part]] = k
        owners.append(owner)
    return tables, symbols, owners


def _combine(fsms: Sequence[Fsm], accept: Callable[[Sequence[bool]], bool]) -> Fsm:
    """The product automaton of `fsms` on a common refinement of their alphabets, minimal."""
    tables, symbols, owners = _aligned(fsms)
    start = tuple(initial for _, _, initial, _ in tables)
    index = {start: 0}
    order = [start]
    rows: list[list[int]] = []
    while len(rows) < len(order):
        states = order[len(rows)]
        row = []
        for s in range(len(symbols)):
            target = tuple(
                table[1][q][owner[s]] for q, table, owner in zip(states, tables, owners, strict=True)
            )
            if target not in index:
                index[target] = len(order)
                order.append(target)
            row.append(index[target])
        rows.append(row)
    finals = {
        i
        for i, states in enumerate(order)
        if accept([q in table[3] for q, table in zip(states, tables, strict=True)])
    }
    return _minimal_table((symbols, rows, 0, finals))


def _reaches(fsms: Sequence[Fsm], accept: Callable[[Sequence[bool]], bool]) -> bool:
    """Whether the product of `fsms` accepts anything: a search that stops at the first accepting
    state, for the questions that need no automaton back (do two sets meet, is one in another)."""
    tables, symbols, owners = _aligned(fsms)
    start = tuple(initial for _, _, initial, _ in tables)
    seen = {start}
    queue = [start]
    for states in queue:
        if accept([q in table[3] for q, table in zip(states, tables, strict=True)]):
            return True
        for s in range(len(symbols)):
            target = tuple(
                table[1][q][owner[s]] for q, table, owner in zip(states, tables, owners, strict=True)
            )
            if target not in seen:
                seen.add(target)
                queue.append(target)
    return False


def meets(a: Fsm, b: Fsm) -> bool:
    """Whether some text is in both."""
    return _reaches((a, b), all)


def within(a: Fsm, b: Fsm) -> bool:
    """Whether every text of a is in b."""
    return not _reaches((a, b), lambda finals: finals[0] and not finals[1])


def both(a: Fsm, b: Fsm) -> Fsm:
    return _combine((a, b), all)


def but(a: Fsm, b: Fsm) -> Fsm:
    """a minus b."""
    return _combine((a, b), lambda finals: finals[0] and not finals[1])


def minimal(fsm: Fsm) -> Fsm:
    """The reachable part of `fsm` with equivalent states merged (greenery's own `reduce`
    reverses the automaton twice, quadratically in its states)."""
    return _minimal_table(_table(fsm))


def _minimal_table(table: Table) -> Fsm:
    """Hopcroft's partition refinement on the reachable states, then one Fsm whose classes are
    merged wherever every state moves alike on them.

    Merging matters as much as minimising: products refine their operands' alphabets, so without
    it each product's alphabet is the refinement of all before it, and every later step (each pass
    over a table is states x classes) pays for classes that no state tells apart.
    """
    alphabet, rows, initial, finals = table
    reachable = [initial]
    seen = {initial}
    for state in reachable:
        for target in rows[state]:
            if target not in seen:
                seen.add(target)
                reachable.append(target)
    alphabet, moves = _merged_columns(alphabet, {q: rows[q] for q in reachable})
    block = _equivalence_blocks(reachable, moves, finals, len(alphabet))
    representatives = {block[q]: q for q in reachable}
    alphabet, merged = _merged_columns(
        alphabet, {b: [block[t] for t in moves[q]] for b, q in representatives.items()}
    )
    return Fsm(
        alphabet=alphabet,
        states=set(merged),
        initial=block[initial],
        finals={block[q] for q in reachable if q in finals},
        map={b: dict(zip(alphabet, row, strict=True)) for b, row in merged.items()},
    )


def _equivalence_blocks(
    states: list[int], moves: dict[int, list[int]], finals: set[int], symbols: int
) -> dict[int, int]:
    """Each state's block of equivalent states (Hopcroft: split by the predecessors of the smaller
    half, so a state is looked at O(log n) times; Moore's rounds cost states x classes each, and
    a pattern as long as a workflow ref needs as many rounds as it has characters)."""
    predecessors: list[dict[int, list[int]]] = [{} for _ in range(symbols)]
    for q in states:
        for c, target in enumerate(moves[q]):
            predecessors[c].setdefault(target, []).append(q)
    accepting = {q for q in states if q in finals}
    blocks = [part for part in (accepting, set(states) - accepting) if part]
    block = {q: b for b, part in enumerate(blocks) for q in part}
    smaller = min(range(len(blocks)), key=lambda b: len(blocks[b]))
    pending = {(smaller, c) for c in range(symbols)} if len(blocks) == 2 else set()
    while pending:
        splitter, c = pending.pop()
        into: dict[int, set[int]] = {}
        for target in blocks[splitter]:
            for q in predecessors[c].get(target, ()):
                into.setdefault(block[q], set()).add(q)
        for b, inside in into.items():
            if len(inside) == len(blocks[b]):
                continue
            outside = blocks[b] - inside
            small, large = (inside, outside) if len(inside) <= len(outside) else (outside, inside)
            blocks[b] = large
            blocks.append(small)
            new = len(blocks) - 1
            for q in small:
                block[q] = new
            # (b, d) pending stays pending for the larger part; either way the new part is added.
            pending.update((new, d) for d in range(symbols))
    return block


def _merged_columns(
    alphabet: list[Charclass], rows: dict[int, list[int]]
) -> tuple[list[Charclass], dict[int, list[int]]]:
    """One class for the classes every state moves alike on (their union), rows to match."""
    states = list(rows)
    columns: dict[tuple[int, ...], list[int]] = {}
    for k in range(len(alphabet)):
        columns.setdefault(tuple(rows[q][k] for q in states), []).append(k)
    if len(columns) == len(alphabet):
        return alphabet, rows
    merged = [_union(alphabet[k] for k in group) for group in columns.values()]
    kept = [group[0] for group in columns.values()]
    return merged, {q: [rows[q][k] for k in kept] for q in states}


def _union(classes: Iterable[Charclass]) -> Charclass:
    ranges = sorted(r for cls in classes for r in _covered(cls))
    spans: list[tuple[int, int]] = []
    for low, high in ranges:
        if spans and low <= spans[-1][1] + 1:
            spans[-1] = (spans[-1][0], max(spans[-1][1], high))
        else:
            spans.append((low, high))
    return _canon(Charclass(tuple((chr(a), chr(b)) for a, b in spans)))


# -- examples ------------------------------------------------------------------------------------

_PREFERRED = "abcdefghijklmnopqrstuvwxyz0123456789-_./:ABCDEFGHIJKLMNOPQRSTUVWXYZ@+=~!#%&,;"


def _covered(chars: Charclass) -> list[tuple[int, int]]:
    return negate(list(chars.ord_ranges)) if chars.negated else list(chars.ord_ranges)


@functools.lru_cache(maxsize=4096)
def _nice_char(cls: Charclass, preferred: str = _PREFERRED) -> str | None:
    """The most readable character of a class: a preferred one, else the first printable one.

    Cached: every example search asks it of each class of each state, and alphabets repeat."""
    for char in preferred:
        if cls.accepts(char):
            return char
    covered = _covered(cls)
    for low, high in covered:
        for start, end in ((0xA1, 0xD7FF), (0xE000, LAST_CODE_POINT), (0x20, 0x7E)):
            if max(low, start) <= min(high, end):
                return chr(max(low, start))
    return chr(covered[0][0]) if covered else None


def example(fsm: Fsm, spelling: Normaliser | None = None) -> str | None:
    """A short, readable text of the language (None if it is empty).

    Texts are explored shortest first, one readable character per class; among the first few
    found, the one that reads least like an edge case (an empty path segment, a trailing dash,
    white space) wins: `refs/heads/a` rather than `refs/heads/`.
    """
    live = {q for q in fsm.states if fsm.islive(q)}
    if fsm.initial not in live:
        return None
    preferred = spelling.preferred if spelling is not None else _PREFERRED
    decode = spelling.decode if spelling is not None else str

    def readability(cls: Charclass) -> int:
        char = _nice_char(cls, preferred)
        position = preferred.find(char) if char is not None else -1
        return position if position >= 0 else len(preferred) + ord(char or chr(LAST_CODE_POINT))

    moves = {
        q: [
            (char, fsm.map[q][cls])
            for cls in sorted(fsm.map[q], key=readability)
            if (char := _nice_char(cls, preferred))
        ]
        for q in live
    }
    found: list[str] = []
    frontier = [("", fsm.initial)]
    explored = 0
    while frontier and len(found) < _EXAMPLE_CANDIDATES and explored < _EXAMPLE_BUDGET:
        following: list[tuple[str, int]] = []
        for text, state in frontier:
            explored += 1
            if state in fsm.finals:
                found.append(text)
            following += [(text + char, target) for char, target in moves[state] if target in live]
        frontier = following[:_EXAMPLE_BUDGET]
    if not found:
        return _shortest(fsm, live)
    # Ties go to the first found: shortest, then made of the most readable characters.
    return min(found, key=lambda text: (_oddness(decode(text)), len(text)))


_EXAMPLE_CANDIDATES = 24
_EXAMPLE_BUDGET = 4000


def _oddness(text: str) -> int:
    return sum(
        (
            text.endswith(("/", "-", ".", ":", "@")),
            "//" in text or "/@" in text or "/." in text,
            any(c.isspace() or not c.isprintable() for c in text),
        )
    )


def _shortest(fsm: Fsm, live: set[int]) -> str | None:
    seen = {fsm.initial: ""}
    queue = [fsm.initial]
    for state in queue:
        if state in fsm.finals:
            return seen[state]
        for cls in sorted(fsm.map[state], key=_readability):
            target = fsm.map[state][cls]
            char = _nice_char(cls)
            if target in live and target not in seen and char is not None:
                seen[target] = seen[state] + char
                queue.append(target)
    return None


def _readability(cls: Charclass) -> int:
    char = _nice_char(cls)
    if char is None:
        return len(_PREFERRED) + 0x110000
    position = _PREFERRED.find(char)
    return position if position >= 0 else len(_PREFERRED) + ord(char)


def all_texts(fsm: Fsm) -> list[str]:
    """Every text of a finite language (only transitions into live states are followed, so a
    class of a million characters leading nowhere costs nothing)."""
    live = {q for q in fsm.states if fsm.islive(q)}
    out: list[str] = []

    def walk(state: int, prefix: str) -> None:
        if state in fsm.finals:
            out.append(prefix)
        for cls, target in fsm.map[state].items():
            if target in live:
                for low, high in _covered(cls):
                    for code in range(low, high + 1):
                        walk(target, prefix + chr(code))

    if fsm.initial in live:
        walk(fsm.initial, "")
    return out
