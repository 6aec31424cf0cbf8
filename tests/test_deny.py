"""Static deny rules (contract section 9): a matching deny wins over every allow.

Compiled with the allow rules from the same condition forms, scoped to roles by name or glob,
checked by the loader, shown by `explain`, and enforced by the exchange with the same 403 every
other denial gets.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from broker.config import ConfigError, build_config
from broker.sandbox.issuer import github_claims
from tests.helpers import assert_refused, ci_broker, last_refusal

GITHUB_ISSUER = "https://token.actions.githubusercontent.com"
MAIN = {"repository_id": "892734123", "ref": "refs/heads/main"}


def config_dict(key_file: Path, deny: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    def role(name: str) -> dict[str, Any]:
        return {
            "cloud": "aws",
            "aws": {"role_arn": f"arn:aws:iam::123456789012:role/{name}"},
            "allow": [{"provider": "github", "claims": dict(MAIN)}],
        }

    data: dict[str, Any] = {
        "server": {"issuer": "https://broker.example.com", "signing_keys": [key_file.name]},
        "providers": {"github": {"issuer": GITHUB_ISSUER, "type": "github"}},
        "roles": {name: role(name) for name in ("deploy-prod", "deploy-staging", "read-only")},
    }
    if deny is not None:
        data["deny"] = deny
    return data


def load(key_file: Path, deny: list[dict[str, Any]]) -> Any:
    return build_config(config_dict(key_file, deny), base_dir=key_file.parent, file="broker.yaml")


def errors(key_file: Path, deny: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(key_file, deny)
    return [f"{f.path}: {f.message}" for f in info.value.findings if f.level == "error"]


def decide(config: Any, role: str, **claims: Any) -> Any:
    return config.decide(role, config.providers["github"], {**MAIN, **claims}, trace=True)[1]


PULL_REQUESTS = {
    "provider": "github",
    "claims": {"event_name": "pull_request"},
    "reason": "no PR credentials",
}


def test_a_deny_beats_every_allow(key_file):
    config = load(key_file, [PULL_REQUESTS])
    for role in config.roles:
        assert decide(config, role, event_name="push").allowed
        denied = decide(config, role, event_name="pull_request")
        assert not denied.allowed and denied.denied_by.index == 0
        assert denied.summary() == "deny[0] matched: no PR credentials"


def test_the_untraced_decision_agrees_with_the_traced_one(key_file):
    config = load(key_file, [PULL_REQUESTS])
    provider = config.providers["github"]
    for event in ("push", "pull_request"):
        claims = {**MAIN, "event_name": event}
        _, fast = config.decide("deploy-prod", provider, claims)
        _, traced = config.decide("deploy-prod", provider, claims, trace=True)
        assert (fast.allowed, fast.summary()) == (traced.allowed, traced.summary())


def test_a_deny_scoped_by_role_globs_covers_only_those_roles(key_file):
    config = load(key_file, [{**PULL_REQUESTS, "roles": ["deploy-*"]}])
    assert not decide(config, "deploy-prod", event_name="pull_request").allowed
    assert not decide(config, "deploy-staging", event_name="pull_request").allowed
    assert decide(config, "read-only", event_name="pull_request").allowed


def test_a_deny_scoped_by_name_covers_that_role_only(key_file):
    config = load(key_file, [{**PULL_REQUESTS, "roles": ["deploy-prod"]}])
    assert not decide(config, "deploy-prod", event_name="pull_request").allowed
    assert decide(config, "deploy-staging", event_name="pull_request").allowed


def test_a_deny_needs_every_condition_like_an_allow(key_file):
    rule = {"provider": "github", "claims": {"event_name": "pull_request", "ref": {"glob": "refs/pull/**"}},
            "reason": "r"}  # fmt: skip
    config = load(key_file, [rule])
    assert decide(config, "deploy-prod", event_name="pull_request").allowed  # ref is main
    assert not decide(config, "deploy-prod", event_name="pull_request", ref="refs/pull/1/merge").allowed


def test_a_deny_for_another_provider_does_not_apply(key_file):
    data = config_dict(key_file, [{"provider": "gitlab", "claims": {"project_id": "1"}, "reason": "r"}])
    data["providers"]["gitlab"] = {"issuer": "https://gitlab.com", "type": "gitlab"}
    config = build_config(data, base_dir=key_file.parent)
    assert decide(config, "deploy-prod").allowed


@pytest.mark.parametrize(
    ("deny", "error"),
    [
        ({"provider": "github", "claims": {"event_name": "x"}}, "deny[0].reason: is required"),
        ({"provider": "github", "claims": {}, "reason": "r"}, "deny[0].claims: a rule needs at least one"),
        ({"provider": "nope", "claims": {"x": "y"}, "reason": "r"}, "deny[0].provider: unknown provider"),
        ({**PULL_REQUESTS, "roles": ["deploy-prd"]}, "deny[0].roles[0]: no role is named 'deploy-prd'"),
        ({**PULL_REQUESTS, "role": ["x"]}, "deny[0].role: unknown key"),
        (
            {"provider": "github", "claims": {"ref": {"regex": "("}}, "reason": "r"},
            "deny[0].claims.ref: invalid",
        ),
    ],
)
def test_a_malformed_deny_rule_is_an_error_naming_its_key(key_file, deny, error):
    assert any(e.startswith(error) for e in errors(key_file, [deny])), errors(key_file, [deny])


def test_deny_must_be_a_list(key_file):
    assert "deny: must be a list of deny rules" in errors(key_file, {"provider": "github"})


def test_a_role_glob_that_matches_nothing_is_a_warning(key_file):
    config = load(key_file, [{**PULL_REQUESTS, "roles": ["prod-*"]}])
    assert any(w.path == "deny[0].roles[0]" for w in config.warnings)


def run_explain(tmp_path: Path, key_file: Path, deny: list[dict[str, Any]], **claims: Any) -> Any:
    data = config_dict(key_file, deny)
    data["server"]["signing_keys"] = [str(key_file)]
    config = tmp_path / "broker.yaml"
    config.write_text(yaml.safe_dump(data))
    claims_file = tmp_path / "claims.json"
    claims_file.write_text(json.dumps(github_claims(iss=GITHUB_ISSUER, **claims)))
    return ci_broker(
        "explain", "--config", str(config), "--role", "deploy-prod", "--claims", str(claims_file)
    )


def test_explain_shows_the_deny_that_fired(tmp_path, key_file):
    result = run_explain(tmp_path, key_file, [PULL_REQUESTS], event_name="pull_request")
    assert result.returncode == 1, result.stderr
    assert "DENY by deny[0]: no PR credentials" in result.stdout
    assert "deny[0] (github): fires" in result.stdout
    assert "[ok] event_name: 'pull_request' == 'pull_request'" in result.stdout
    assert "a matching deny wins over every allow" in result.stdout


def test_explain_shows_a_deny_that_did_not_apply(tmp_path, key_file):
    result = run_explain(tmp_path, key_file, [PULL_REQUESTS], event_name="push")
    assert result.returncode == 0, result.stderr
    assert "deny[0] (github): does not apply" in result.stdout and "ALLOW by rule 0" in result.stdout


def test_an_exchange_a_deny_matches_is_a_403_like_any_other(sandbox, serve_config, audit_events):
    config = copy.deepcopy(sandbox.config_dict())
    config["deny"] = [{"provider": "github", "claims": {"environment": "production"}, "reason": "INC-4711"}]
    serve_config(config)
    denied = sandbox.exchange(sandbox.github_token())
    assert_refused(denied, 403, "access_denied")
    assert last_refusal(audit_events)["reason"] == "deny[0] matched: INC-4711"
    no_rule = sandbox.exchange(sandbox.github_token(repository_id="1", environment="staging"))
    strip = lambda r: {k: v for k, v in r.json().items() if k != "request_id"}  # noqa: E731
    assert strip(denied) == strip(no_rule)
    assert sandbox.exchange(sandbox.github_token(environment="prod")).status_code == 200
