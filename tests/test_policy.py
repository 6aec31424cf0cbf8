"""Policy: each condition form, provider quirks, and the decision trace."""

from __future__ import annotations

import random
import re

import pytest

from broker.claims import GITHUB, GITLAB
from broker.policy import Rule, compile_condition, compile_role_pattern, evaluate, glob_to_regex


def rule(provider="github", schema=GITHUB, **conditions):
    return Rule(0, provider, tuple(compile_condition(k, v, schema) for k, v in conditions.items()))


def allows(r: Rule, claims: dict, schema=GITHUB, provider="github") -> bool:
    """The traced decision, after checking the untraced one (the request path's) agrees with it."""
    traced = evaluate("role", (r,), provider, schema, claims)
    fast = evaluate("role", (r,), provider, schema, claims, trace=False)
    assert (fast.allowed, fast.matched_rule) == (traced.allowed, traced.matched_rule)
    return traced.allowed


def test_a_string_is_an_exact_match():
    r = rule(ref="refs/heads/main")
    assert allows(r, {"ref": "refs/heads/main"})
    assert not allows(r, {"ref": "refs/heads/main2"})
    assert not allows(r, {"ref": "refs/heads/mai"})


def test_a_list_is_any_of_exactly():
    r = rule(environment=["production", "prod"])
    assert allows(r, {"environment": "prod"})
    assert not allows(r, {"environment": "production-like"})
    assert not allows(r, {"environment": "Prod"})


def test_glob_star_stays_within_one_path_segment():
    r = rule(ref={"glob": "refs/heads/release-*"})
    assert allows(r, {"ref": "refs/heads/release-1.2"})
    assert not allows(r, {"ref": "refs/heads/release-1/evil"})
    assert not allows(r, {"ref": "refs/heads/release-x:y"})


def test_glob_main_star_matches_main_x_but_literal_main_does_not():
    assert allows(rule(ref={"glob": "refs/heads/main*"}), {"ref": "refs/heads/main-x"})
    assert not allows(rule(ref="refs/heads/main"), {"ref": "refs/heads/main-x"})


def test_glob_double_star_crosses_segments_and_is_anchored():
    r = rule(job_workflow_ref={"glob": "octo-org/deploy/**@refs/heads/main"})
    assert allows(r, {"job_workflow_ref": "octo-org/deploy/.github/workflows/a.yml@refs/heads/main"})
    assert not allows(r, {"job_workflow_ref": "evil/octo-org/deploy/x@refs/heads/main"})
    assert not allows(r, {"job_workflow_ref": "octo-org/deploy/x@refs/heads/main-evil"})


def test_glob_treats_regex_characters_literally():
    r = rule(ref={"glob": "refs/tags/v1.*"})
    assert allows(r, {"ref": "refs/tags/v1.2"})
    assert not allows(r, {"ref": "refs/tags/v1x2"})
    assert glob_to_regex("a+b?") == re.escape("a+b?")


def _glob_to_regex_one_character_at_a_time(pattern: str) -> str:
    """The translation as it was first written, kept as the reference the faster one must equal."""
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


GLOB_ALPHABET = "**//::ab.\\[]^$?+(){}|- \n\x00\u00e9\U0001f600"


def test_glob_translation_equals_the_character_by_character_one_on_many_patterns():
    rng = random.Random(13)
    edge_cases = ["", "*", "**", "***", "****", "a***b", "x*/**:y", "**a**", "*a*", "\\*", "[*]"]
    patterns = edge_cases + ["".join(rng.choices(GLOB_ALPHABET, k=rng.randrange(13))) for _ in range(20000)]
    for pattern in patterns:
        assert glob_to_regex(pattern) == _glob_to_regex_one_character_at_a_time(pattern), pattern


def test_glob_translation_matches_the_same_strings_as_the_reference():
    # The same regex text above; here the two languages are also compared on strings built from
    # the same alphabet (what matters to a rule is which claim values it accepts).
    rng = random.Random(14)
    alphabet = "ab/:.*\n"
    for _ in range(2000):
        pattern = "".join(rng.choices("ab/:.*", k=rng.randrange(8)))
        fast = re.compile(glob_to_regex(pattern))
        reference = re.compile(_glob_to_regex_one_character_at_a_time(pattern))
        for _ in range(20):
            text = "".join(rng.choices(alphabet, k=rng.randrange(10)))
            assert bool(fast.fullmatch(text)) == bool(reference.fullmatch(text)), (pattern, text)


def test_a_glob_repeated_across_roles_is_compiled_once():
    first = compile_condition("workflow", {"glob": "deploy-*.yml"}, GITHUB)
    for n in range(1000):  # more distinct patterns between the two than re's own cache keeps
        compile_condition("workflow", {"glob": f"other-{n}-*.yml"}, GITHUB)
    second = compile_condition("workflow", {"glob": "deploy-*.yml"}, GITHUB)
    assert first.compiled is not None and first.compiled is second.compiled
    assert compile_role_pattern("deploy-*") is compile_role_pattern("deploy-*")
    # The flags are part of what is shared: a case-insensitive claim never gets the other's regex.
    insensitive = compile_condition("repository", {"glob": "octo/*"}, GITHUB)
    sensitive = compile_condition("workflow", {"glob": "octo/*"}, GITHUB)
    assert insensitive.compiled is not None and sensitive.compiled is not None
    assert insensitive.compiled.flags & re.IGNORECASE and not sensitive.compiled.flags & re.IGNORECASE


