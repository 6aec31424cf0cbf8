"""Config loading: every mistake is an error naming the file and key path; nothing loads half."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from broker.config import ConfigError, build_config, load_config


def base(key_file: Path) -> dict[str, Any]:
    return {
        "server": {"issuer": "https://broker.example.com", "signing_keys": [key_file.name]},
        "providers": {"github": {"issuer": "https://token.actions.githubusercontent.com", "type": "github"}},
        "roles": {
            "deploy-prod": {
                "cloud": "aws",
                "aws": {"role_arn": "arn:aws:iam::123456789012:role/deploy-prod", "region": "eu-west-1"},
                "allow": [
                    {"provider": "github", "claims": {"repository_id": "892734123", "ref": "refs/heads/main"}}
                ],
            }
        },
    }


def errors_of(data: dict[str, Any], key_file: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        build_config(data, base_dir=key_file.parent, file="broker.yaml")
    return [f"{f.path}: {f.message}" for f in info.value.findings]


def mutate(key_file: Path, change) -> dict[str, Any]:
    data = copy.deepcopy(base(key_file))
    change(data)
    return data


def test_a_valid_config_loads_into_typed_objects(key_file):
    config = build_config(base(key_file), base_dir=key_file.parent)
    assert config.server.audience == "https://broker.example.com"
    assert config.server.replay_store == "memory"
    assert (config.server.token_max_age, config.server.leeway) == (900, 60)
    assert config.server.signing_keys[0].alg == "ES256"
    assert config.providers["github"].algorithms == ("RS256",)
    role = config.roles["deploy-prod"]
    assert role.settings.duration == 3600 and role.settings.mode == "web_identity"
    assert role.rules[0].conditions[0].kind == "exact"


def test_config_objects_are_frozen(key_file):
    config = build_config(base(key_file), base_dir=key_file.parent)
    with pytest.raises(AttributeError):
        config.server.issuer = "https://evil.example"  # type: ignore[misc]


@pytest.mark.parametrize(
    "change,expected",
    [
        (lambda d: d["server"].update(isuer="x"), "server.isuer: unknown key"),
        (lambda d: d.update(extra=1), "extra: unknown key"),
        (
            lambda d: d["roles"]["deploy-prod"]["aws"].update(rol_arn="x"),
            "roles.deploy-prod.aws.rol_arn: unknown key",
        ),
        (
            lambda d: d["roles"]["deploy-prod"]["allow"][0].update(claim={}),
            "roles.deploy-prod.allow[0].claim: unknown key",
        ),
        (
            lambda d: d["server"].update(issuer="http://broker.example.com"),
            "server.issuer: 'http://broker.example.com' must use https://",
        ),
        (
            lambda d: d["server"].update(issuer="https://broker.example.com/"),
            "server.issuer: must not end with '/'",
        ),
        (
            lambda d: d["server"].update(issuer="https://user:pw@broker.example.com"),
            "server.issuer: must not carry credentials",
        ),
        (lambda d: d["providers"]["github"].update(issuer="http://10.0.0.1"), "providers.github.issuer"),
        (
            lambda d: d["providers"]["github"].update(type="teamcity"),
            "providers.github.type: 'teamcity' is not one of github, gitlab, buildkite, circleci, "
            "bitbucket, azure-devops, jenkins, kubernetes, terraform-cloud, oidc",
        ),
        (
            lambda d: d["providers"]["github"].update(algorithms=["HS256"]),
            "providers.github.algorithms[0]: 'HS256' is not allowed",
        ),
        (
            lambda d: d["providers"]["github"].update(algorithms=["none"]),
            "providers.github.algorithms[0]: 'none' is not allowed",
        ),
        (lambda d: d["server"].update(token_max_age="900"), "server.token_max_age: must be an integer"),
        (lambda d: d["server"].update(leeway=True), "server.leeway: must be an integer"),
        (
            lambda d: d["server"].update(signing_keys=["missing.pem"]),
            "server.signing_keys[0]: cannot read key file",
        ),
        (lambda d: d["server"].update(replay_store="postgres://x"), "server.replay_store"),
        (
            lambda d: d["server"].update(rate_limits={"per_identity": "lots"}),
            "server.rate_limits.per_identity: 'lots' is not valid",
        ),
        (
            lambda d: d["roles"]["deploy-prod"].update(cloud="oracle"),
            "roles.deploy-prod.cloud: 'oracle' is not one of",
        ),
        (
            lambda d: d["roles"]["deploy-prod"]["aws"].update(role_arn="arn:aws:iam::1:role/x"),
            "roles.deploy-prod.aws.role_arn",
        ),
        (
            lambda d: d["roles"]["deploy-prod"]["aws"].update(duration=60),
            "roles.deploy-prod.aws.duration: must be at least 900",
        ),
        (
            lambda d: d["roles"]["deploy-prod"]["aws"].update(duration=50000),
            "roles.deploy-prod.aws.duration: must be at most 43200",
        ),
        (
            lambda d: d["roles"]["deploy-prod"]["aws"].update(sts_endpoint="http://sts.example.com"),
            "roles.deploy-prod.aws.sts_endpoint",
        ),
        (
            lambda d: d["roles"]["deploy-prod"]["aws"].update(session_tags={"repo": "{repository.name}"}),
            "roles.deploy-prod.aws.session_tags.repo",
        ),
        (
            lambda d: d["roles"]["deploy-prod"]["aws"].update(session_policy="not json"),
            "roles.deploy-prod.aws.session_policy",
        ),
        (
            lambda d: d["roles"]["deploy-prod"].update(allow=[]),
            "roles.deploy-prod.allow: must be a non-empty list",
        ),
        (lambda d: d["roles"]["deploy-prod"].pop("allow"), "roles.deploy-prod.allow: is required"),
        (
            lambda d: d["roles"]["deploy-prod"]["allow"][0].update(claims={}),
            "roles.deploy-prod.allow[0].claims: a rule needs at least one claim condition",
        ),
        (
            lambda d: d["roles"]["deploy-prod"]["allow"][0].pop("claims"),
            "roles.deploy-prod.allow[0].claims: is required",
        ),
        (
            lambda d: d["roles"]["deploy-prod"]["allow"][0].update(provider="gitlab"),
            "roles.deploy-prod.allow[0].provider: unknown provider 'gitlab'",
        ),
        (
            lambda d: d["roles"]["deploy-prod"]["allow"][0]["claims"].update(ref={"regex": "refs/(heads"}),
            "roles.deploy-prod.allow[0].claims.ref: invalid regex",
        ),
        (
            lambda d: d["roles"]["deploy-prod"]["allow"][0]["claims"].update(ref={"wildcard": "x"}),
            "claims.ref: unknown condition form 'wildcard'",
        ),
        (
            lambda d: d["roles"]["deploy-prod"]["allow"][0]["claims"].update(repository_id=892734123),
            'claims.repository_id: must be a string; quote it: "892734123"',
        ),
        (
            lambda d: d["roles"]["deploy-prod"]["allow"][0]["claims"].update(environment=[]),
            "claims.environment: a list condition must be a non-empty list",
        ),
        (
            lambda d: d["roles"].update({"bad name!": d["roles"]["deploy-prod"]}),
            "roles.bad name!: role names",
        ),
        (
            lambda d: d["providers"].update(
                dup={"issuer": "https://token.actions.githubusercontent.com", "type": "github"}
            ),
            "providers.dup.issuer: the same issuer is already provider 'github'",
        ),
        (lambda d: d["roles"]["deploy-prod"].update(gcp={}), "roles.deploy-prod.gcp"),
    ],
)
def test_each_mistake_is_an_error_with_its_key_path(key_file, change, expected):
    errors = errors_of(mutate(key_file, change), key_file)
    assert any(expected in e for e in errors), errors


def test_every_error_is_reported_in_one_pass(key_file):
    def many(d):
        d["server"]["isuer"] = "x"
        d["roles"]["deploy-prod"]["aws"]["duration"] = 1
        d["roles"]["deploy-prod"]["allow"][0]["claims"] = {}

    assert len(errors_of(mutate(key_file, many), key_file)) == 3


def test_missing_sections_are_errors(key_file):
    errors = errors_of({}, key_file)
    assert {"server: is required", "providers: is required", "roles: is required"} <= set(errors)


def test_http_is_accepted_for_loopback_hosts_only(key_file):
    for url in ("http://127.0.0.1:8080", "http://localhost:9000", "http://[::1]:80", "http://127.1.2.3"):
        data = mutate(key_file, lambda d, url=url: d["server"].update(issuer=url))
        assert build_config(data, base_dir=key_file.parent).server.issuer == url
    for url in ("http://localhost.evil.example", "http://127.0.0.1.nip.io", "http://0.0.0.0"):
        assert errors_of(mutate(key_file, lambda d, url=url: d["server"].update(issuer=url)), key_file)


def test_yaml_duplicate_keys_are_refused(tmp_path, key_file):
    path = tmp_path / "broker.yaml"
    path.write_text(
        "server:\n  issuer: https://b.example.com\n  signing_keys: [signing.pem]\n"
        "providers:\n  github: {issuer: https://token.actions.githubusercontent.com, type: github}\n"
        "roles:\n  r:\n    cloud: aws\n    aws: {role_arn: 'arn:aws:iam::123456789012:role/r'}\n"
        "    allow:\n      - provider: github\n        claims: {repository_id: '1', repository_id: '2'}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "duplicate key 'repository_id'" in str(info.value)
    assert str(path) in str(info.value)


def test_unreadable_or_invalid_files_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("server: [unclosed")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(bad)


def test_rate_limits_off_disables_them(key_file):
    for off in (False, "off"):
        data = mutate(key_file, lambda d, off=off: d["server"].update(rate_limits=off))
        assert build_config(data, base_dir=key_file.parent).server.rate_limits is None
    config = build_config(base(key_file), base_dir=key_file.parent)
    assert config.server.rate_limits.per_identity == "600/minute"


def test_signing_keys_must_be_strong_enough(tmp_path):
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    from broker.keys import private_key_pem

    (tmp_path / "weak.pem").write_bytes(private_key_pem(rsa.generate_private_key(65537, 1024)))
    (tmp_path / "p384.pem").write_bytes(private_key_pem(ec.generate_private_key(ec.SECP384R1())))
    (tmp_path / "junk.pem").write_text("not a key")
    for name, reason in (
        ("weak.pem", "at least 2048 bits"),
        ("p384.pem", "P-256"),
        ("junk.pem", "not an unencrypted PEM"),
    ):
        data = base(tmp_path / name)
        errors = errors_of(data, tmp_path / name)
        assert any(reason in e for e in errors), errors
