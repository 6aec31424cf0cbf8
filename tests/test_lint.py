"""`ci-broker check` warnings: rules that load but that an attacker could exploit."""

from __future__ import annotations

import copy

import pytest

from broker.config import ConfigError, build_config
from broker.lint import lint


def config_with(key_file, provider_type: str, claims: dict):
    data = {
        "server": {"issuer": "https://broker.example.com", "signing_keys": [key_file.name]},
        "providers": {"ci": {"issuer": "https://ci.example.com", "type": provider_type}},
        "roles": {
            "r": {
                "cloud": "aws",
                "aws": {"role_arn": "arn:aws:iam::123456789012:role/r"},
                "allow": [{"provider": "ci", "claims": copy.deepcopy(claims)}],
            }
        },
    }
    return build_config(data, base_dir=key_file.parent)


def warnings(key_file, provider_type, claims):
    return [f.message for f in lint(config_with(key_file, provider_type, claims))]


SAFE_GITHUB = {"repository_id": "1", "ref": "refs/heads/main", "event_name": "push"}
SAFE_GITLAB = {"project_id": "20", "ref_protected": "true", "pipeline_source": ["push", "web"]}


def test_a_safe_github_rule_has_no_warnings(key_file):
    assert warnings(key_file, "github", SAFE_GITHUB) == []


def test_a_safe_gitlab_rule_has_no_warnings(key_file):
    assert warnings(key_file, "gitlab", SAFE_GITLAB) == []


@pytest.mark.parametrize(
    "provider,claims,expected",
    [
        ("github", {"repository": "o/r", "event_name": "push"}, "binds no immutable id"),
        ("github", {"repository_id": {"glob": "1*"}, "event_name": "push"}, "binds no immutable id"),
        ("gitlab", {"project_path": "g/p", "pipeline_source": "push"}, "binds no immutable id"),
        (
            "github",
            {"repository_id": "1", "sub": {"glob": "repo:o/*"}, "event_name": "push"},
            "a pattern on sub",
        ),
        (
            "github",
            {"repository_id": "1", "sub": {"regex": "repo:o/.*"}, "event_name": "push"},
            "a pattern on sub",
        ),
        (
            "github",
            {"repository_id": "1"},
            "no condition on event_name: reachable from pull_request, pull_request_target",
        ),
        (
            "github",
            {"repository_id": "1", "event_name": ["push", "pull_request_target"]},
            "event_name admits pull_request_target",
        ),
        (
            "github",
            {"repository_id": "1", "event_name": {"glob": "pull*"}},
            "event_name admits pull_request, pull_request_target",
        ),
        ("gitlab", {"project_id": "1"}, "no condition on pipeline_source"),
        (
            "gitlab",
            {"project_id": "1", "pipeline_source": "merge_request_event"},
            "pipeline_source admits merge_request_event",
        ),
        (
            "github",
            {"repository_id": "1", "event_name": "push", "repositry": "o/r"},
            "claim 'repositry' is not one github tokens carry",
        ),
    ],
)
def test_risky_rules_are_warned_about(key_file, provider, claims, expected):
    found = warnings(key_file, provider, claims)
    assert any(expected in w for w in found), found


def test_a_rule_only_on_claims_the_author_controls_is_refused_not_warned(key_file):
    with pytest.raises(ConfigError) as caught:
        config_with(key_file, "github", {"ref": "refs/heads/main", "environment": "prod", "actor": "me"})
    (finding,) = caught.value.findings
    assert finding.path == "roles.r.allow[0]"
    assert "every condition is on a claim the job's author controls" in finding.message


def test_an_issuer_with_a_port_is_warned_about(key_file):
    config = config_with(key_file, "github", SAFE_GITHUB)
    data = {
        "server": {"issuer": "https://broker.example.com:8443", "signing_keys": [key_file.name]},
        "providers": {"ci": {"issuer": "https://ci.example.com", "type": "github"}},
        "roles": {
            "r": {
                "cloud": "aws",
                "aws": {"role_arn": "arn:aws:iam::123456789012:role/r"},
                "allow": [{"provider": "ci", "claims": dict(SAFE_GITHUB)}],
            }
        },
    }
    assert not lint(config)
    found = [f for f in lint(build_config(data, base_dir=key_file.parent)) if f.path == "server.issuer"]
    assert found and "without one" in found[0].message