def test_regex_is_anchored_at_both_ends():
    r = rule(ref={"regex": "refs/heads/(main|release/.+)"})
    assert allows(r, {"ref": "refs/heads/release/1"})
    assert not allows(r, {"ref": "xrefs/heads/main"})
    assert not allows(r, {"ref": "refs/heads/main\n"})
    assert not allows(r, {"ref": "refs/heads/mainly"})


def test_regex_alternation_cannot_escape_the_anchors():
    r = rule(ref={"regex": "refs/heads/main|refs/heads/prod"})
    assert not allows(r, {"ref": "refs/heads/main-evil"})
    assert not allows(r, {"ref": "evil-refs/heads/prod"})


def test_numbers_and_booleans_compare_as_json_text():
    r = rule(provider="gitlab", schema=GITLAB, project_id="20", ref_protected="true")
    assert allows(r, {"project_id": 20, "ref_protected": True}, GITLAB, "gitlab")
    assert not allows(r, {"project_id": 20, "ref_protected": False}, GITLAB, "gitlab")


def test_a_missing_or_structured_claim_never_matches():
    r = rule(environment={"regex": ".*"})
    assert not allows(r, {})
    assert not allows(r, {"environment": ["production"]})
    assert not allows(r, {"environment": None})


def test_every_condition_of_a_rule_must_hold():
    r = rule(repository_id="892734123", ref="refs/heads/main")
    assert not allows(r, {"repository_id": "892734123", "ref": "refs/heads/dev"})


def test_any_rule_may_grant():
    rules = (rule(ref="refs/heads/a"), Rule(1, "github", (compile_condition("ref", "refs/heads/b", GITHUB),)))
    for trace in (True, False):
        decision = evaluate("role", rules, "github", GITHUB, {"ref": "refs/heads/b"}, trace=trace)
        assert decision.allowed and decision.matched_rule == 1


def test_a_rule_without_conditions_grants_nothing_on_either_path():
    # The loader refuses such a rule; evaluation must not read "no conditions" as "all hold".
    empty = Rule(0, "github", ())
    assert not allows(empty, {"ref": "refs/heads/main"})


def test_an_untraced_refusal_still_says_why():
    r = rule(ref="refs/heads/main")
    decision = evaluate("role", (r,), "github", GITHUB, {"ref": "refs/heads/dev"}, trace=False)
    assert not decision.allowed
    assert decision.summary() == "rule 0: ref: 'refs/heads/dev' does not match == 'refs/heads/main'"


def test_a_rule_for_another_provider_never_grants():
    r = rule(provider="gitlab", schema=GITLAB, project_id="20")
    assert not allows(r, {"project_id": "20"}, GITHUB, "github")


def test_github_names_are_case_insensitive():
    r = rule(repository="Octo-Org/Octo-Repo", repository_owner={"glob": "octo-*"})
    assert allows(r, {"repository": "octo-org/OCTO-REPO", "repository_owner": "OCTO-ORG"})


def test_github_workflow_ref_is_case_insensitive_only_in_owner_and_repo():
    r = rule(job_workflow_ref="octo-org/deploy/.github/workflows/ci.yml@refs/heads/main")
    assert allows(r, {"job_workflow_ref": "Octo-Org/Deploy/.github/workflows/ci.yml@refs/heads/main"})
    assert not allows(r, {"job_workflow_ref": "octo-org/deploy/.github/workflows/CI.yml@refs/heads/main"})
    assert not allows(r, {"job_workflow_ref": "octo-org/deploy/.github/workflows/ci.yml@refs/heads/Main"})


def test_refs_are_case_sensitive():
    assert not allows(rule(ref="refs/heads/main"), {"ref": "refs/heads/MAIN"})


def test_an_immutable_id_mismatch_is_denied_even_with_the_right_names():
    """A deleted and recreated repository keeps its name but gets a new id."""
    r = rule(repository="octo-org/octo-repo", repository_id="892734123")
    decision = evaluate(
        "role", (r,), "github", GITHUB, {"repository": "octo-org/octo-repo", "repository_id": "999"}
    )
    assert not decision.allowed
    reasons = dict((text.split(":")[0], ok) for ok, text in decision.rules[0].reasons)
    assert reasons == {"repository": True, "repository_id": False}


def test_the_trace_says_which_condition_held_or_failed_and_why():
    r = rule(repository_id="892734123", ref="refs/heads/main")
    decision = evaluate("deploy", (r,), "github", GITHUB, {"repository_id": "1", "ref": "refs/heads/main"})
    assert decision.rules[0].reasons == (
        (False, "repository_id: '1' does not match == '892734123'"),
        (True, "ref: 'refs/heads/main' == 'refs/heads/main'"),
    )
    assert decision.summary() == "rule 0: repository_id: '1' does not match == '892734123'"


@pytest.mark.parametrize(
    "raw,error",
    [
        (42, "quote it"),
        (True, "quote it"),
        (1.5, "quote it"),
        ([], "non-empty list"),
        ([1], "non-empty list"),
        ({"glob": ""}, "non-empty string pattern"),
        ({"regex": "("}, "invalid regex"),
        ({"glob": "a", "regex": "b"}, "must be a string"),
        (None, "must be a string"),
    ],
)
def test_malformed_conditions_are_refused_at_compile_time(raw, error):
    with pytest.raises(ValueError, match=error):
        compile_condition("ref", raw, GITHUB)
