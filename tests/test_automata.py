"""Conditions as exact automata: every language equals what the broker's own `re.fullmatch`
(after the schema's normalisation) accepts, over all of Unicode, or the pattern is refused."""

from __future__ import annotations

import re

import pytest

from broker import automata
from broker.automata import Normaliser, NotRegular, all_texts, example, pattern_language, strings_language

TRICKY = [
    "", "a", "A", "k", "K", "\u212a", "s", "S", "\u017f", "i", "I", "\u0130", "\u0131", "\u00df", "\u1e9e",
    "\u03c3", "\u03c2", "\u03a3", "7", "\u0663", "\uff17", "_", " ", "\t", "\n", "\x1c", "\x85", "\xa0",
    "\u2028", "/", ":", "-", ".", "\ud800", "\U0001f600", "\U0010ffff", "main", "MAIN", "refs/heads/main",
    "refs/heads/a/b", "refs/heads/a:b", "refs/heads/\n", "a\n", "octo-org/App",
]  # fmt: skip


@pytest.mark.parametrize(
    "pattern,flags",
    [
        (r"\d+", 0),
        (r"\w+", 0),
        (r"\s", 0),
        (r"\D\W\S", 0),
        (r"(?a)\w+", 0),
        (".", 0),
        ("(?s).", 0),
        ("k", re.IGNORECASE),
        ("[a-z]+", re.IGNORECASE),
        ("[^a-z]", re.IGNORECASE),
        ("[^k]", re.IGNORECASE),
        (r"[\w-]+", re.IGNORECASE),
        ("ss|\u00df", re.IGNORECASE),
        ("\u03c3+", re.IGNORECASE),
        ("(?i:main)|(?-i:MAIN)", 0),
        ("^refs/heads/.*$", 0),
        (r"\Arefs/(heads|tags)/[^/:]*\Z", 0),
        ("a{2,3}b{0,1}c*?", 0),
        ("(ab|a)*", 0),
        ("[\U0001f600-\U0010ffff]", 0),
    ],
)
def test_a_pattern_accepts_exactly_what_re_fullmatch_accepts(pattern, flags):
    language = pattern_language(pattern, flags)
    compiled = re.compile(pattern, flags)
    for text in TRICKY + [t * 2 for t in TRICKY] + ["aa", "aab", "ab" * 3, "abc", "aaab", "ss"]:
        assert (text in language) == (compiled.fullmatch(text) is not None), (pattern, text)


@pytest.mark.parametrize("item", [r"\d", r"\w", r"\s", r"[\W_]", "."])
def test_a_category_is_the_set_re_matches_over_every_code_point(item):
    chars = automata._item_chars(item, 0)
    compiled = re.compile(item)
    everything = automata._all_characters()
    # Check every code point (1.1 million) in runs: the set's ranges against re's own runs.
    assert automata._covered(chars) == automata._covered(automata._runs(compiled, everything))


@pytest.mark.parametrize("item", ["a", "k", "s", "i", "\u03c3", "\u00b5", "[a-z]", "[^s]", "[\u0100-\u017f]"])
def test_ignorecase_needs_only_the_cased_characters(item):
    # `_item_chars` asks re only about characters case can change; a full scan must agree.
    source = automata._item_source(*list(automata.sre_parse.parse(item))[0])
    full = automata._runs(re.compile(source, re.IGNORECASE), automata._all_characters())
    assert automata._covered(automata._item_chars(source, re.IGNORECASE)) == automata._covered(full)


@pytest.mark.parametrize(
    "pattern,reason",
    [
        (r"(a)\1", "backreference"),
        ("a(?=b)", "lookahead"),
        ("(?<!x)y", "lookbehind"),
        ("a$b", "anchor"),
        ("a^", "anchor"),
        (r"a\b", "word boundary"),
        ("(?m)a$\nb", "anchor"),
        ("(?>a)", "atomic group"),
        ("a++", "possessive"),
        ("a{1000}", "repeat bound"),
    ],
)
def test_what_cannot_be_represented_exactly_is_refused(pattern, reason):
    with pytest.raises(NotRegular, match=reason):
        pattern_language(pattern)


def test_a_trailing_dollar_does_not_admit_a_trailing_newline_under_fullmatch():
    assert re.fullmatch("main$", "main\n") is None
    assert "main\n" not in pattern_language("main$")
    assert "main" in pattern_language("main$")


def test_finite_languages_list_their_texts():
    assert sorted(all_texts(strings_language(["b", "a", "ab"]))) == ["a", "ab", "b"]
    assert all_texts(strings_language([])) == []


@pytest.mark.parametrize("kind", ["lower", "repo"])
@pytest.mark.parametrize(
    "text",
    ["Octo/App/.github/w.yml@refs/heads/Main", "ΣΑΣ/x", "İx/y/z", "K\u212a/a", "no-slash", "a/b", "ǅ/ǅ/ǅ"],
)
def test_normalised_texts_encode_and_decode_back(kind, text):
    norm = Normaliser(kind)
    normalised = norm.apply(text)
    encoded = norm.encode(normalised)
    assert encoded is not None and norm.decode(encoded) == normalised
    assert encoded in norm.universe


def test_lowercasing_leaves_a_lowered_text_as_it_is():
    # The diff compares lowered claims within the texts lowering leaves alone; that must be every
    # lowered text: lower() is idempotent on every code point.
    everything = automata._all_characters()
    for start in range(0, len(everything), 4096):
        chunk = everything[start : start + 4096]
        assert chunk.lower().lower() == chunk.lower()


@pytest.mark.parametrize(
    "kind,pattern,texts",
    [
        ("lower", "octo/app", ["octo/app", "OCTO/App", "Octo/APP", "octo/apq", "\u212a"]),
        ("lower", "(?i)k+", ["k", "K", "\u212a", "kK\u212a", "x"]),
        (
            "repo",
            "octo/app/[^/:]*@refs/heads/main",
            ["Octo/APP/w.yml@refs/heads/main", "octo/app/w@refs/heads/Main", "octo/app"],
        ),
        ("repo", "(?i:a)", ["a", "A", "a/b", "A/B/c"]),
    ],
)
def test_a_preimage_holds_exactly_the_raw_texts_that_normalise_into_the_language(kind, pattern, texts):
    norm = Normaliser(kind)
    language = pattern_language(pattern, re.IGNORECASE if "(?i" in pattern else 0)
    raw = norm.preimage(language)
    compiled = re.compile(pattern)
    for text in texts:
        assert (text in raw) == (compiled.fullmatch(norm.apply(text)) is not None), text


def test_a_preimage_refuses_to_tell_sigma_forms_apart():
    # "ΑΣ".lower() is "ας" but "Σ".lower() is "σ": which one depends on the letters around it.
    with pytest.raises(NotRegular, match="σ from ς"):
        Normaliser("lower").preimage(strings_language(["ας"]))


def test_examples_are_readable_members():
    language = pattern_language("refs/heads/[^/:]*")
    text = example(language)
    assert text == "refs/heads/a"
    assert example(strings_language([])) is None
    lowered = Normaliser("lower")
    spelled = lowered.language(pattern_language("octo/.*", re.IGNORECASE))
    found = example(spelled, lowered)
    assert found is not None and lowered.decode(found).startswith("octo/")
