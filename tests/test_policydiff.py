"""`ci-broker diff`: exact gained and lost identities per role, each with a confirmed example.

Each hand case has a known answer; the property test (test_policydiff_property.py) covers random
configs. Every example printed is checked here against `Config.decide` on both configs.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from policy_helpers import GITHUB, GITLAB, build, policy, rule, write

from broker.policydiff import DiffError, PolicyDiff, allowed, diff_configs
from tests.helpers import ci_broker

MAIN = {"repository_id": "1", "ref": "refs/heads/main", "event_name": "push"}


def run_diff(key_file: Path, old: dict[str, Any], new: dict[str, Any]) -> PolicyDiff:
    result = diff_configs(build(old, key_file, "old.yaml"), build(new, key_file, "new.yaml"))
    # Every reported example is decided differently by the two configs, as diff claims.
    for role in result.roles.values():
        for direction, (grants, refuses) in (("gained", ("new", "old")), ("lost", ("old", "new"))):
            for difference in getattr(role, direction):
                configs = {"old": result.universe.old, "new": result.universe.new}
                assert allowed(configs[grants], role.name, difference.issuer, difference.example)
                assert not allowed(configs[refuses], role.name, difference.issuer, difference.example)
    return result


def sets(result: PolicyDiff, role: str, direction: str) -> list[dict[str, Any]]:
    return [d.conditions for d in getattr(result.roles[role], direction)]


def covers(result: PolicyDiff, role: str, direction: str, **claims: Any) -> bool:
    issuer = claims.pop("iss", GITHUB)
    return result.covers(role, issuer, claims, direction)


def test_identical_configs_differ_in_nothing(key_file):
    data = policy({"deploy": [rule(**MAIN)]})
    result = run_diff(key_file, data, data)
    assert not result.gained_anything
    assert result.to_json() == {"roles": {"deploy": {"gained": [], "lost": []}}}


def test_a_glob_widened_from_main_to_every_branch_gains_every_other_branch(key_file):
    old = policy({"deploy": [rule(**MAIN)]})
    new = policy({"deploy": [rule(**{**MAIN, "ref": {"glob": "refs/heads/*"}})]})
    result = run_diff(key_file, old, new)
    assert sets(result, "deploy", "gained") == [
        {
            "event_name": "push",
            "ref": {"all": [{"glob": "refs/heads/*"}, {"not": "refs/heads/main"}]},
            "repository_id": "1",
        }
    ]
    assert sets(result, "deploy", "lost") == []
    assert covers(result, "deploy", "gained", repository_id="1", event_name="push", ref="refs/heads/dev")
    assert not covers(result, "deploy", "gained", repository_id="1", event_name="push", ref="refs/heads/main")
    # `*` stops at `/`: a nested branch is not gained.
    assert not covers(result, "deploy", "gained", repository_id="1", event_name="push", ref="refs/heads/a/b")
    example = result.roles["deploy"].gained[0].example
    assert example["ref"].startswith("refs/heads/") and example["ref"] != "refs/heads/main"
    assert example["iss"] == GITHUB


def test_star_to_double_star_gains_exactly_the_refs_with_a_slash_or_colon(key_file):
    old = policy({"deploy": [rule(repository_id="1", event_name="push", ref={"glob": "refs/heads/*"})]})
    new = policy({"deploy": [rule(repository_id="1", event_name="push", ref={"glob": "refs/heads/**"})]})
    result = run_diff(key_file, old, new)
    base = {"repository_id": "1", "event_name": "push"}
    assert covers(result, "deploy", "gained", **base, ref="refs/heads/feature/x")
    assert covers(result, "deploy", "gained", **base, ref="refs/heads/a:b")
    assert not covers(result, "deploy", "gained", **base, ref="refs/heads/feature")
    example = result.roles["deploy"].gained[0].example["ref"]
    assert "/" in example[len("refs/heads/") :] or ":" in example
    # Python's `.` (what `**` becomes) does not match a newline, `[^/:]` (what `*` becomes) does:
    # the broker's own semantics, which the diff reports rather than assumes away.
    assert covers(result, "deploy", "lost", **base, ref="refs/heads/a\n")


def test_a_regex_alternation_that_adds_a_branch_gains_that_branch_only(key_file):
    old = policy(
        {"deploy": [rule(repository_id="1", event_name="push", ref={"regex": "refs/heads/(main|release)"})]}
    )
    new = policy(
        {
            "deploy": [
                rule(repository_id="1", event_name="push", ref={"regex": "refs/heads/(main|release|dev)"})
            ]
        }
    )
    result = run_diff(key_file, old, new)
    assert sets(result, "deploy", "gained") == [
        {"event_name": "push", "ref": "refs/heads/dev", "repository_id": "1"}
    ]
    assert result.roles["deploy"].gained[0].example["ref"] == "refs/heads/dev"
    assert sets(result, "deploy", "lost") == []


def test_a_rule_moved_between_roles_is_lost_by_one_and_gained_by_the_other(key_file):
    moved = rule(repository_id="2", event_name="push", ref="refs/heads/main")
    old = policy({"deploy": [rule(**MAIN), moved], "publish": [rule(**{**MAIN, "repository_id": "3"})]})
    new = policy({"deploy": [rule(**MAIN)], "publish": [rule(**{**MAIN, "repository_id": "3"}), moved]})
    result = run_diff(key_file, old, new)
    expected = {"event_name": "push", "ref": "refs/heads/main", "repository_id": "2"}
    assert sets(result, "deploy", "lost") == [expected]
    assert sets(result, "deploy", "gained") == []
    assert sets(result, "publish", "gained") == [expected]
    assert sets(result, "publish", "lost") == []


def test_a_deny_added_loses_what_it_covers_and_only_for_its_roles(key_file):
    roles = {
        "deploy": [rule(repository_id="1", event_name="push", environment=["prod", "staging"])],
        "other": [rule(repository_id="1", event_name="push", environment=["prod", "staging"])],
    }
    deny = [
        {"provider": "github", "claims": {"environment": "staging"}, "roles": ["deploy"], "reason": "frozen"}
    ]
    result = run_diff(key_file, policy(roles), policy(roles, deny=deny))
    assert sets(result, "deploy", "lost") == [
        {"environment": "staging", "event_name": "push", "repository_id": "1"}
    ]
    assert sets(result, "deploy", "gained") == []
    assert not result.roles["other"].changed


def test_a_claim_made_case_insensitive_gains_its_other_spellings(key_file):
    # The provider's type changes from gitlab to github, under which `repository` is compared
    # lowercased: every spelling of octo/app now matches, and octo/app itself still does.
    claims = {"repository": "Octo/App", "ref": "refs/heads/main"}
    as_gitlab = {"ci": {"issuer": GITHUB, "type": "gitlab"}}
    as_github = {"ci": {"issuer": GITHUB, "type": "github"}}
    old = policy({"deploy": [rule("ci", **claims)]}, providers=as_gitlab)
    new = policy({"deploy": [rule("ci", **claims)]}, providers=as_github)
    result = run_diff(key_file, old, new)
    assert sets(result, "deploy", "lost") == []
    for spelling in ("octo/app", "OCTO/APP", "octo/App"):
        assert covers(result, "deploy", "gained", repository=spelling, ref="refs/heads/main")
    assert not covers(result, "deploy", "gained", repository="Octo/App", ref="refs/heads/main")
    assert not covers(result, "deploy", "gained", repository="octo/app", ref="refs/heads/Main")
    # ...and back again: those spellings are lost.
    back = run_diff(key_file, new, old)
    assert covers(back, "deploy", "lost", repository="OCTO/app", ref="refs/heads/main")
    assert sets(back, "deploy", "gained") == []


def test_a_case_insensitive_claim_compares_lowercased_on_both_sides(key_file):
    old = policy({"deploy": [rule(repository_id="1", event_name="push", repository="Octo/App")]})
    new = policy({"deploy": [rule(repository_id="1", event_name="push", repository={"glob": "octo/*"})]})
    result = run_diff(key_file, old, new)
    assert not covers(result, "deploy", "gained", repository_id="1", event_name="push", repository="OCTO/app")
    assert covers(result, "deploy", "gained", repository_id="1", event_name="push", repository="OCTO/other")
    gained = result.roles["deploy"].gained
    assert len(gained) == 1 and gained[0].example["repository"].startswith("octo/")


def test_the_same_rules_under_a_provider_moved_to_another_issuer_are_lost_and_gained(key_file):
    # Textually the role is unchanged; its provider now trusts another issuer's tokens.
    moved = {"github": {"issuer": "https://ghes.example.com/_services/token", "type": "github"}}
    old = policy({"deploy": [rule(**MAIN)]})
    new = policy({"deploy": [rule(**MAIN)]}, providers=moved)
    result = run_diff(key_file, old, new)
    assert covers(result, "deploy", "lost", **MAIN)
    assert covers(result, "deploy", "gained", iss="https://ghes.example.com/_services/token", **MAIN)


def test_a_new_provider_gains_everything_its_rules_admit(key_file):
    old = policy({"deploy": [rule(**MAIN)]}, providers={"github": {"issuer": GITHUB, "type": "github"}})
    new = policy({"deploy": [rule(**MAIN), rule("gitlab", project_id="20", ref_protected="true")]})
    result = run_diff(key_file, old, new)
    (gained,) = result.roles["deploy"].gained
    assert gained.provider == "gitlab" and gained.issuer == GITLAB
    assert gained.conditions == {"project_id": "20", "ref_protected": "true"}
    assert gained.example == {"iss": GITLAB, "project_id": "20", "ref_protected": "true"}


def test_a_removed_role_loses_everything_and_an_added_one_gains_everything(key_file):
    old = policy({"deploy": [rule(**MAIN)], "legacy": [rule(**{**MAIN, "repository_id": "9"})]})
    new = policy({"deploy": [rule(**MAIN)], "fresh": [rule(**{**MAIN, "repository_id": "8"})]})
    result = run_diff(key_file, old, new)
    assert sets(result, "legacy", "lost") == [{**MAIN, "repository_id": "9"}]
    assert sets(result, "fresh", "gained") == [{**MAIN, "repository_id": "8"}]
    assert not result.roles["legacy"].in_new and not result.roles["fresh"].in_old


def test_a_claim_the_old_rule_did_not_name_is_shown_as_what_the_new_one_excludes(key_file):
    old = policy({"deploy": [rule(repository_id="1", event_name="push")]})
    new = policy({"deploy": [rule(repository_id="1", event_name="push", environment="prod")]})
    result = run_diff(key_file, old, new)
    (lost,) = result.roles["deploy"].lost
    assert lost.conditions == {"environment": {"not": "prod"}, "event_name": "push", "repository_id": "1"}
    assert "environment" not in lost.example  # absent satisfies "not prod"


def test_numbers_and_booleans_compare_as_their_json_text(key_file):
    old = policy({"deploy": [rule("gitlab", project_id="20", ref_protected="true")]})
    new = policy({"deploy": [rule("gitlab", project_id=["20", "21"], ref_protected="true")]})
    result = run_diff(key_file, old, new)
    assert covers(result, "deploy", "gained", iss=GITLAB, project_id=21, ref_protected=True)
    assert not covers(result, "deploy", "gained", iss=GITLAB, project_id=20, ref_protected=True)


def test_a_lookahead_makes_diff_refuse_and_name_the_rule(key_file):
    old = policy({"deploy": [rule(**MAIN)]})
    new = policy({"deploy": [rule(**{**MAIN, "ref": {"regex": "refs/heads/(?!main).*"}})]})
    with pytest.raises(DiffError, match=r"new\.yaml: roles\.deploy\.allow\[0\]\.claims\.ref: .*lookahead"):
        run_diff(key_file, old, new)


CIRCLECI = "https://oidc.circleci.com/org/0f5c8a6e-1111-4b7e-9c55-000000000001"
PROJECT = "oidc.circleci.com/project-id"
CONTEXTS = "oidc.circleci.com/context-ids"


def circleci_policy(contexts: Any, deny: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return policy(
        {"deploy": [rule("circleci", **{PROJECT: "p1", CONTEXTS: contexts})]},
        providers={"circleci": {"issuer": CIRCLECI, "type": "circleci"}},
        deny=deny,
    )


def test_a_list_claim_is_diffed_by_its_single_values(key_file):
    result = run_diff(key_file, circleci_policy(["c1"]), circleci_policy(["c1", "c2"]))
    assert sets(result, "deploy", "gained") == [{PROJECT: "p1", CONTEXTS: "c2"}]
    # A token listing several contexts is granted when one of them is: NEW grants [c3, c2], OLD not.
    claims = {"iss": CIRCLECI, PROJECT: "p1", CONTEXTS: ["c3", "c2"]}
    assert allowed(result.universe.new, "deploy", CIRCLECI, claims)
    assert not allowed(result.universe.old, "deploy", CIRCLECI, claims)


def test_a_deny_rule_on_a_list_claim_makes_diff_refuse(key_file):
    deny = [{**rule("circleci", **{CONTEXTS: "c2"}), "reason": "break-glass context"}]
    old = circleci_policy(["c1", "c2"], deny=deny)
    new = circleci_policy(["c1"])
    # What single values cannot show: OLD refuses [c1, c2] by the deny rule (c2), NEW grants it by
    # c1, while every single context is decided alike (c1 granted by both, c2 by neither).
    before, after = build(old, key_file, "old.yaml"), build(new, key_file, "new.yaml")
    both = {"iss": CIRCLECI, PROJECT: "p1", CONTEXTS: ["c1", "c2"]}
    assert allowed(after, "deploy", CIRCLECI, both) and not allowed(before, "deploy", CIRCLECI, both)
    with pytest.raises(
        DiffError, match=r"old\.yaml: deny\[0\]\.claims\.oidc\.circleci\.com/context-ids: .*list"
    ):
        diff_configs(before, after)


# -- the command ------------------------------------------------------------------------------------


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return ci_broker("diff", *args)


@pytest.fixture
def widened(tmp_path: Path) -> tuple[str, str]:
    # No signing key beside either file: diff needs none.
    old = write(policy({"deploy": [rule(**MAIN)]}), tmp_path / "old.yaml")
    new = write(
        policy({"deploy": [rule(**{**MAIN, "ref": {"glob": "refs/heads/*"}})]}), tmp_path / "new.yaml"
    )
    return str(old), str(new)


def test_diff_json_has_the_contracts_shape(widened):
    result = cli(*widened, "--format", "json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    (gained,) = data["roles"]["deploy"]["gained"]
    assert set(gained) == {"provider", "conditions", "example"}
    assert gained["provider"] == "github" and data["roles"]["deploy"]["lost"] == []


def test_exit_code_is_1_when_anything_is_gained_and_0_otherwise(widened):
    old, new = widened
    assert cli(old, new, "--exit-code").returncode == 1
    assert cli(new, old, "--exit-code").returncode == 0  # only lost
    assert cli(old, new).returncode == 0  # without --exit-code


def test_text_and_markdown_show_the_gained_set_and_its_example(widened):
    text = cli(*widened).stdout
    assert (
        'GAINED for provider github: event_name: "push"; ref: glob "refs/heads/*" and not "refs/heads/main"'
        in text
    )
    markdown = cli(*widened, "--format", "markdown").stdout
    assert markdown.startswith("## ci-broker policy diff")
    assert "| **gained** | `github` |" in markdown


def test_markdown_cannot_be_steered_by_html_in_a_pattern(tmp_path):
    # A pull request's author writes the patterns; the job summary must show them, not obey them.
    old = write(policy({"deploy": [rule(**MAIN)]}), tmp_path / "old.yaml")
    sneaky = {**MAIN, "ref": {"regex": "refs/heads/(main|x<!--)|y-->"}}
    new = write(policy({"deploy": [rule(**sneaky)]}), tmp_path / "new.yaml")
    markdown = cli(str(old), str(new), "--format", "markdown").stdout
    assert "<!--" not in markdown and "-->" not in markdown
    assert "x&lt;\\!\\-\\-" in markdown  # shown, escaped


def test_no_old_config_counts_every_role_as_gained(widened):
    result = cli("/dev/null", widened[1], "--format", "json", "--exit-code")
    assert result.returncode == 1
    assert json.loads(result.stdout)["roles"]["deploy"]["gained"]


def test_a_non_regular_regex_exits_2_naming_the_rule(tmp_path, widened):
    new = write(policy({"deploy": [rule(**{**MAIN, "ref": {"regex": "(refs)/\\1"}})]}), tmp_path / "bad.yaml")
    result = cli(widened[0], str(new))
    assert result.returncode == 2
    assert "bad.yaml: roles.deploy.allow[0].claims.ref" in result.stderr and "backreference" in result.stderr
    assert result.stdout == ""


def test_a_config_error_exits_2_with_its_key_path(tmp_path, widened):
    bad = policy({"deploy": [rule(**MAIN)]})
    bad["roles"]["deploy"]["allow"][0]["claimz"] = {}
    path = write(bad, tmp_path / "bad.yaml")
    result = cli(widened[0], str(path))
    assert result.returncode == 2
    assert "roles.deploy.allow[0].claimz" in result.stderr
