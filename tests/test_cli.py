"""The command line: check, explain and keygen, as an operator runs them."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import yaml

from broker.sandbox.issuer import github_claims
from tests.helpers import ci_broker

CLI = [sys.executable, "-m", "broker"]


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return ci_broker(*args, env=env)


def write_config(tmp_path: Path, key_file: Path, allow_claims: dict | None = None) -> Path:
    config = {
        "server": {"issuer": "https://broker.example.com", "signing_keys": [str(key_file)]},
        "providers": {"github": {"issuer": "https://token.actions.githubusercontent.com", "type": "github"}},
        "roles": {
            "deploy-prod": {
                "cloud": "aws",
                "aws": {"role_arn": "arn:aws:iam::123456789012:role/deploy-prod"},
                "allow": [
                    {
                        "provider": "github",
                        "claims": allow_claims
                        or {"repository_id": "892734123", "ref": "refs/heads/main", "event_name": "push"},
                    }
                ],
            }
        },
    }
    path = tmp_path / "broker.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_keygen_writes_a_private_key_only_its_owner_can_read(tmp_path):
    for alg in ("ES256", "RS256"):
        out = tmp_path / f"{alg}.pem"
        result = run("keygen", "--alg", alg, "--out", str(out))
        assert result.returncode == 0, result.stderr
        assert stat.S_IMODE(out.stat().st_mode) == 0o600
        assert "PRIVATE KEY" in out.read_text()
        assert "kid" in result.stdout and "PRIVATE" not in result.stdout


def test_keygen_refuses_to_overwrite_a_key(tmp_path):
    out = tmp_path / "k.pem"
    out.write_text("existing")
    result = run("keygen", "--alg", "ES256", "--out", str(out))
    assert result.returncode == 2 and "refusing to overwrite" in result.stderr
    assert out.read_text() == "existing"


def test_check_accepts_a_valid_config(tmp_path, key_file):
    result = run("check", "--config", str(write_config(tmp_path, key_file)))
    assert result.returncode == 0, result.stderr
    assert "ok: 1 role(s), 1 provider(s), 0 warning(s)" in result.stdout


def test_check_reports_errors_with_file_and_key_path_and_exits_2(tmp_path, key_file):
    path = write_config(tmp_path, key_file)
    data = yaml.safe_load(path.read_text())
    data["roles"]["deploy-prod"]["allow"][0]["claims"] = {}
    data["server"]["isuer"] = "typo"
    path.write_text(yaml.safe_dump(data))
    result = run("check", "--config", str(path))
    assert result.returncode == 2
    assert f"error: {path}: server.isuer: unknown key" in result.stderr
    assert (
        f"error: {path}: roles.deploy-prod.allow[0].claims: a rule needs at least one claim condition"
        in result.stderr
    )


def test_check_prints_warnings_but_exits_0(tmp_path, key_file):
    path = write_config(tmp_path, key_file, {"repository": "octo-org/octo-repo"})
    result = run("check", "--config", str(path))
    assert result.returncode == 0
    assert "warning:" in result.stdout and "roles.deploy-prod.allow[0]" in result.stdout
    assert "binds no immutable id" in result.stdout


def test_config_may_come_from_the_environment(tmp_path, key_file):
    result = run("check", env={"CI_BROKER_CONFIG": str(write_config(tmp_path, key_file))})
    assert result.returncode == 0, result.stderr


def test_check_without_a_config_is_an_error():
    env = {k: v for k, v in os.environ.items() if k != "CI_BROKER_CONFIG"}
    result = subprocess.run([*CLI, "check"], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 2 and "--config" in result.stderr


def test_explain_allows_and_shows_each_condition(tmp_path, key_file):
    claims = tmp_path / "claims.json"
    claims.write_text(json.dumps(github_claims(iss="https://token.actions.githubusercontent.com")))
    result = run(
        "explain",
        "--config",
        str(write_config(tmp_path, key_file)),
        "--role",
        "deploy-prod",
        "--claims",
        str(claims),
    )
    assert result.returncode == 0, result.stderr
    assert "ALLOW by rule 0" in result.stdout
    assert "[ok] repository_id: '892734123' == '892734123'" in result.stdout


def test_explain_denies_with_the_failed_condition_and_exits_1(tmp_path, key_file):
    claims = tmp_path / "claims.json"
    claims.write_text(
        json.dumps(github_claims(iss="https://token.actions.githubusercontent.com", ref="refs/heads/feature"))
    )
    result = run(
        "explain",
        "--config",
        str(write_config(tmp_path, key_file)),
        "--role",
        "deploy-prod",
        "--claims",
        str(claims),
    )
    assert result.returncode == 1
    assert "DENY" in result.stdout
    assert "[FAIL] ref: 'refs/heads/feature' does not match == 'refs/heads/main'" in result.stdout


def test_explain_for_an_unknown_role_denies(tmp_path, key_file):
    claims = tmp_path / "claims.json"
    claims.write_text(json.dumps(github_claims(iss="https://token.actions.githubusercontent.com")))
    result = run(
        "explain",
        "--config",
        str(write_config(tmp_path, key_file)),
        "--role",
        "nope",
        "--claims",
        str(claims),
    )
    assert result.returncode == 1 and "no such role" in result.stdout


def test_explain_needs_a_provider_when_iss_matches_none(tmp_path, key_file):
    claims = tmp_path / "claims.json"
    claims.write_text(json.dumps(github_claims(iss="https://elsewhere.example")))
    config = str(write_config(tmp_path, key_file))
    result = run("explain", "--config", config, "--role", "deploy-prod", "--claims", str(claims))
    assert result.returncode == 2 and "--provider" in result.stderr
    result = run(
        "explain",
        "--config",
        config,
        "--role",
        "deploy-prod",
        "--claims",
        str(claims),
        "--provider",
        "github",
    )
    assert result.returncode == 0


def test_explain_refuses_malformed_claims(tmp_path, key_file):
    claims = tmp_path / "claims.json"
    claims.write_text('{"ref": "a", "ref": "b"}')
    result = run(
        "explain",
        "--config",
        str(write_config(tmp_path, key_file)),
        "--role",
        "deploy-prod",
        "--claims",
        str(claims),
        "--provider",
        "github",
    )
    assert result.returncode == 2 and "duplicate key" in result.stderr


def test_serve_refuses_several_workers_with_the_memory_replay_store(tmp_path, key_file):
    result = run("serve", "--config", str(write_config(tmp_path, key_file)), "--workers", "3")
    assert result.returncode == 2 and "replayed once per worker" in result.stderr
