"""Claim names as paths: how a rule's claim name finds its value in a token (CONTRACT section 11)."""

from __future__ import annotations

import pytest

from broker.claims import ABSENT, CIRCLECI, GITHUB, KUBERNETES, resolve
from broker.policy import Rule, compile_condition, evaluate


def test_a_plain_name_is_a_top_level_key():
    assert resolve({"ref": "refs/heads/main"}, "ref") == "refs/heads/main"
    assert resolve({"ref": "x"}, "sha") is ABSENT


def test_a_dotted_name_walks_into_nested_objects():
    claims = {"kubernetes.io": {"namespace": "ci", "serviceaccount": {"name": "deployer", "uid": "u-1"}}}
    assert resolve(claims, "kubernetes.io.namespace") == "ci"
    assert resolve(claims, "kubernetes.io.serviceaccount.uid") == "u-1"
    assert resolve(claims, "kubernetes.io.pod.name") is ABSENT
    assert resolve(claims, "kubernetes.io") == claims["kubernetes.io"]


def test_a_key_that_contains_dots_is_written_as_it_is():
    claims = {"oidc.circleci.com/project-id": "p-1"}
    assert resolve(claims, "oidc.circleci.com/project-id") == "p-1"


def test_the_longest_key_wins_at_every_level_without_backtracking():
    # Top level: the literal key "a.b" beats the path a -> b.
    assert resolve({"a.b": "literal", "a": {"b": "nested"}}, "a.b") == "literal"
    # Inside an object too.
    assert resolve({"k": {"x.y": "literal", "x": {"y": "nested"}}}, "k.x.y") == "literal"
    # Greedy: "a.b" is taken, and "c" is then looked for in it, not in a -> b.
    assert resolve({"a.b": {"z": 1}, "a": {"b": {"c": 2}}}, "a.b.c") is ABSENT


def test_a_path_through_a_scalar_a_list_or_null_is_absent():
    assert resolve({"a": "text"}, "a.b") is ABSENT
    assert resolve({"a": ["b"]}, "a.b") is ABSENT
    assert resolve({"a": None}, "a.b") is ABSENT


def test_null_is_a_value_not_an_absence():
    assert resolve({"step_key": None}, "step_key") is None


def test_a_null_claim_never_matches_any_condition_form():
    for raw in ("x", ["x", "y"], {"glob": "**"}, {"regex": ".*"}):
        condition = compile_condition("step_key", raw, GITHUB)
        assert not condition.holds({"step_key": None}, GITHUB)
        ok, reason = condition.check({"step_key": None}, GITHUB)
        assert not ok and "is null" in reason


def test_objects_and_undeclared_lists_never_match():
    condition = compile_condition("ref", {"regex": ".*"}, GITHUB)
    assert not condition.holds({"ref": {"a": "b"}}, GITHUB)
    assert not condition.holds({"ref": ["refs/heads/main"]}, GITHUB)


def test_a_declared_list_claim_matches_when_any_element_does():
    name = "oidc.circleci.com/context-ids"
    condition = compile_condition(name, "a74579f1-2e7d-451e-b009-5c082ad2729e", CIRCLECI)
    assert condition.holds({name: ["other", "A74579F1-2E7D-451E-B009-5C082AD2729E"]}, CIRCLECI)
    assert not condition.holds({name: ["other"]}, CIRCLECI)
    assert not condition.holds({name: []}, CIRCLECI)
    assert not condition.holds({name: [None, {"id": "a74579f1-2e7d-451e-b009-5c082ad2729e"}]}, CIRCLECI)
    ok, reason = condition.check({name: ["other", "a74579f1-2e7d-451e-b009-5c082ad2729e"]}, CIRCLECI)
    assert ok and "has an element that matches" in reason


def test_a_nested_rule_decides_the_same_traced_and_untraced():
    rule = Rule(
        0,
        "k8s",
        (
            compile_condition("kubernetes.io.namespace", "ci", KUBERNETES),
            compile_condition("kubernetes.io.serviceaccount.uid", "u-1", KUBERNETES),
        ),
    )
    good = KUBERNETES.nest({"kubernetes.io.namespace": "ci", "kubernetes.io.serviceaccount.uid": "u-1"})
    bad = KUBERNETES.nest({"kubernetes.io.namespace": "ci", "kubernetes.io.serviceaccount.uid": "u-2"})
    for claims, allowed in ((good, True), (bad, False)):
        traced = evaluate("r", (rule,), "k8s", KUBERNETES, claims)
        fast = evaluate("r", (rule,), "k8s", KUBERNETES, claims, trace=False)
        assert traced.allowed is fast.allowed is allowed
    assert (
        "kubernetes.io.serviceaccount.uid: 'u-2' does not match"
        in evaluate("r", (rule,), "k8s", KUBERNETES, bad).summary()
    )


def test_nest_places_each_path_where_resolve_finds_it():
    flat = {
        "kubernetes.io.namespace": "ci",
        "kubernetes.io.pod.name": "p",
        "kubernetes.io.serviceaccount.uid": "u",
        "sub": "system:serviceaccount:ci:deployer",
    }
    nested = KUBERNETES.nest(flat)
    assert nested["kubernetes.io"]["pod"] == {"name": "p"}
    assert all(resolve(nested, path) == value for path, value in flat.items())


@pytest.mark.parametrize("name", ["", "a..b", ".a", "a.", "a b", "kubernetes.io. namespace"])
def test_a_malformed_claim_name_is_refused(name):
    with pytest.raises(ValueError, match="not a claim name"):
        compile_condition(name, "x", GITHUB)
