"""`ci-broker diff` against `Config.decide` on random small configs: no false positive, no false
negative, and every printed example decided differently.

For random OLD and NEW configs and random claims sets: a claims set falls in a reported gained
set of a role exactly when NEW allows it and OLD does not (lost: the reverse). Claims and
patterns are drawn from a small alphabet with letters of both cases, `/` and `:` (which `*`
stops at), so globs, regexes and case-insensitive claims meet each other often.

2,000 examples in the full run (the issue's bar), in four shards that pytest-xdist spreads over
the cores (about 70 s of CPU in all); FUZZ_EXAMPLES sets the total (`make check` runs 25).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from policy_helpers import GITHUB, GITLAB, build, policy

from broker.policydiff import allowed, diff_configs

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "2000"))
SHARDS = 4
ALPHABET = "aAb1/:"
# claim -> provider: none-normalised (ref), lowercased (repository, project_path), a workflow ref.
CLAIMS = {"github": ("ref", "repository", "job_workflow_ref"), "gitlab": ("ref", "project_path")}
# The loader refuses an allow rule whose every condition is on a claim the job's author controls.
USER_CONTROLLED = {"ref"}
ISSUERS = {"github": GITHUB, "gitlab": GITLAB}

texts = st.text(ALPHABET, min_size=1, max_size=5)
glob_tokens = st.sampled_from(["a", "A", "b", "1", "/", ":", "*", "**"])
regex_atoms = st.sampled_from(["a", "A", "b", "1", "/", ":", "[ab]", "[^/]", ".", r"\d", "(a|b/)"])
quantifiers = st.sampled_from(["", "", "*", "+", "?", "{1,2}"])


@st.composite
def regexes(draw: st.DrawFn) -> str:
    def branch() -> str:
        atoms = draw(st.lists(st.tuples(regex_atoms, quantifiers), min_size=1, max_size=4))
        return "".join(a + q for a, q in atoms)

    pattern = "|".join(branch() for _ in range(draw(st.integers(1, 2))))
    return f"(?i:{pattern})" if draw(st.booleans()) else pattern


conditions = st.one_of(
    texts,
    st.lists(texts, min_size=1, max_size=3, unique=True),
    st.lists(glob_tokens, min_size=1, max_size=5).map(lambda t: {"glob": "".join(t)}),
    regexes().map(lambda r: {"regex": r}),
)


@st.composite
def rules(draw: st.DrawFn, *, allow: bool = True) -> dict[str, Any]:
    provider = draw(st.sampled_from(sorted(CLAIMS)))
    names = draw(st.lists(st.sampled_from(CLAIMS[provider]), min_size=1, max_size=2, unique=True))
    if allow and set(names) <= USER_CONTROLLED:
        names.append(CLAIMS[provider][1])
    return {"provider": provider, "claims": {name: draw(conditions) for name in names}}


@st.composite
def configs(draw: st.DrawFn) -> dict[str, Any]:
    roles = {
        name: draw(st.lists(rules(), min_size=1, max_size=2))
        for name in ("r1", "r2")
        if draw(st.integers(0, 4))  # sometimes a role is missing
    }
    deny = [
        {**draw(rules(allow=False)), "reason": "test", **({"roles": ["r1"]} if draw(st.booleans()) else {})}
        for _ in range(draw(st.integers(0, 1)))
    ]
    if not roles:
        roles = {"r1": draw(st.lists(rules(), min_size=1, max_size=1))}
    deny = [d for d in deny if "roles" not in d or "r1" in roles]
    return policy(roles, deny=deny)


@st.composite
def claims_sets(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    provider = draw(st.sampled_from(sorted(CLAIMS)))
    claims: dict[str, Any] = {"iss": ISSUERS[provider]}
    for name in CLAIMS[provider]:
        value = draw(st.one_of(st.none(), texts, st.integers(0, 12)))
        if value is not None:
            claims[name] = value
    return ISSUERS[provider], claims


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from broker.keys import write_private_key

    path = tmp_path_factory.mktemp("keys") / "signing.pem"
    write_private_key(path, "ES256")
    return path


@pytest.mark.timeout(900)
@pytest.mark.parametrize("shard", range(SHARDS))
# Hypothesis's CI profile derandomizes (a seed from the test's source), which would give every
# shard the same examples: each shard draws its own.
@settings(
    max_examples=-(-EXAMPLES // SHARDS),
    derandomize=False,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(old=configs(), new=configs(), probes=st.lists(claims_sets(), min_size=1, max_size=6), data=st.data())
def test_diff_reports_exactly_the_claims_the_configs_decide_differently(
    key_file, shard, old, new, probes, data
):
    before, after = build(old, key_file), build(new, key_file)
    result = diff_configs(before, after)
    # Also probe each reported example and a variation of it: the edges of a reported set.
    for role in result.roles.values():
        for difference in (*role.gained, *role.lost):
            probes.append((difference.issuer, dict(difference.example)))
    for issuer, claims in probes:
        for role in sorted(set(before.roles) | set(after.roles)):
            was, now = allowed(before, role, issuer, claims), allowed(after, role, issuer, claims)
            assert result.covers(role, issuer, claims, "gained") == (now and not was), (role, claims)
            assert result.covers(role, issuer, claims, "lost") == (was and not now), (role, claims)
    for role in result.roles.values():
        for difference in role.gained:
            assert allowed(after, role.name, difference.issuer, difference.example)
            assert not allowed(before, role.name, difference.issuer, difference.example)
        for difference in role.lost:
            assert allowed(before, role.name, difference.issuer, difference.example)
            assert not allowed(after, role.name, difference.issuer, difference.example)
